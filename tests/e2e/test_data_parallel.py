"""Data parallelism: two CPU processes (gloo) through `accelerate launch -m lm_eval` give the
metrics of one process, for every method, the shared-pass perplexity included."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
TASKS = "passkey_1k,longppl"
METADATA = json.dumps({"lengths": [256, 512], "num_docs": 3})


def run(command: list[str], output: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "ACCELERATE_USE_CPU": "1",
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    files = list(output.rglob("results_*.json"))
    assert len(files) == 1, files  # only the main process writes: the documents were shared out, not repeated
    return json.loads(files[0].read_text())


@pytest.mark.parametrize("arch, model_args", [
    ("llama", "scaling=none,max_length=1024"),
    ("llama", "scaling=pi,factor=8"),
    ("llama", "scaling=ntk,factor=8"),
    ("llama", "scaling=dynamic_ntk,factor=8"),
    ("llama", "scaling=yarn,factor=8"),
    ("bloom", "scaling=ntk,factor=8,original_max_length=128"),
])
def test_two_processes_give_the_metrics_of_one(tiny_model_dir, tmp_path, arch, model_args):
    args = ["--model", "ctx-hf", "--model_args", f"pretrained={tiny_model_dir(arch)},dtype=float32,{model_args}",
            "--tasks", TASKS, "--metadata", METADATA, "--limit", "5", "--device", "cpu", "--log_samples"]
    two = run([str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "-m", "lm_eval",
               *args, "--output_path", str(tmp_path / "two")], tmp_path / "two")
    one = run([str(BIN / "lm_eval"), *args, "--output_path", str(tmp_path / "one")], tmp_path / "one")
    assert two["n-samples"] == one["n-samples"]
    for task, metrics in one["results"].items():
        for name, value in metrics.items():
            if isinstance(value, float):
                assert two["results"][task][name] == pytest.approx(value, rel=1e-6, nan_ok=True), (task, name)
    samples = list((tmp_path / "two").rglob("samples_longppl_*.jsonl"))
    assert len(samples[0].read_text().splitlines()) == 5  # both processes' samples gathered
