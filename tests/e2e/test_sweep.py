"""lmeval-ctx sweep: one load for every method, lm-eval's output format, the same metrics as
separate lm_eval runs, resumption, failures that do not stop the sweep, point folders that tell every
factor and every method parameter apart, points checked against the config before the load, and the
README's example run as written, and the batch size and device taken from the flags or the model args. Resumption
rules: test_sweep_resume.py; the modules: tests/sweep/."""

import json
import os
import re
import shlex
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch
import transformers

from lmeval_ctx import cli
from lmeval_ctx.model_wrappers.ctx_hf import CtxHFLM
from lmeval_ctx.sweep.outputs import MANIFEST_NAME
from lmeval_ctx.sweep.points import sweep_points
from lmeval_ctx.sweep.run import run_sweep, summary_table
from tiny_models import _COMMON, char_tokenizer

TASKS = ["passkey_1k", "longppl"]
METADATA = {"lengths": [256, 512], "num_docs": 1}
LM_EVAL = str(Path(sys.executable).with_name("lm_eval"))


class LoadCounter:
    def __init__(self, monkeypatch):
        self.loads = 0
        create = CtxHFLM._create_model

        def counting(lm, *args, **kwargs):
            self.loads += 1
            return create(lm, *args, **kwargs)

        monkeypatch.setattr(CtxHFLM, "_create_model", counting)


def results_of(folder: Path) -> dict:
    (path,) = folder.rglob("results_*.json")
    return json.loads(path.read_text())


def sweep(folder, output, methods, factors="4", model_args=None, log=None):
    return run_sweep(model_args or {"pretrained": str(folder), "dtype": "float32", "max_length": 1024},
                     sweep_points(methods, factors), TASKS, output, device="cpu", limit=2, log_samples=True,
                     metadata=METADATA, log=log or (lambda message: None))


@pytest.mark.slow
def test_one_load_for_every_method_and_the_metrics_of_separate_runs(tiny_model_dir, tmp_path, monkeypatch):
    folder = tiny_model_dir("llama")
    counter = LoadCounter(monkeypatch)
    outcomes = sweep(folder, tmp_path / "runs", "none,pi,yarn,dynamic_ntk")
    assert counter.loads == 1
    assert [(o["point"].name, o["status"]) for o in outcomes] == [
        ("none", "done"), ("pi_x4", "done"), ("yarn_x4", "done"), ("dynamic_ntk_x4", "done")]
    for name in ("pi_x4", "yarn_x4"):
        swept = results_of(tmp_path / "runs" / name)
        assert swept["config"]["model"] == "ctx-hf"
        assert swept["config"]["context_extension"]["scaling"] == name.split("_x")[0]
        assert list((tmp_path / "runs" / name).rglob("samples_passkey_1k_*.jsonl"))
        # the same settings through the lm_eval command line, one run per method
        method = name.split("_x")[0]
        separate = tmp_path / f"separate_{name}"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        run = subprocess.run(
            [LM_EVAL, "--model", "ctx-hf", "--model_args",
             f"pretrained={folder},dtype=float32,max_length=1024,scaling={method},factor=4",
             "--tasks", ",".join(TASKS), "--metadata", json.dumps(METADATA), "--limit", "2", "--device", "cpu",
             "--output_path", str(separate)], capture_output=True, text=True, env=env, timeout=600)
        assert run.returncode == 0, run.stderr[-2000:]
        expected = results_of(separate)["results"]
        for task in TASKS:
            for metric, value in expected[task].items():
                if isinstance(value, float):
                    assert swept["results"][task][metric] == pytest.approx(value, rel=1e-6), (name, task, metric)
    # re-running the same sweep skips what is done, without loading the model
    counter.loads = 0
    again = sweep(folder, tmp_path / "runs", "none,pi,yarn,dynamic_ntk")
    assert {o["status"] for o in again} == {"skipped (done)"} and counter.loads == 0


def test_a_failing_method_is_reported_and_the_sweep_goes_on(tiny_model_dir, tmp_path):
    folder = tiny_model_dir("llama")
    messages = []
    # no max_length: scaling=none keeps the trained window (128) and cannot hold passkey_1k; pi x8 can
    outcomes = sweep(folder, tmp_path / "runs", "none,pi", factors="8",
                     model_args={"pretrained": str(folder), "dtype": "float32"}, log=messages.append)
    status = {o["point"].name: o for o in outcomes}
    assert status["none"]["status"] == "failed" and "does not fit the window max_length=128" in status["none"]["error"]
    assert "Traceback" in (tmp_path / "runs" / "none" / "error.log").read_text()
    assert status["pi_x8"]["status"] == "done" and results_of(tmp_path / "runs" / "pi_x8")["results"]["passkey_1k"]
    assert any("none: FAILED" in message for message in messages)


