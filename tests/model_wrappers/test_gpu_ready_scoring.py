"""ctx-hf's scoring paths ready for GPUs: targets follow the output layer's device (accelerate's device map,
``parallelize=True``), nothing float64 on the device, and ``batch_size=auto`` probes the sliced path.

Only a machine with two accelerators can put the output layer on another device than the decoder's
first layer; here the output layer's logits come out on ``meta`` (a second device torch has on every
machine) and an accelerate-dispatched model with its output layer offloaded (weights on ``meta``,
run on the CPU by accelerate's hooks) goes through ctx-hf with ``parallelize=True``.
"""

import random

import pytest
import torch
import torch.nn.functional as F
from accelerate.utils import find_executable_batch_size
from lm_eval.models.huggingface import HFLM

from lmeval_ctx.model_wrappers.ctx_hf import CtxHFLM
from lmeval_ctx.scoring import logprobs as scoring


def test_targets_follow_the_logits_to_the_output_layers_device():
    """The decoder's states and the targets on the CPU, the output layer on another device (meta)."""
    head = torch.nn.Linear(8, 50, device="meta", dtype=torch.bfloat16)
    hidden, targets = torch.randn(37, 8, dtype=torch.bfloat16), torch.randint(0, 50, (2, 37))
    moved = lambda states: head(states.to("meta"))  # what accelerate's hook on the output layer does
    with torch.no_grad():
        log_probs, is_argmax = scoring.sliced_logprobs(moved, hidden, targets, slice_positions=16)
    assert log_probs.device.type == is_argmax.device.type == "meta"
    assert log_probs.dtype == torch.float32  # never float64 on the device
    assert log_probs.shape == is_argmax.shape == (2, 37)


def test_results_come_to_the_host_in_float64_once():
    head = torch.nn.Linear(8, 50).to(torch.bfloat16)
    hidden, targets = torch.randn(37, 8).to(torch.bfloat16), torch.randint(0, 50, (2, 37))
    with torch.no_grad():
        on_device, _ = scoring.sliced_logprobs(head, hidden, targets, slice_positions=16)
        host, _ = scoring.target_logprobs(head, hidden, targets, slice_positions=16)
        exact = F.log_softmax(head(hidden).float(), dim=-1).gather(-1, targets.T).T.double()
    assert on_device.dtype == torch.float32 and host.dtype == torch.float64 and host.device.type == "cpu"
    torch.testing.assert_close(host, exact, rtol=1e-6, atol=0)


def reference_scores(model, requests) -> list[float]:
    """Each request's log-likelihood from the model's own forward: float64 log-softmax, one sum."""
    answers = []
    for _, context, continuation in requests:
        with torch.no_grad():
            logits = model(torch.tensor([(context + continuation)[:-1]])).logits[0, len(context) - 1:]
        answers.append(float(F.log_softmax(logits.double(), dim=-1).gather(-1, torch.tensor(continuation)[:, None])
                             .sum()))
    return answers


def test_an_accelerate_device_map_with_an_offloaded_output_layer_scores_as_the_plain_model(tiny_model_dir, tmp_path):
    """parallelize=True with a device map: the decoder on the CPU, the output layer's weights offloaded to
    disk (on ``meta`` until accelerate's hook loads them to run): sliced and full-logit scoring equal the model."""
    folder = str(tiny_model_dir("llama"))
    lm = CtxHFLM(pretrained=folder, parallelize=True, device_map={"model": "cpu", "lm_head": "disk"},
                 offload_folder=str(tmp_path), device="cpu", batch_size=2)
    assert lm.model.lm_head.weight.device.type == "meta" and hasattr(lm.model.lm_head, "_hf_hook")
    rng = random.Random(0)
    requests = [(None, [rng.randrange(4, 100) for _ in range(n)], [rng.randrange(4, 100) for _ in range(m)])
                for n, m in ((5, 40), (30, 3), (1, 60))]
    plain = CtxHFLM(pretrained=folder, device="cpu", batch_size=2).model
    expected = reference_scores(plain, requests)
    for logits_slice in (16, 0):
        lm.logits_slice = logits_slice
        got = [total for total, _ in lm._loglikelihood_tokens(requests, disable_tqdm=True)]
        assert got == pytest.approx(expected, rel=1e-5)


