"""Long-range perplexity through lm-eval against a direct transformers computation,
and the shared pass against separate runs."""

import math
import random

import lm_eval
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from lmeval_ctx.taskdata.longppl import load_corpus
from lmeval_ctx.model_wrappers.ctx_hf import CtxHFLM
from tiny_models import char_tokenizer


def run_longppl(lm, folder, **metadata):
    out = lm_eval.simple_evaluate(model=lm, tasks=["longppl"], metadata={"pretrained": str(folder), **metadata},
                                  log_samples=True, bootstrap_iters=0)
    return out["results"]["longppl"], [s["doc"] for s in out["samples"]["longppl"]]


def nll_sum(model, tokens: list[int], first_target: int) -> float:
    """Sum of -log p(token) for tokens[first_target:], each given all tokens before it (plain forward)."""
    with torch.no_grad():
        logits = model(torch.tensor([tokens[:-1]])).logits[0].float()
    losses = F.cross_entropy(logits, torch.tensor(tokens[1:]), reduction="none")
    return float(losses[first_target - 1:].sum())


@pytest.fixture(scope="module")
def llama(tiny_model_dir):
    folder = tiny_model_dir("llama")
    return folder, CtxHFLM(pretrained=str(folder), dtype="float32", device="cpu", batch_size=4)


def test_truncation_matches_a_plain_transformers_computation(llama):
    folder, lm = llama
    results, docs = run_longppl(lm, folder, lengths=[32, 128], num_docs=3)
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = char_tokenizer()
    for length in (32, 128):
        total_nll = total_tokens = 0
        for document in load_corpus(num_docs=3):
            ids = tokenizer(document.text, add_special_tokens=False).input_ids[:length]
            total_nll += nll_sum(reference, ids, 1)
            total_tokens += length - 1
        assert {d["window_tokens"] for d in docs if d["length"] == length} == {length}
        assert results[f"tokens@{length},none"] == total_tokens and results[f"docs@{length},none"] == 3
        assert results[f"token_perplexity@{length},none"] == pytest.approx(math.exp(total_nll / total_tokens), rel=1e-4)


def test_sliding_window_matches_a_plain_transformers_computation(llama, tmp_path):
    folder, lm = llama
    rng = random.Random(0)
    path = tmp_path / "letters.txt"  # no whitespace: every token boundary is a valid cut
    path.write_text("".join(rng.choice("abcdefghij.,;") for _ in range(400)))
    results, _ = run_longppl(lm, folder, lengths=[64, 128], stride=16, span=256, data_files=str(path))
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = char_tokenizer()(path.read_text(), add_special_tokens=False).input_ids[:256]
    for length in (64, 128):
        total_nll, scored_to = 0.0, 1
        for end in range(length, 256 + 1, 16):
            begin = end - length
            total_nll += nll_sum(reference, ids[begin:end], scored_to - begin)
            scored_to = end
        assert results[f"tokens@{length},none"] == 255
        assert results[f"token_perplexity@{length},none"] == pytest.approx(math.exp(total_nll / 255), rel=1e-4)


class ForwardCounter:
    """Records the input length of every forward pass of an lm-eval HF model."""

    def __init__(self, lm, monkeypatch):
        self.lengths: list[int] = []
        self.shared_passes = 0
        call, token_logprobs = lm._model_call, lm._token_logprobs

        def counting_call(inputs, *args, **kwargs):
            self.lengths.extend([inputs.shape[1]] * inputs.shape[0])
            return call(inputs, *args, **kwargs)

        def counting_logprobs(*args, **kwargs):
            self.shared_passes += 1
            return token_logprobs(*args, **kwargs)

        monkeypatch.setattr(lm, "_model_call", counting_call)
        monkeypatch.setattr(lm, "_token_logprobs", counting_logprobs)


@pytest.mark.parametrize("scaling", ["pi", "dynamic_ntk"])
def test_shared_pass_equals_separate_runs_and_is_off_for_dynamic(tiny_model_dir, monkeypatch, scaling):
    folder = tiny_model_dir("llama")
    lm = CtxHFLM(pretrained=str(folder), scaling=scaling, factor=2, dtype="float32", device="cpu", batch_size=4)
    lengths = [64, 128, 256]
    together = ForwardCounter(lm, monkeypatch)
    combined, _ = run_longppl(lm, folder, lengths=lengths, num_docs=2)
    monkeypatch.undo()
    separate = {}
    apart = ForwardCounter(lm, monkeypatch)
    for length in lengths:
        separate[length] = run_longppl(lm, folder, lengths=[length], num_docs=2)[0]
    for length in lengths:
        key = f"token_perplexity@{length},none"
        assert combined[key] == pytest.approx(separate[length][key], rel=1e-6)
        assert combined[f"tokens@{length},none"] == separate[length][f"tokens@{length},none"]
    assert sorted(apart.lengths) == sorted([n - 1 for n in lengths] * 2)
    if scaling == "pi":
        # one pass per document at the longest length serves all three
        assert together.shared_passes == 2 and together.lengths == [255, 255]
    else:
        # dynamic NTK: a token's loss depends on the input length, so every length runs on its own
        assert together.shared_passes == 0 and sorted(together.lengths) == sorted(apart.lengths)


def test_auto_batch_size_probes_the_longest_request_and_changes_no_figure(tiny_model_dir, monkeypatch):
    folder = tiny_model_dir("llama")
    metadata = {"pretrained": str(folder), "lengths": [64, 256], "stride": 32, "span": 256, "num_docs": 2}
    figures = {}
    for batch_size in (1, "auto"):
        lm = CtxHFLM(pretrained=str(folder), scaling="pi", factor=2, dtype="float32", device="cpu",
                     batch_size=batch_size, max_batch_size=16)
        counter = ForwardCounter(lm, monkeypatch)
        out = lm_eval.simple_evaluate(model=lm, tasks=["longppl"], metadata=metadata, bootstrap_iters=0)
        monkeypatch.undo()
        figures[batch_size] = out["results"]["longppl"]
        if batch_size == "auto":
            # lm-eval's probe ran 16 rows at the longest batched request (the 64-token windows)
            # first; the windows served from a shared pass (up to 256) ran one at a time
            assert counter.lengths[:16] == [63] * 16 and out["config"]["batch_sizes"] == [16]
            assert counter.shared_passes == 2
    for key, value in figures[1].items():
        if isinstance(value, float):
            assert figures["auto"][key] == pytest.approx(value, rel=1e-5), key
