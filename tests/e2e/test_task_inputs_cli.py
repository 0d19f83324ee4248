"""The tasks' inputs and records through the real lm_eval command line on a tiny local model."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from lm_eval.api.metrics import mean_stderr

from lmeval_ctx.taskdata.task_classes import sha256_of_texts

pytestmark = pytest.mark.slow
LM_EVAL = str(Path(sys.executable).with_name("lm_eval"))


def lm_eval(*args, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([LM_EVAL, "--model", "ctx-hf", "--device", "cpu", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


def run_output(output: Path, task: str) -> tuple[dict, list[dict]]:
    (results,) = output.rglob("results_*.json")
    (samples,) = output.rglob(f"samples_{task}_*.jsonl")
    docs = [json.loads(line) for line in samples.read_text().splitlines()]
    return json.loads(results.read_text()), sorted(docs, key=lambda d: d["doc_id"])


def test_passkey_builds_what_it_evaluates_and_records_it(tiny_model_dir, tmp_path):
    # 100,000 samples per length planned, 6 evaluated: only those are built (all of them would take hours);
    # --gen_kwargs changes the generation budget the prompts are sized for
    run = lm_eval("--model_args", f"pretrained={tiny_model_dir('llama')},dtype=float32,scaling=pi,factor=8",
                  "--tasks", "passkey_custom", "--metadata", '{"lengths": [300, 600], "num_samples": 100000, "depths": 3}',
                  "--limit", "6", "--gen_kwargs", "max_gen_toks=40", "--output_path", str(tmp_path / "out"),
                  "--log_samples", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "passkey_custom: building prompts" in run.stderr
    results, docs = run_output(tmp_path / "out", "passkey_custom")
    assert len(docs) == 6
    assert all(d["doc"]["length"] - 64 <= d["doc"]["prompt_tokens"] + 40 <= d["doc"]["length"] for d in docs)
    identity = results["configs"]["passkey_custom"]["metadata"]["data_identity"]
    assert identity == {"kind": "prompts_sha256", "value": sha256_of_texts(d["doc"]["input"] for d in docs)}
    metrics = results["results"]["passkey_custom"]
    for length in (300, 600):
        scored = [d[f"acc@{length}"] for d in docs if d["doc"]["length"] == length]
        assert metrics[f"acc@{length}_stderr,none"] == pytest.approx(mean_stderr(scored))


def test_longppl_records_the_corpus_and_leaves_out_empty_documents(tiny_model_dir, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    rows = [{"title": "a", "text": "It is a truth universally acknowledged. " * 8},
            {"title": "blank", "text": " \n "},
            {"title": "b", "text": "Call me Ishmael. Some years ago, never mind how long. " * 6}]
    corpus.write_text("".join(json.dumps(row) + "\n" for row in rows))
    metadata = {"lengths": [48, 64], "stride": 16, "corpus_files": str(corpus)}
    run = lm_eval("--model_args", f"pretrained={tiny_model_dir('llama')},dtype=float32,revision=main",
                  "--tasks", "longppl", "--metadata", json.dumps(metadata), "--output_path", str(tmp_path / "out"),
                  "--log_samples", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "1 of 3 documents are empty or shorter than 64 tokens" in run.stderr
    results, _ = run_output(tmp_path / "out", "longppl")
    recorded = results["configs"]["longppl"]["metadata"]
    assert recorded["documents_left_out"] == {"48": 1, "64": 1}
    assert recorded["data_identity"]["kind"] == "sha256"
    assert recorded["data_identity"]["value"] == hashlib.sha256(corpus.read_bytes()).hexdigest()
    assert results["results"]["longppl"]["docs@64,none"] == 2


@pytest.mark.parametrize("task, metadata, model_args, message", [
    ("passkey_32k", None, "scaling=pi,factor=8",
     "window is 1024 tokens (scaling=pi with factor 8 on original_max_length=128), "
     "smaller than the task's length 32768"),
    ("passkey_1k", '{"lengths": [512]}', "scaling=pi,factor=8",
     "lengths=[512]: passkey_1k runs at its fixed length 1024, and no task of this run takes lengths"),
])
def test_bad_task_input_fails_before_prompts_are_built(tiny_model_dir, tmp_path, task, metadata, model_args, message):
    args = ["--model_args", f"pretrained={tiny_model_dir('llama')},{model_args}", "--tasks", task]
    run = lm_eval(*args, *(["--metadata", metadata] if metadata else []), cwd=tmp_path)
    assert run.returncode != 0
    assert message in run.stderr
    assert "building prompts" not in run.stderr