def test_a_batch_size_and_device_in_the_model_args_are_used_and_not_compared(tiny_model_dir, tmp_path, monkeypatch,
                                                                             capsys):
    """``--model_args ...,batch_size=2,device=cpu`` once failed at the load: "CtxHFLM() got multiple values for
    keyword argument 'batch_size'"."""
    folder = tiny_model_dir("llama")
    counter = LoadCounter(monkeypatch)
    model_args = {"pretrained": str(folder), "dtype": "float32", "batch_size": 2, "device": "cpu"}
    outcomes = run_sweep(model_args, sweep_points("none"), ["longppl"], tmp_path / "runs", limit=1,
                         metadata={"lengths": [64], "num_docs": 1}, log=lambda message: None)
    assert [o["status"] for o in outcomes] == ["done"] and counter.loads == 1
    manifest = json.loads((tmp_path / "runs" / "none" / MANIFEST_NAME).read_text())
    assert manifest["not_compared"] == {"batch_size": 2, "device": "cpu"}
    assert manifest["request"]["model_args"] == {"dtype": "float32"}
    # the same sweep through the command line, the batch size now a flag: recorded, not compared, so done
    counter.loads = 0
    argv = ["sweep", "--model_args", f"pretrained={folder},dtype=float32,device=cpu", "--batch_size", "4",
            "--methods", "none", "--tasks", "longppl", "--limit", "1", "--output_path", str(tmp_path / "runs"),
            "--metadata", json.dumps({"lengths": [64], "num_docs": 1})]
    assert cli.main(argv) == 0 and counter.loads == 0
    assert "| none |  | skipped (done) |" in capsys.readouterr().out


def test_a_model_argument_the_model_does_not_take_is_a_one_line_usage_error(tiny_model_dir, tmp_path, capsys):
    argv = ["sweep", "--model_args", f"pretrained={tiny_model_dir('llama')},bogus=1", "--methods", "none",
            "--tasks", "longppl", "--output_path", str(tmp_path / "runs"), "--device", "cpu"]
    with pytest.raises(SystemExit) as stopped:
        cli.main(argv)
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and "Traceback" not in err
    # the last line (the model's loading messages come before it), so one line
    assert err.splitlines()[-1].startswith("lmeval-ctx sweep: error: Unknown ctx-hf model_args key 'bogus' (bogus=1)")


def test_bad_input_fails_before_loading(tiny_model_dir, tmp_path, monkeypatch):
    folder = tiny_model_dir("llama")
    counter = LoadCounter(monkeypatch)
    with pytest.raises(ValueError, match="scaling='rope_magic' is not a known context-extension method"):
        sweep_points("none,rope_magic")
    with pytest.raises(ValueError, match=r"factor=0\.5 must be a finite number >= 1"):
        sweep_points("pi", "0.5")
    with pytest.raises(ValueError, match="Unknown task"):
        run_sweep({"pretrained": str(folder)}, sweep_points("pi", "2"), ["passkey_1k", "no_such_task"], tmp_path)
    with pytest.raises(ValueError, match="the sweep sets these per point"):
        run_sweep({"pretrained": str(folder), "scaling": "yarn"}, sweep_points("pi", "2"), ["passkey_1k"], tmp_path)
    with pytest.raises(ValueError, match="--limit and --samples cannot be combined"):
        run_sweep({"pretrained": str(folder)}, sweep_points("pi", "2"), ["passkey_1k"], tmp_path, limit=2,
                  samples={"passkey_1k": [0]})
    with pytest.raises(ValueError, match="--include_path .*no_such_folder: no such folder"):
        run_sweep({"pretrained": str(folder)}, sweep_points("pi", "2"), ["passkey_1k"], tmp_path,
                  include_path=[str(tmp_path / "no_such_folder")])
    assert counter.loads == 0


def test_point_folders_and_labels_tell_every_factor_apart():
    points = sweep_points("pi", "2,2.0000001,4,1.5")
    assert [point.name for point in points] == ["pi_x2", "pi_x2.0000001", "pi_x4", "pi_x1.5"]
    table = summary_table([{"point": p, "status": "done", "folder": p.name, "error": None} for p in points])
    assert "| pi | 2 |" in table and "| pi | 2.0000001 |" in table
    # factors equal as numbers are one point, and the sweep says so
    messages = []
    assert [p.name for p in sweep_points("none,yarn", "2,2.0,2e0", log=messages.append)] == ["none", "yarn_x2"]
    assert messages == ["[sweep] factor 2.0 equals factor 2 as a number: one point",
                        "[sweep] factor 2e0 equals factor 2 as a number: one point"]


