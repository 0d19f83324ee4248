"""A sweep's output folders (lmeval_ctx/sweep/outputs.py): a point is done only when its files are complete and its
manifest matches; what differs stops the sweep, naming it; old output is moved aside, never mixed. Folders here are
written as lm-eval's tracker writes them, without a model; real runs: tests/e2e/test_sweep_resume.py."""

import json
from pathlib import Path

import pytest

from lmeval_ctx.sweep.outputs import (
    MANIFEST_NAME,
    OutputPathError,
    PointNotSaved,
    ResumeConflict,
    check_output_path,
    inspect_point,
    move_old_output,
    plan_points,
    point_manifest,
    saved_outputs,
    write_manifest,
)
from lmeval_ctx.sweep.points import sweep_points
from lmeval_ctx.sweep.request import point_request

SHARED = {"limit": 1, "model": {"pretrained": "/models/tiny"}}
RESULTS = {"configs": {"longppl": {}}, "results": {"longppl": {"token_perplexity@64,none": 3.5}}}
SAMPLES = {"longppl": [{"doc_id": 0}, {"doc_id": 1}]}


def write_point(output: Path, point, shared=SHARED, samples=SAMPLES) -> Path:
    """A point's folder as the sweep leaves it: lm-eval's results and samples, then the manifest."""
    folder = output / point.name
    (folder / "tiny").mkdir(parents=True)
    (folder / "tiny" / "results_2025-01-01T00-00-00.json").write_text(json.dumps(RESULTS))
    lines = "".join(json.dumps(sample) + "\n" for sample in samples["longppl"])
    (folder / "tiny" / "samples_longppl_2025-01-01T00-00-00.jsonl").write_text(lines)
    outputs = saved_outputs(folder, RESULTS, samples)
    write_manifest(folder, point_manifest(point, point_request(shared, point), log_samples=True, outputs=outputs,
                                          context_extension=None, not_compared={"batch_size": 1}))
    return folder


def test_a_complete_point_with_the_same_request_is_done_and_damage_is_found(tmp_path):
    (point,) = sweep_points("pi", "2")
    folder = write_point(tmp_path, point)
    request = point_request(SHARED, point)
    assert [path.name for path in folder.iterdir() if path.name.startswith(".")] == []  # no temporary file left
    assert inspect_point(folder, request, log_samples=True).kind == "done"
    assert inspect_point(folder, {**request, "limit": 2}, log_samples=True).detail == ["limit: 1 there, 2 now"]
    (samples,) = folder.rglob("samples_*.jsonl")
    samples.write_text(samples.read_text()[:-5])
    assert inspect_point(folder, request, log_samples=True).detail.endswith("(truncated or changed)")
    (folder / MANIFEST_NAME).write_text("{")
    assert "is unreadable" in inspect_point(folder, request, log_samples=True).detail
    (folder / MANIFEST_NAME).unlink()
    assert f"no {MANIFEST_NAME}" in inspect_point(folder, request, log_samples=True).detail
    assert inspect_point(tmp_path / "other", request, log_samples=True).kind == "new"


def test_results_or_samples_lm_eval_did_not_write_are_not_saved(tmp_path):
    with pytest.raises(PointNotSaved, match="lm-eval did not write the results file"):
        saved_outputs(tmp_path, RESULTS, None)
    (point,) = sweep_points("none")
    folder = write_point(tmp_path, point)
    with pytest.raises(PointNotSaved, match="has 2 samples, the run produced 3"):
        saved_outputs(folder, RESULTS, {"longppl": [{}, {}, {}]})


def test_a_differing_point_stops_the_sweep_or_with_overwrite_is_moved_aside(tmp_path):
    output = tmp_path / "runs"
    points = sweep_points("none,pi", "2")
    for point in points:
        write_point(output, point)
    plan = plan_points(points, output, SHARED, log_samples=True, overwrite=False, log=lambda message: None)
    assert plan.pending == [] and [outcome["status"] for outcome in plan.done.values()] == ["skipped (done)"] * 2
    changed = {**SHARED, "limit": 2}
    with pytest.raises(ResumeConflict) as conflict:
        plan_points(points, output, changed, log_samples=True, overwrite=False)
    for point in points:
        assert f"{output / point.name}:\n    limit: 1 there, 2 now" in str(conflict.value)
    assert f"{tmp_path / 'runs.replaced'}/" in str(conflict.value)

    messages = []
    plan = plan_points(points[1:], output, changed, log_samples=True, overwrite=True)
    move_old_output(plan, output, log=messages.append)
    assert plan.pending == points[1:] and not (output / "pi_x2").exists() and (output / "none").is_dir()
    (moved,) = (tmp_path / "runs.replaced").iterdir()
    assert moved.name.startswith("pi_x2-") and (moved / MANIFEST_NAME).is_file()
    assert messages == [f"[sweep] pi_x2: was run with other settings (--overwrite): limit: 1 there, 2 now; "
                        f"old output moved to {moved}; re-running"]


def test_an_output_path_that_cannot_hold_files_is_an_error_before_loading(tmp_path):
    points = sweep_points("none,pi", "2")
    (tmp_path / "a_file").write_text("")
    with pytest.raises(OutputPathError, match="is a file, not a folder"):
        check_output_path(tmp_path / "a_file", points)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "pi_x2").write_text("")
    with pytest.raises(OutputPathError, match="where the sweep writes the folder of point pi_x2"):
        check_output_path(tmp_path / "runs", points)
    check_output_path(tmp_path / "new" / "runs", points)
    assert (tmp_path / "new" / "runs").is_dir()
