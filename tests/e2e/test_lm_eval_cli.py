"""The real lm_eval command line with --model ctx-hf on tiny local models."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
LM_EVAL = str(Path(sys.executable).with_name("lm_eval"))


def lm_eval(*args, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([LM_EVAL, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def results_json(output: Path) -> dict:
    (path,) = output.rglob("results_*.json")
    return json.loads(path.read_text())


@pytest.mark.parametrize("arch, model_args", [
    ("llama", "scaling=yarn,factor=8"),
    ("bloom", "scaling=ntk_alibi,factor=8,original_max_length=128"),
])
def test_passkey_through_the_cli(tiny_model_dir, tmp_path, arch, model_args):
    folder = tiny_model_dir(arch)
    run = lm_eval("--model", "ctx-hf", "--model_args", f"pretrained={folder},dtype=float32,{model_args}",
                  "--tasks", "passkey_1k", "--limit", "2", "--device", "cpu", "--output_path", str(tmp_path / "out"),
                  "--log_samples", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    results = results_json(tmp_path / "out")
    record = results["config"]["context_extension"]
    assert record["max_length"] == 1024 and record["factor"] == 8.0
    # the effective settings reach the console once, at lm-eval's default verbosity
    (settings_line,) = [line for line in run.stderr.splitlines() if "lmeval-ctx context extension:" in line]
    assert "'factor': 8.0" in settings_line and "'max_length': 1024" in settings_line
    (samples_file,) = (tmp_path / "out").rglob("samples_passkey_1k_*.jsonl")
    samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
    assert len(samples) == 2
    for sample in samples:
        key = sample["doc"]["key"]
        assert sample["doc"]["length"] == 1024 and re.fullmatch(r"\d{5}", key)
        assert f"The pass key is {key}." in sample["doc"]["input"]
    # scored here from the logged generations, independently of the task's code: the first integer
    retrieved = [float((re.search(r"\d+", s["resps"][0][0]) or [None])[0] == s["doc"]["key"]) for s in samples]
    assert [s["acc"] for s in samples] == retrieved
    assert results["results"]["passkey_1k"]["acc,none"] == pytest.approx(sum(retrieved) / len(retrieved))


def test_bad_model_arg_fails_with_the_message(tiny_model_dir, tmp_path):
    run = lm_eval("--model", "ctx-hf", "--model_args", f"pretrained={tiny_model_dir('llama')},scaling=xpos,factor=2",
                  "--tasks", "passkey_1k", "--limit", "1", "--device", "cpu", cwd=tmp_path)
    assert run.returncode != 0
    assert "scaling='xpos' is not a known context-extension method" in run.stderr


def test_window_smaller_than_the_task_is_refused(tiny_model_dir, tmp_path):
    run = lm_eval("--model", "ctx-hf", "--model_args", f"pretrained={tiny_model_dir('llama')},max_length=512",
                  "--tasks", "passkey_1k", "--limit", "1", "--device", "cpu", cwd=tmp_path)
    assert run.returncode != 0
    assert "max_length=512 is smaller than the task's length 1024" in run.stderr


def test_configurable_passkey_reports_one_accuracy_per_length(tiny_model_dir, tmp_path):
    folder = tiny_model_dir("llama")
    run = lm_eval("--model", "ctx-hf", "--model_args", f"pretrained={folder},dtype=float32,scaling=pi,factor=8",
                  "--tasks", "passkey_custom", "--metadata", '{"lengths": [300, 600], "num_samples": 3, "depths": 3}',
                  "--device", "cpu", "--output_path", str(tmp_path / "out"), "--log_samples", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    results = results_json(tmp_path / "out")
    metrics = results["results"]["passkey_custom"]
    assert {"acc@300,none", "acc@600,none"} <= set(metrics) and "acc,none" not in metrics
    assert results["higher_is_better"]["passkey_custom"]["acc@600"] is True
    (samples,) = (tmp_path / "out").rglob("samples_passkey_custom_*.jsonl")
    docs = [json.loads(line) for line in samples.read_text().splitlines()]
    assert sorted((d["doc"]["length"], d["doc"]["depth"]) for d in docs) == [
        (300, 0.0), (300, 0.5), (300, 1.0), (600, 0.0), (600, 0.5), (600, 1.0)]
    for length in (300, 600):
        scored = [d for d in docs if d["doc"]["length"] == length]
        expected = sum(d[f"acc@{length}"] for d in scored) / len(scored)
        assert metrics[f"acc@{length},none"] == pytest.approx(expected)
    assert "acc@300" in run.stdout and "acc@600" in run.stdout  # lm-eval's table


def test_configurable_passkey_without_lengths_says_how_to_pass_them(tiny_model_dir, tmp_path):
    run = lm_eval("--model", "ctx-hf", "--model_args", f"pretrained={tiny_model_dir('llama')}",
                  "--tasks", "passkey_custom", "--device", "cpu", cwd=tmp_path)
    assert run.returncode != 0
    assert 'The passkey_custom task needs its lengths: --tasks passkey_custom --metadata \'{"lengths": [4096, 8192]}\'' \
        in run.stderr


def test_no_task_of_ours_overrides_one_lm_eval_ships(tiny_model_dir, tmp_path):
    """lm-eval logs each name a later task folder takes over; the plugin's folder must take over none
    (it did take LIBRA's passkey, so LIBRA's group ran ours)."""
    run = lm_eval("--model", "ctx-hf", "--model_args",
                  f"pretrained={tiny_model_dir('llama')},dtype=float32,scaling=yarn,factor=8",
                  "--tasks", "passkey_1k", "--limit", "1", "--device", "cpu", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "passkey_1k" in run.stdout  # lm-eval's table: the run happened and was logged
    assert [line for line in (run.stdout + run.stderr).splitlines() if "overrides existing task" in line] == []