# --- points with their own parameters ------------------------------------------------------------------

SELF_EXTEND_POINTS = "self_extend:group_size=2:neighbor_window=16,self_extend:group_size=4:neighbor_window=16"


@pytest.mark.slow
def test_points_differing_in_parameters_are_separate_runs_folders_and_rows(tiny_model_dir, tmp_path, monkeypatch):
    """Two SelfExtend group sizes: two folders, each equal to its own ctx-hf run, and two report rows."""
    import lm_eval

    from lmeval_ctx.report.write import write_report

    folder = tiny_model_dir("llama")  # trained length 128
    # 160 tokens: past the trained length and the neighbour window, so the group size matters
    model_args = {"pretrained": str(folder), "dtype": "float32", "max_length": 192}
    metadata = {"lengths": [160], "num_docs": 1}
    counter = LoadCounter(monkeypatch)
    outcomes = run_sweep(model_args, sweep_points(SELF_EXTEND_POINTS), ["longppl"], tmp_path / "runs", device="cpu",
                         limit=1, metadata=metadata, log=lambda message: None)
    names = ["self_extend__group_size-2__neighbor_window-16", "self_extend__group_size-4__neighbor_window-16"]
    assert [(o["point"].name, o["status"]) for o in outcomes] == [(name, "done") for name in names]
    assert counter.loads == 1
    perplexities = []
    for name, group_size in zip(names, (2, 4)):
        swept = results_of(tmp_path / "runs" / name)
        point_args = {"scaling": "self_extend", "group_size": group_size, "neighbor_window": 16}
        assert swept["config"]["model_args"] == {**model_args, **point_args}
        assert swept["config"]["context_extension"]["options"] == {"group_size": group_size, "neighbor_window": 16}
        manifest = json.loads((tmp_path / "runs" / name / MANIFEST_NAME).read_text())
        assert manifest["point"] == name and manifest["request"]["method"] == point_args
        separate = lm_eval.simple_evaluate(model="ctx-hf", model_args={**model_args, **point_args}, tasks=["longppl"],
                                           limit=1, metadata=metadata, device="cpu")
        assert separate["config"]["context_extension"] == swept["config"]["context_extension"]
        expected = {m: v for m, v in separate["results"]["longppl"].items() if isinstance(v, float) and v == v}
        assert any(metric.startswith("token_perplexity@160") for metric in expected)
        for metric, value in expected.items():
            assert swept["results"]["longppl"][metric] == pytest.approx(value, rel=1e-6), (name, metric)
        perplexities.append(swept["results"]["longppl"]["token_perplexity@160,none"])
    assert perplexities[0] != perplexities[1]  # each point ran with its own group size

    report = write_report([tmp_path / "runs"], tmp_path / "report", log=lambda message: None)
    labels = [run.label for run in report["runs"]]
    assert labels == ["self_extend (group_size=2, neighbor_window=16)",
                      "self_extend (group_size=4, neighbor_window=16)"]
    lines = report["table"].splitlines()
    model = report["runs"][0].model
    assert lines[2].startswith(f"| {model} | self_extend (group_size=2, neighbor_window=16) |  | 192 |")
    assert lines[3].startswith(f"| {model} | self_extend (group_size=4, neighbor_window=16) |  | 192 |")


def test_points_are_resolved_against_the_config_before_loading(tiny_model_dir, tmp_path, monkeypatch):
    """What only the model's config can tell (the trained length, a required option) is found before the load."""
    folder = tiny_model_dir("llama")  # trained length 128
    counter = LoadCounter(monkeypatch)
    with pytest.raises(ValueError) as error:
        run_sweep({"pretrained": str(folder), "max_length": 192},
                  sweep_points("none,self_extend:group_size=4:neighbor_window=512,rerope,self_extend:group_size=2:"
                               "neighbor_window=100"), ["passkey_1k"], tmp_path / "runs", log=lambda message: None)
    message = str(error.value)
    assert "self_extend:group_size=4:neighbor_window=512: neighbor_window=512 must be smaller than " \
           "original_max_length=128" in message
    assert "rerope: scaling=rerope needs window=<...>" in message
    # group 2 past a window of 100 reaches 191 // 2 + 100 - 100 // 2 = 145 at max_length 192, beyond the trained 127
    assert "self_extend:group_size=2:neighbor_window=100: group_size=2, neighbor_window=100 reach relative position " \
           "145 at max_length=192" in message
    assert "none:" not in message and counter.loads == 0 and not list((tmp_path / "runs").iterdir())
    # a parameter given both in --model_args and in a point, through the command line
    with pytest.raises(SystemExit) as stopped:
        cli.main(["sweep", "--model_args", f"pretrained={folder},logn=true", "--methods", "none,none:logn=false",
                  "--tasks", "passkey_1k", "--output_path", str(tmp_path / "runs")])
    assert stopped.value.code == 2 and counter.loads == 0


