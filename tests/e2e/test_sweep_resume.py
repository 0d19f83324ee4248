"""lmeval-ctx sweep resumes only what matches: a point is skipped only when its manifest (written last)
matches the request and its files are intact; a point run with other settings stops the sweep before the
model loads (or is re-run with --overwrite, its old output moved aside); an interrupted point is re-run;
output that cannot be written is a failure."""

import json
import shutil
from pathlib import Path

import pytest

from lmeval_ctx import cli
from lmeval_ctx.sweep.outputs import MANIFEST_NAME, ResumeConflict, inspect_point
from lmeval_ctx.sweep.points import sweep_points
from lmeval_ctx.sweep.run import run_sweep
from test_sweep import LoadCounter
from tiny_models import save_tiny_model

TASKS = ["longppl"]
METADATA = {"lengths": [64], "num_docs": 1}


def sweep(model, output, methods="none,pi", *, limit=1, metadata=METADATA, overwrite=False, log=None):
    return run_sweep({"pretrained": str(model), "dtype": "float32"}, sweep_points(methods, "2"), TASKS, output,
                     device="cpu", limit=limit, log_samples=True, metadata=metadata, overwrite=overwrite,
                     log=log if log is not None else (lambda message: None))


def statuses(outcomes) -> dict:
    return {outcome["point"].name: outcome["status"] for outcome in outcomes}


def manifest(folder: Path) -> dict:
    return json.loads((folder / MANIFEST_NAME).read_text())


def sweep_command(model, output, *extra) -> list[str]:
    return ["sweep", "--model_args", f"pretrained={model},dtype=float32", "--methods", "none,pi", "--factor", "2",
            "--tasks", ",".join(TASKS), "--metadata", json.dumps(METADATA), "--limit", "1", "--log_samples",
            "--device", "cpu", "--output_path", str(output), *extra]


@pytest.mark.slow
def test_resume_skips_only_the_same_point_and_reruns_what_was_not_saved(tiny_model_dir, tmp_path, monkeypatch,
                                                                        capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir("llama"), model)
    runs = tmp_path / "runs"
    counter = LoadCounter(monkeypatch)

    assert statuses(sweep(model, runs)) == {"none": "done", "pi_x2": "done"} and counter.loads == 1
    saved = manifest(runs / "pi_x2")
    assert saved["request"]["model"]["pretrained"] == str(model.resolve())
    assert saved["request"]["model"]["files"]["model.safetensors"]["sha256"]
    assert saved["request"]["method"] == {"scaling": "pi", "factor": 2.0}
    assert saved["request"]["limit"] == 1 and saved["request"]["metadata"] == METADATA
    assert saved["request"]["tasks"] == {"longppl": 1.0} and saved["request"]["versions"]["lm_eval"]
    assert saved["outputs"]["samples"]["longppl"]["lines"] == 1

    # the same request: skipped, nothing loaded
    counter.loads = 0
    assert set(statuses(sweep(model, runs)).values()) == {"skipped (done)"} and counter.loads == 0

    # another request: a conflict naming what differs, before anything loads
    other_model = tiny_model_dir("llama")
    changes = [
        (dict(metadata={"lengths": [96], "num_docs": 1}), "metadata.lengths: [64] there, [96] now"),
        (dict(limit=2), "limit: 1 there, 2 now"),
        (dict(model=other_model), f'model.pretrained: "{model.resolve()}" there, "{other_model.resolve()}" now'),
    ]
    for change, difference in changes:
        arguments = {"model": model, "output": runs, **change}
        with pytest.raises(ResumeConflict) as conflict:
            sweep(arguments.pop("model"), arguments.pop("output"), **arguments)
        assert difference in str(conflict.value) and "--overwrite" in str(conflict.value)
    # the same folder with other weights: the checkpoint's fingerprint differs
    save_tiny_model("llama", model, seed=1)
    with pytest.raises(ResumeConflict, match=r"model\.files\.model\.safetensors\.sha256"):
        sweep(model, runs)
    shutil.copy(tiny_model_dir("llama") / "model.safetensors", model / "model.safetensors")
    # through the command line: exit status 2, the difference on stderr
    with pytest.raises(SystemExit) as stopped:
        cli.main(sweep_command(model, runs, "--limit", "2"))
    assert stopped.value.code == 2 and "limit: 1 there, 2 now" in capsys.readouterr().err
    assert counter.loads == 0

    # --overwrite re-runs the differing point; its old output is moved out of the output folder
    messages = []
    outcomes = sweep(model, runs, "pi", limit=2, overwrite=True, log=messages.append)
    assert statuses(outcomes) == {"pi_x2": "done"} and counter.loads == 1
    assert manifest(runs / "pi_x2")["request"]["limit"] == 2
    assert len(list((runs / "pi_x2").rglob("results_*.json"))) == 1
    (replaced,) = (tmp_path / "runs.replaced").iterdir()
    assert replaced.name.startswith("pi_x2-") and manifest(replaced)["request"]["limit"] == 1
    assert any(f"old output moved to {replaced}" in message for message in messages)

    # an interrupt after lm-eval wrote the results but before the manifest: reported and re-run
    (runs / "none" / MANIFEST_NAME).unlink()
    counter.loads = 0
    messages = []
    assert statuses(sweep(model, runs, "none", log=messages.append)) == {"none": "done"} and counter.loads == 1
    assert any(f"no {MANIFEST_NAME}" in message for message in messages)
    assert len(list((runs / "none").rglob("results_*.json"))) == 1

    # other damage is found without running anything
    request = manifest(runs / "none")["request"]
    (samples,) = (runs / "none").rglob("samples_longppl_*.jsonl")
    samples.write_text(samples.read_text()[:-10])
    assert inspect_point(runs / "none", request, log_samples=True).detail.endswith("(truncated or changed)")
    samples.unlink()
    assert inspect_point(runs / "none", request, log_samples=True).detail == f"{samples} is missing"
    record = manifest(runs / "pi_x2")
    record["outputs"]["samples"] = {}
    (runs / "pi_x2" / MANIFEST_NAME).write_text(json.dumps(record))
    state = inspect_point(runs / "pi_x2", record["request"], log_samples=True)
    assert state.kind == "incomplete" and "without --log_samples" in state.detail
    assert inspect_point(runs / "pi_x2", record["request"], log_samples=False).kind == "done"
    (runs / "pi_x2" / MANIFEST_NAME).write_text(json.dumps(record)[:-20])
    state = inspect_point(runs / "pi_x2", record["request"], log_samples=True)
    assert state.kind == "incomplete" and "is unreadable" in state.detail


