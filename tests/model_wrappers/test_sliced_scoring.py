"""ctx-hf scores from sliced logits exactly what it scored from full logits, in less memory."""

import json
import random
import subprocess
import sys
import textwrap

import pytest
import torch
from lm_eval.models.huggingface import HFLM
from transformers import AutoModelForCausalLM

from lmeval_ctx.model_wrappers.ctx_hf import CtxHFLM

ARCHITECTURES = ["llama", "gemma3"]  # gemma3: a soft cap after the output layer
# ctx-hf arguments per model: BLOOM with NTK-ALiBi slopes installed on its decoder
METHODS = {"llama": {}, "gemma3": {}, "bloom": {"scaling": "ntk", "factor": 2, "original_max_length": 32}}


def tokens(rng: random.Random, count: int) -> list[int]:
    return [rng.randrange(4, 100) for _ in range(count)]


def score(lm: CtxHFLM, requests, logits_slice: int) -> list[tuple[float, bool]]:
    lm.logits_slice = logits_slice
    try:
        return lm._loglikelihood_tokens(requests, disable_tqdm=True)
    finally:
        del lm.logits_slice


def greedy_continuation(folder, context: list[int], count: int) -> list[int]:
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    sequence = list(context)
    with torch.no_grad():
        for _ in range(count):
            sequence.append(int(model(torch.tensor([sequence])).logits[0, -1].argmax()))
    return sequence[len(context):]


def assert_same_answers(sliced, full):
    assert [greedy for _, greedy in sliced] == [greedy for _, greedy in full]
    for (got, _), (expected, _) in zip(sliced, full, strict=True):
        assert got == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_loglikelihood_batches_equal_full_logit_scoring(tiny_model_dir, name):
    folder = tiny_model_dir(name)
    lm = CtxHFLM(pretrained=str(folder), dtype="float32", device="cpu", batch_size=3, **METHODS[name])
    rng = random.Random(0)
    # different lengths, so batches are right-padded; multi-token continuations
    requests = [((f"request {i}", ""), tokens(rng, rng.randrange(1, 30)), tokens(rng, rng.randrange(1, 9)))
                for i in range(7)]
    # answer choices of one context: lm-eval runs them as one row
    context = tokens(rng, 12)
    requests += [(("choices", str(i)), context, tokens(rng, 1)) for i in range(4)]
    # a continuation that is the model's own greedy choice
    context = tokens(rng, 10)
    requests.append((("greedy", ""), context, greedy_continuation(folder, context, 3)))
    sliced, full = score(lm, requests, 4), score(lm, requests, 0)
    assert_same_answers(sliced, full)
    assert sliced[-1][1] and not any(greedy for _, greedy in sliced[:-1])
    # and lm-eval's own full-logit scoring, which equals ctx-hf's in float32 (not in half precision,
    # where it sums in bfloat16: tests/model_wrappers/test_half_precision_scoring.py)
    assert_same_answers(sliced, HFLM._loglikelihood_tokens(lm, requests, disable_tqdm=True))


def test_a_shorter_continuation_on_the_same_input_is_scored_at_its_own_positions(tiny_model_dir):
    """(context A B, continuation C) and (context A, continuation B C) feed the model the same tokens,
    so lm-eval scores them from one row. Each is scored at its own tokens' positions; lm-eval's
    full-logit path takes the leading positions of the longer continuation's logits for the shorter."""
    folder = tiny_model_dir("llama")
    lm = CtxHFLM(pretrained=str(folder), dtype="float32", device="cpu", batch_size=2)
    sequence = tokens(random.Random(1), 12)
    requests = [(("short", ""), sequence[:10], sequence[10:]), (("long", ""), sequence[:7], sequence[7:])]
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([sequence[:-1]])).logits[0], dim=-1)
    expected = [float(logprobs[torch.arange(first - 1, 11), sequence[first:]].sum()) for first in (10, 7)]
    assert [got for got, _ in score(lm, requests, 4)] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_shared_prefix_passes_equal_full_logit_scoring(tiny_model_dir, monkeypatch, name):
    folder = tiny_model_dir(name)
    lm = CtxHFLM(pretrained=str(folder), dtype="float32", device="cpu", batch_size=2)
    document = tokens(random.Random(2), 120)
    # one document at three lengths, and a window in its middle: all prefixes of the longest
    requests = [((f"first {n}", ""), document[:1], document[1:n]) for n in (40, 80, 120)]
    requests.append((("middle", ""), document[:60], document[60:100]))
    requests.append((("other", ""), tokens(random.Random(3), 20), tokens(random.Random(4), 5)))
    passes = []
    token_logprobs = lm._token_logprobs

    def counted(*args, **kwargs):
        passes.append(1)
        return token_logprobs(*args, **kwargs)

    monkeypatch.setattr(lm, "_token_logprobs", counted)
    sliced, full = score(lm, requests, 16), score(lm, requests, 0)
    assert len(passes) == 2  # one shared pass each way
    assert_same_answers(sliced, full)


MEASURE = textwrap.dedent("""
    import ctypes, json, sys, torch
    from lmeval_ctx.model_wrappers.ctx_hf import CtxHFLM

    def kib(field):
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field))

    folder, length = sys.argv[1], int(sys.argv[2])
    lm = CtxHFLM(pretrained=folder, dtype="float32", device="cpu", batch_size=1, max_length=length)
    sequence = torch.randint(4, 100, (length + 1,), generator=torch.Generator().manual_seed(0)).tolist()
    request = (None, sequence[:1], sequence[1:])  # every position scored
    growth = {}
    for logits_slice in (128, 0, 128):  # the first run warms up
        lm.logits_slice = logits_slice
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # no freed memory to reuse unseen
        before = kib("VmRSS")
        open("/proc/self/clear_refs", "w").write("5")  # restart the peak (VmHWM) from here
        lm._loglikelihood_tokens([request], disable_tqdm=True)
        growth[logits_slice] = (kib("VmHWM") - before) * 1024
    print(json.dumps(growth))
""")


@pytest.mark.slow
def test_peak_memory_of_a_long_window_stays_below_its_full_logits(tiny_model_dir):
    length = 2048
    folder = tiny_model_dir("llama_32k_vocab")
    logits_bytes = length * 32768 * 4  # batch x length x vocabulary float32: 256 MiB
    run = subprocess.run([sys.executable, "-c", MEASURE, str(folder), str(length)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    growth = {int(k): v for k, v in json.loads(run.stdout.strip().splitlines()[-1]).items()}
    assert growth[0] > logits_bytes  # the measure sees full logits
    assert growth[128] < logits_bytes / 2