# --- the README's sweep example, run with its own flags ------------------------------------------------

README = Path(__file__).resolve().parents[2] / "README.md"
# the README's model is meta-llama/Llama-2-7b-hf; the tiny stand-in has its trained window
README_MODEL_TRAINED_LENGTH = 4096
PG19 = "emozilla/pg19-test"


def readme_sweep_example() -> tuple[list[str], list[str]]:
    """The ``lmeval-ctx sweep`` and ``lmeval-ctx report`` commands of the README's sweep example."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    block = next(block for block in blocks if "lmeval-ctx sweep" in block)
    commands = [shlex.split(line, comments=True) for line in block.replace("\\\n", " ").splitlines()]
    sweep = next(command for command in commands if command[:2] == ["lmeval-ctx", "sweep"])
    report = next(command for command in commands if command[:2] == ["lmeval-ctx", "report"])
    return sweep, report


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def set_flag(argv: list[str], name: str, value: str) -> list[str]:
    if name in argv:
        return [value if i and argv[i - 1] == name else arg for i, arg in enumerate(argv)]
    return argv + [name, value]


@pytest.fixture
def pg19_offline(monkeypatch, tmp_path):
    """The fixed longppl tasks read PG19 from the hub, which tests cannot reach: serve the first book of the
    shipped corpus in its place (one book is all --limit 1 scores)."""
    import datasets

    from lmeval_ctx.common.paths import SHIPPED_CORPUS

    book = tmp_path / "pg19_stand_in.jsonl"
    book.write_text(SHIPPED_CORPUS.read_text(encoding="utf-8").splitlines()[0] + "\n", encoding="utf-8")
    load_builder = datasets.load_dataset_builder

    def local_pg19(path, *args, **kwargs):
        if path == PG19:
            return load_builder("json", data_files={"test": str(book)}, cache_dir=str(tmp_path / "hf"))
        return load_builder(path, *args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset_builder", local_pg19)


@pytest.mark.slow
def test_the_readme_sweep_example_runs_as_written(tmp_path, monkeypatch, pg19_offline):
    """The README's flags, with only the model (a tiny Llama with Llama 2's trained window), the output
    folder and --limit 1 substituted; no --device, as in the README."""
    sweep, report = readme_sweep_example()
    (entry,) = entry_points(group="console_scripts", name="lmeval-ctx")
    assert entry.value == "lmeval_ctx.cli:main"

    model = tmp_path / "tiny_llama"
    # smaller than tests/tiny_models.py's: its prompts are 8192 tokens long
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1,
                                      max_position_embeddings=README_MODEL_TRAINED_LENGTH, **_COMMON)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(model)
    char_tokenizer().save_pretrained(model)

    readme_output = flag(sweep, "--output_path")
    model_args = [arg if not arg.startswith("pretrained=") else f"pretrained={model}"
                  for arg in flag(sweep, "--model_args").split(",")]
    output = tmp_path / "runs"
    argv = set_flag(set_flag(set_flag(sweep[1:], "--model_args", ",".join(model_args)), "--output_path",
                             str(output)), "--limit", "1")
    counter = LoadCounter(monkeypatch)
    assert cli.main(argv) == 0
    assert counter.loads == 1
    tasks = flag(sweep, "--tasks").split(",")
    points = sweep_points(flag(sweep, "--methods"), flag(sweep, "--factor") if "--factor" in sweep else None)
    for point in points:
        manifest = json.loads((output / point.name / MANIFEST_NAME).read_text())
        assert set(results_of(output / point.name)["results"]) >= set(tasks)
        assert manifest["not_compared"]["device"] == ("cuda:0" if torch.cuda.is_available() else "cpu")
        if "--log_samples" in sweep:
            assert set(manifest["outputs"]["samples"]) == set(tasks)
    # the report line, on the same folder
    report_argv = [str(output) if arg == readme_output else arg for arg in report[1:]]
    assert cli.main(report_argv) == 0
    assert (output / "report" / "leaderboard.md").is_file()
    # the same command again resumes: nothing to run, nothing loaded
    counter.loads = 0
    assert cli.main(argv) == 0 and counter.loads == 0