def test_output_that_cannot_hold_files_fails_before_loading(tiny_model_dir, tmp_path, monkeypatch, capsys):
    folder = tiny_model_dir("llama")
    counter = LoadCounter(monkeypatch)
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    (tmp_path / "runs" / "pi_x2").mkdir(parents=True)
    (tmp_path / "runs" / "none").write_text("a file where a point's folder goes")
    # a file; a folder under a file (unwritable even for root); a point's folder that is a file
    for output, message in [(a_file, "is a file, not a folder"), (a_file / "runs", "cannot be created"),
                            (tmp_path / "runs", "where the sweep writes the folder of point none")]:
        with pytest.raises(SystemExit) as stopped:
            cli.main(sweep_command(folder, output))
        assert stopped.value.code == 1 and message in capsys.readouterr().err
    assert counter.loads == 0


@pytest.mark.slow
def test_a_point_whose_results_or_samples_are_not_written_fails(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """lm-eval's EvaluationTracker logs a failed write and carries on; the sweep must not count it as done."""
    from lm_eval.loggers import EvaluationTracker

    write_text = Path.write_text

    def disk_full_for_none(path, *args, **kwargs):
        if path.name.startswith("results_") and path.parent.parent.name == "none":
            raise OSError(28, "No space left on device")
        return write_text(path, *args, **kwargs)

    save_samples = EvaluationTracker.save_results_samples

    def no_samples_for_pi(tracker, task_name, samples):
        if "pi_x2" not in str(tracker.output_path):
            save_samples(tracker, task_name, samples)

    monkeypatch.setattr(Path, "write_text", disk_full_for_none)
    monkeypatch.setattr(EvaluationTracker, "save_results_samples", no_samples_for_pi)
    runs = tmp_path / "runs"
    assert cli.main(sweep_command(tiny_model_dir("llama"), runs)) == 1
    err = capsys.readouterr().err
    assert f"none: FAILED (PointNotSaved: lm-eval did not write the results file under {runs / 'none'}" in err
    assert "pi_x2: FAILED (PointNotSaved: lm-eval did not write the samples of longppl" in err
    assert not list(runs.rglob(MANIFEST_NAME))
    assert "PointNotSaved" in (runs / "none" / "error.log").read_text()


@pytest.mark.slow
def test_points_differing_only_in_parameters_resume_and_conflict_apart(tiny_model_dir, tmp_path, monkeypatch):
    """Two SelfExtend group sizes are two points: two folders and manifests, skipped, re-run and in conflict
    one by one."""
    model, runs = tiny_model_dir("llama"), tmp_path / "runs"
    counter = LoadCounter(monkeypatch)
    points = "self_extend:group_size=2:neighbor_window=16,self_extend:group_size=4:neighbor_window=16"
    names = ["self_extend__group_size-2__neighbor_window-16", "self_extend__group_size-4__neighbor_window-16"]
    assert statuses(sweep(model, runs, points)) == dict.fromkeys(names, "done") and counter.loads == 1
    for name, group_size in zip(names, (2, 4)):
        assert manifest(runs / name)["request"]["method"] == {"scaling": "self_extend", "group_size": group_size,
                                                              "neighbor_window": 16}

    # the same points, their parameters spelled otherwise: skipped, nothing loaded
    counter.loads = 0
    respelled = "self_extend:neighbor_window=16:group_size=2.0,self_extend:group_size=4:neighbor_window=1.6e1"
    assert statuses(sweep(model, runs, respelled)) == dict.fromkeys(names, "skipped (done)") and counter.loads == 0

    # another group size is another point, run beside the others
    added = "self_extend__group_size-8__neighbor_window-16"
    outcomes = sweep(model, runs, points + ",self_extend:group_size=8:neighbor_window=16")
    assert statuses(outcomes) == {**dict.fromkeys(names, "skipped (done)"), added: "done"} and counter.loads == 1

    # other settings: a conflict naming each point's own folder, before anything loads
    counter.loads = 0
    with pytest.raises(ResumeConflict) as conflict:
        sweep(model, runs, points, limit=2)
    for name in names:
        assert f"{runs / name}:\n    limit: 1 there, 2 now" in str(conflict.value)
    assert counter.loads == 0
    # --overwrite re-runs the one point asked for; its old output is moved aside under its own name
    assert statuses(sweep(model, runs, "self_extend:group_size=4:neighbor_window=16", limit=2, overwrite=True)) == {
        names[1]: "done"}
    (replaced,) = (tmp_path / "runs.replaced").iterdir()
    assert replaced.name.startswith(names[1] + "-") and manifest(replaced)["request"]["limit"] == 1
    assert manifest(runs / names[0])["request"]["limit"] == 1 and manifest(runs / names[1])["request"]["limit"] == 2
