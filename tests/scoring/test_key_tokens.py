"""Key-token perplexity (LongPPL): key-token selection and the evaluated model's key-token
perplexity against a direct float64 computation on a tiny model, through the real lm_eval CLI."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from lmeval_ctx.scoring.key_tokens import evaluator_logprobs, select_key_tokens, short_windows
from lmeval_ctx.taskdata.longppl import load_corpus
from tiny_models import char_tokenizer

LM_EVAL = str(Path(sys.executable).with_name("lm_eval"))
# thresholds that split the tiny random model's tokens into key and non-key ones
ALPHA, BETA = 0.05, -5.0


def reference_logprobs(folder, tokens: list[int], window: int, stride: int):
    """Full and short log-probabilities, float64 weights and one log-softmax per context, each short
    context built for its own token: ``tokens[start:p]`` with ``start`` the authors' window start."""
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64).eval()
    with torch.no_grad():
        full_logits = model(torch.tensor([tokens[:-1]])).logits[0]
        full = [math.nan] + [float(torch.log_softmax(full_logits[p - 1], -1)[tokens[p]]) for p in range(1, len(tokens))]
        short = [math.nan] * len(tokens)
        for p in range(window, len(tokens)):
            start = (p - window) // stride * stride
            logits = model(torch.tensor([tokens[start:p]])).logits[0, -1]
            short[p] = float(torch.log_softmax(logits, -1)[tokens[p]])
    return full, short


def reference_keys(full, short, alpha=ALPHA, beta=BETA) -> list[int]:
    return [p for p in range(len(full)) if not math.isnan(short[p]) and full[p] - short[p] > alpha and full[p] > beta]


def corpus_tokens(n: int, doc: int = 0) -> list[int]:
    return char_tokenizer()(load_corpus(num_docs=doc + 1)[doc].text, add_special_tokens=False).input_ids[:n]


def test_short_windows_score_every_token_from_k_on_once():
    assert short_windows(20, 8, 4) == [(0, 12), (4, 16), (8, 20)]
    assert short_windows(18, 8, 4) == [(0, 12), (4, 16), (8, 18)]
    assert short_windows(8, 8, 4) == []
    with pytest.raises(ValueError, match="key_window and key_stride"):
        short_windows(20, 0, 4)


def test_key_tokens_match_a_direct_computation(tiny_model_dir):
    folder = tiny_model_dir("llama")
    tokens = corpus_tokens(128)
    full_ref, short_ref = reference_logprobs(folder, tokens, 32, 8)
    expected = reference_keys(full_ref, short_ref)
    candidates = len(tokens) - 32
    assert 5 <= len(expected) <= candidates - 5  # a case with key tokens and others
    margins = [min(abs(full_ref[p] - short_ref[p] - ALPHA), abs(full_ref[p] - BETA)) for p in range(32, 128)]
    assert min(margins) > 1e-4  # no token so near a threshold that rounding could decide it

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    full, shorts = evaluator_logprobs(model, tokens, [(32, 8), (16, 4)])
    assert torch.allclose(full[1:], torch.tensor(full_ref[1:], dtype=torch.float64), atol=1e-4)
    assert torch.isnan(shorts[(32, 8)][:32]).all()
    assert torch.allclose(shorts[(32, 8)][32:], torch.tensor(short_ref[32:], dtype=torch.float64), atol=1e-4)
    assert select_key_tokens(full, shorts[(32, 8)], ALPHA, BETA) == expected
    # the rule itself: both conditions, strict
    assert select_key_tokens(torch.tensor([0.0, -1.0, -3.0]), torch.tensor([-2.5, -4.0, -9.0]), 2.0, -2.0) == [0, 1]


