"""lmeval-ctx sweep: one load for every method, lm-eval's output format, the same metrics as
separate lm_eval runs, resumption, and failures that do not stop the sweep."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmeval_ctx.model_wrappers.ctx_hf import CtxHFLM
from lmeval_ctx.sweep import run_sweep, sweep_points

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
    assert counter.loads == 0