def largest_batch_tried(start: int, fits) -> int:
    """The batch size lm-eval's probe settles on (accelerate's schedule from ``start``) when ``fits(batch)`` says."""
    @find_executable_batch_size(starting_batch_size=start)
    def attempt(batch_size):
        if not fits(batch_size):
            raise RuntimeError("CUDA out of memory. (simulated)")
        return batch_size
    return attempt()


class Budget:
    """A device with room for at most ``batch`` rows of decoder activations and ``logits`` logit floats at once:
    the out-of-memory error lm-eval's probe halves its batch on (accelerate's ``should_reduce_batch_size``)."""

    def __init__(self, lm, batch: int, logits: int):
        self.batch, self.logits = batch, logits
        self.embed, self.head = lm.model.model.embed_tokens.forward, lm.model.lm_head.forward

    def embed_forward(self, ids):
        if ids.shape[0] > self.batch:
            raise RuntimeError("CUDA out of memory. (simulated: decoder activations)")
        return self.embed(ids)

    def head_forward(self, states):
        if states.shape[:-1].numel() * self.head.__self__.out_features > self.logits:
            raise RuntimeError("CUDA out of memory. (simulated: logits)")
        return self.head(states)


@pytest.mark.parametrize("with_requests", [True, False])
def test_batch_size_auto_probes_the_sliced_path(tiny_model_dir, monkeypatch, with_requests):
    """Room for 8 rows of activations and 2 windows of full logits: HFLM's probe (full logits) settles on
    2; ctx-hf's on what sliced scoring holds (limited by the activations alone), and its passes run the
    sliced scorer on each row's scored positions."""
    lm = CtxHFLM(pretrained=str(tiny_model_dir("llama")), device="cpu", batch_size="auto", max_length=32,
                 max_batch_size=16)
    budget = Budget(lm, batch=8, logits=2 * 32 * lm.model.config.vocab_size)
    monkeypatch.setattr(lm.model.model.embed_tokens, "forward", budget.embed_forward)
    monkeypatch.setattr(lm.model.lm_head, "forward", budget.head_forward)
    sliced = []
    original = scoring.sliced_logprobs
    monkeypatch.setattr(scoring, "sliced_logprobs", lambda *a, **k: sliced.append(a[1].shape) or original(*a, **k))
    rng = random.Random(1)
    # 10 + 23 tokens: the rows read 32 (the window), score 23
    requests = [(None, [rng.randrange(4, 100) for _ in range(10)], [rng.randrange(4, 100) for _ in range(23)])]
    args = (requests, 0) if with_requests else ()
    assert HFLM._detect_batch_size(lm, *args) == largest_batch_tried(16, lambda b: b * 32 <= 2 * 32) == 2
    assert not sliced  # lm-eval's own probe: sized by full logits
    assert lm._detect_batch_size(*args) == largest_batch_tried(16, lambda b: b <= 8) > 2
    assert sliced and {shape[0] for shape in sliced} == {23 if with_requests else 32}
    assert lm._probe is None  # the forward pass is HFLM's again after the probe
    assert lm._model_call(torch.ones((1, 8), dtype=torch.long)).shape == (1, 8, lm.model.config.vocab_size)


def test_batch_size_auto_scores_with_the_probed_size(tiny_model_dir, monkeypatch):
    """Through lm-eval's batching: the probed size is the one the batches run with, and the answers are right."""
    lm = CtxHFLM(pretrained=str(tiny_model_dir("llama")), device="cpu", batch_size="auto", max_length=64,
                 max_batch_size=8)
    budget = Budget(lm, batch=2, logits=10 ** 12)
    monkeypatch.setattr(lm.model.model.embed_tokens, "forward", budget.embed_forward)
    rng = random.Random(2)
    requests = [(None, [rng.randrange(4, 100) for _ in range(10)], [rng.randrange(4, 100) for _ in range(20 + i)])
                for i in range(5)]
    got = [total for total, _ in lm._loglikelihood_tokens(requests, disable_tqdm=True)]
    assert lm.batch_sizes == {0: 2}
    monkeypatch.undo()
    assert got == pytest.approx(reference_scores(lm.model, requests), rel=1e-5)