def test_a_capped_long_context_matches_a_direct_computation(tiny_model_dir):
    """key_long_window: each token given its last N..N+s-1 tokens (all before it below N), one softmax each."""
    folder = tiny_model_dir("llama")
    tokens, long_window, stride = corpus_tokens(128), 48, 8
    reference_model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64).eval()
    expected = [math.nan]
    with torch.no_grad():
        for p in range(1, len(tokens)):
            start = 0 if p < long_window else (p - long_window) // stride * stride
            logits = reference_model(torch.tensor([tokens[start:p]])).logits[0, -1]
            expected.append(float(torch.log_softmax(logits, -1)[tokens[p]]))
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    full, shorts = evaluator_logprobs(model, tokens, [(16, 4)], long=(long_window, stride))
    assert math.isnan(full[0]) and torch.allclose(full[1:], torch.tensor(expected[1:], dtype=torch.float64), atol=1e-4)
    whole, _ = evaluator_logprobs(model, tokens, [])
    assert torch.allclose(full[1:long_window], whole[1:long_window], atol=1e-5)  # below N: the whole prefix
    assert (full[long_window + stride:] - whole[long_window + stride:]).abs().max() > 1e-3  # beyond: capped
    assert torch.isnan(shorts[(16, 4)][:16]).all() and not torch.isnan(shorts[(16, 4)][16:]).any()


def lm_eval(*args, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([LM_EVAL, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def run_longppl(folder, output: Path, model_args: str, metadata: dict):
    run = lm_eval("--model", "ctx-hf", "--model_args", f"pretrained={folder},dtype=float32{model_args}",
                  "--tasks", "longppl", "--metadata", json.dumps(metadata), "--output_path", str(output),
                  "--log_samples", cwd=output.parent)
    assert run.returncode == 0, run.stderr[-3000:]
    (results,) = output.rglob("results_*.json")
    (samples,) = output.rglob("samples_longppl_*.jsonl")
    docs = [json.loads(line)["doc"] for line in samples.read_text().splitlines()]
    return json.loads(results.read_text())["results"]["longppl"], docs


@pytest.mark.slow
def test_key_token_perplexity_through_the_cli(tiny_model_dir, tmp_path):
    folder = tiny_model_dir("llama")
    key_file = tmp_path / "keys.json"
    metadata = {"lengths": [64, 128], "num_docs": 2, "key_tokens": True, "key_alpha": ALPHA, "key_beta": BETA,
                "key_tokens_file": str(key_file)}
    results, docs = run_longppl(folder, tmp_path / "none", "", metadata)
    for length, window in ((64, 16), (128, 32)):  # K = a quarter of the length, stride K / 4
        logprobs, count = 0.0, 0
        for doc_index in (0, 1):
            tokens = corpus_tokens(length, doc_index)
            full, short = reference_logprobs(folder, tokens, window, window // 4)
            expected = reference_keys(full, short)
            (doc,) = [d for d in docs if d["length"] == length and d["doc_index"] == doc_index]
            first_scored = doc["window_tokens"] - doc["scored_tokens"]
            assert [first_scored + offset for offset in doc["key_offsets"]] == expected
            logprobs, count = logprobs + sum(full[p] for p in expected), count + len(expected)
        assert results[f"key_tokens@{length},none"] == count > 0
        assert results[f"key_token_perplexity@{length},none"] == pytest.approx(math.exp(-logprobs / count), rel=1e-4)
        assert results[f"key_token_perplexity@{length},none"] != pytest.approx(results[f"token_perplexity@{length},none"])
    written = key_file.read_text()
    # another method: the same key tokens, read back from the file, scored by the scaled model
    scaled, scaled_docs = run_longppl(folder, tmp_path / "pi", ",scaling=pi,factor=2", metadata)
    assert key_file.read_text() == written
    assert [d["key_offsets"] for d in scaled_docs] == [d["key_offsets"] for d in docs]
    assert scaled["key_tokens@128,none"] == results["key_tokens@128,none"]
    assert scaled["key_token_perplexity@128,none"] != pytest.approx(results["key_token_perplexity@128,none"])
