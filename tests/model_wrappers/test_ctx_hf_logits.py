"""ctx-hf's logits against independently built references, for every method and architecture.

References: for RoPE, transformers' own rope types configured by hand (and rope_theta
scaled by the NTK formula); for ALiBi, slopes computed here from docs/methods.md (Press et
al. 2021, arXiv 2108.12409, and NTK-ALiBi as cited there) and put in place of transformers'
slope function while the reference model runs.
"""

import math
from unittest import mock

import pytest
import torch
import transformers
from transformers.models.bloom import modeling_bloom
from transformers.models.falcon import modeling_falcon
from transformers.models.mpt import modeling_mpt

from lmeval_ctx.model_wrappers.ctx_hf import CtxHFLM

TRAINED = 128  # the tiny models' trained length
LENGTH = 300  # evaluated length, past it
TOL = dict(rtol=0, atol=1e-5)


def ctx_hf(folder, **kwargs) -> CtxHFLM:
    return CtxHFLM(pretrained=str(folder), device="cpu", dtype="float32", **kwargs)


def random_ids(length=LENGTH, batch=2, seed=1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, 100, (batch, length), generator=g)


def reference_model(folder, **config_changes):
    config = transformers.AutoConfig.from_pretrained(folder)
    for key, value in config_changes.items():
        setattr(config, key, value)
    return transformers.AutoModelForCausalLM.from_pretrained(folder, config=config, dtype=torch.float32).eval()


@torch.no_grad()
def logits(model, ids, **kwargs):
    return model(ids, **kwargs).logits


# ---------------------------------------------------------------- RoPE
ROPE_ARCHS = {
    # name: (rope_theta, rotary dimension per head, extra rope_parameters)
    "llama": (10000.0, 16, {}),
    "qwen2": (10000.0, 16, {}),
    "gpt_neox": (10000.0, 4, {"partial_rotary_factor": 0.25}),  # rotates 25% of a 16-wide head
    "phi3": (10000.0, 16, {"partial_rotary_factor": 1.0}),
}


def rope_reference_parameters(method: str, factor: float, theta: float, d: int, extra: dict) -> dict:
    if method == "pi":
        return {**extra, "rope_type": "linear", "rope_theta": theta, "factor": factor}
    if method == "ntk":
        return {**extra, "rope_type": "default", "rope_theta": theta * factor ** (d / (d - 2))}
    if method == "dynamic_ntk":
        return {**extra, "rope_type": "dynamic", "rope_theta": theta, "factor": factor}
    if method == "yarn":
        return {**extra, "rope_type": "yarn", "rope_theta": theta, "factor": factor,
                "original_max_position_embeddings": TRAINED}
    raise AssertionError(method)


@pytest.mark.parametrize("arch", sorted(ROPE_ARCHS))
@pytest.mark.parametrize("method", ["pi", "ntk", "dynamic_ntk", "yarn"])
def test_rope_logits_match_reference(tiny_model_dir, arch, method):
    folder = tiny_model_dir(arch)
    factor = 4.0
    lm = ctx_hf(folder, scaling=method, factor=factor)
    assert lm.max_length == TRAINED * factor
    theta, d, extra = ROPE_ARCHS[arch]
    reference = reference_model(folder, rope_parameters=rope_reference_parameters(method, factor, theta, d, extra))
    plain = reference_model(folder)
    ids = random_ids()
    ours = lm._model_call(ids)
    torch.testing.assert_close(ours, logits(reference, ids), **TOL)
    assert (ours - logits(plain, ids)).abs().max() > 1e-3, "the method changed nothing"


def test_yarn_options_reach_the_model(tiny_model_dir):
    folder = tiny_model_dir("llama")
    lm = ctx_hf(folder, scaling="yarn", factor=4, beta_fast=16, beta_slow=2, attention_factor=1.3)
    reference = reference_model(folder, rope_parameters={
        "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": TRAINED,
        "beta_fast": 16.0, "beta_slow": 2.0, "attention_factor": 1.3})
    ids = random_ids()
    torch.testing.assert_close(lm._model_call(ids), logits(reference, ids), **TOL)
    assert lm.model.model.rotary_emb.attention_scaling == pytest.approx(1.3)


def test_scaling_none_is_the_plain_model(tiny_model_dir):
    folder = tiny_model_dir("llama")
    lm = ctx_hf(folder)
    ids = random_ids(100)
    torch.testing.assert_close(lm._model_call(ids), logits(reference_model(folder), ids), rtol=0, atol=0)


# ---------------------------------------------------------------- ALiBi
def reference_slopes(method: str, heads: int, a: float) -> list[float]:
    """docs/methods.md, written out independently: m_h = 2^(-8h/H) for H a power of two."""
    assert heads & (heads - 1) == 0
    m = [2 ** (-8 * h / heads) for h in range(1, heads + 1)]
    if method == "pi":
        return [x / a for x in m]
    if method in ("ntk", "dynamic_ntk"):
        return [1 / (2 ** (8 * h / heads) * a ** ((h - 1) / (heads - 1))) for h in range(1, heads + 1)]
    raise AssertionError(method)


def reference_factor(method: str, factor: float, length: int) -> float:
    return max(1.0, length / TRAINED) if method == "dynamic_ntk" else factor


def bloom_reference_slopes(slopes):
    return lambda num_heads, device: torch.tensor(slopes, dtype=torch.float32, device=device)


def mpt_reference_bias(slopes):
    def build(num_heads, sequence_length, alibi_bias_max=8, device=None):
        distance = torch.arange(1 - sequence_length, 1, device=device, dtype=torch.float32)
        return torch.tensor(slopes, dtype=torch.float32, device=device)[:, None, None] * distance[None, None, :]

    return build


def falcon_reference_bias(slopes):
    def build(attention_mask, num_heads, dtype):
        positions = ((attention_mask.cumsum(-1) - 1) * attention_mask)[:, None, :]
        bias = torch.tensor(slopes, device=attention_mask.device)[None, :, None].bfloat16() * positions
        return bias.reshape(-1, 1, attention_mask.shape[1]).to(dtype)

    return build


ALIBI_ARCHS = {
    # name: (module, function, reference builder, ctx-hf extra args)
    "bloom": (modeling_bloom, "_get_alibi_slopes", bloom_reference_slopes, {"original_max_length": TRAINED}),
    "mpt": (modeling_mpt, "build_mpt_alibi_tensor", mpt_reference_bias, {}),
    "falcon_alibi": (modeling_falcon, "build_alibi_tensor", falcon_reference_bias, {}),
}


@pytest.mark.parametrize("arch", sorted(ALIBI_ARCHS))
@pytest.mark.parametrize("method", ["pi", "ntk", "dynamic_ntk"])
@pytest.mark.parametrize("with_mask", [False, True])
def test_alibi_logits_match_reference(tiny_model_dir, arch, method, with_mask):
    folder = tiny_model_dir(arch)
    module, function, reference_builder, extra = ALIBI_ARCHS[arch]
    factor = 4.0
    # dynamic NTK-ALiBi takes no factor (its scale is each input's length over the trained one): the same window
    scale = {"max_length": int(TRAINED * factor)} if method == "dynamic_ntk" else {"factor": factor}
    lm = ctx_hf(folder, scaling=method, **scale, **extra)
    ids = random_ids()
    kwargs = {"attention_mask": torch.ones_like(ids)} if with_mask else {}
    ours = logits(lm.model, ids, **kwargs)

    changes = {"max_seq_len": int(TRAINED * factor)} if arch == "mpt" else {}  # MPT: bias for the window
    reference = reference_model(folder, **changes)
    slopes = reference_slopes(method, 8, reference_factor(method, factor, LENGTH))
    with mock.patch.object(module, function, reference_builder(slopes)):
        expected = logits(reference, ids, **kwargs)
    torch.testing.assert_close(ours, expected, **TOL)
    assert (ours - logits(reference, ids, **kwargs)).abs().max() > 1e-4, "the method changed nothing"


def test_bloom_left_padded_batch_matches_reference(tiny_model_dir):
    folder = tiny_model_dir("bloom")
    lm = ctx_hf(folder, scaling="ntk", factor=4, original_max_length=TRAINED)
    ids = random_ids()
    mask = torch.ones_like(ids)
    mask[1, :37] = 0  # second row left-padded
    reference = reference_model(folder)
    with mock.patch.object(modeling_bloom, "_get_alibi_slopes", bloom_reference_slopes(reference_slopes("ntk", 8, 4.0))):
        expected = logits(reference, ids, attention_mask=mask)
    torch.testing.assert_close(logits(lm.model, ids, attention_mask=mask), expected, **TOL)


def test_bloom_non_power_of_two_heads_use_ranked_ntk(tiny_model_dir):
    folder = tiny_model_dir("bloom_6_heads")
    lm = ctx_hf(folder, scaling="ntk", factor=3, original_max_length=TRAINED)
    base = [2 ** (-8 * h / 4) for h in range(1, 5)] + [2 ** (-8 * (2 * k - 1) / 8) for k in range(1, 3)]
    order = sorted(range(6), key=lambda h: -base[h])
    rank = {h: r for r, h in enumerate(order)}
    slopes = [base[h] * 3 ** (-rank[h] / 5) for h in range(6)]
    assert lm.get_model_info()["context_extension"]["alibi_slopes"] == pytest.approx(slopes)
    reference = reference_model(folder)
    ids = random_ids()
    with mock.patch.object(modeling_bloom, "_get_alibi_slopes", bloom_reference_slopes(slopes)):
        expected = logits(reference, ids)
    torch.testing.assert_close(lm._model_call(ids), expected, **TOL)


def test_mpt_runs_past_its_max_seq_len_with_scaling_none(tiny_model_dir):
    folder = tiny_model_dir("mpt")
    lm = ctx_hf(folder, max_length=512)
    assert lm.model.config.max_seq_len == 512
    ids = random_ids()
    torch.testing.assert_close(lm._model_call(ids), logits(reference_model(folder, max_seq_len=512), ids), **TOL)


def test_alibi_patch_leaves_other_models_untouched(tiny_model_dir):
    ids = random_ids()
    for arch in ALIBI_ARCHS:
        folder = tiny_model_dir(arch)
        changes = {"max_seq_len": 512} if arch == "mpt" else {}
        plain = reference_model(folder, **changes)
        before = logits(plain, ids)
        extra = ALIBI_ARCHS[arch][3]
        scaled = ctx_hf(folder, scaling="ntk", factor=4, **extra)
        after = logits(plain, ids)  # same process, dispatcher now installed
        torch.testing.assert_close(after, before, rtol=0, atol=0)
        second = reference_model(folder, **changes)  # a model built after the patch
        torch.testing.assert_close(logits(second, ids), before, rtol=0, atol=0)
        assert (logits(scaled.model, ids) - before).abs().max() > 1e-4


# ---------------------------------------------------------------- generation with a KV cache
@pytest.mark.parametrize("arch, method, extra", [
    ("llama", "pi", {}), ("llama", "ntk", {}), ("llama", "yarn", {}), ("gpt_neox", "ntk", {}),
    ("bloom", "pi", {"original_max_length": TRAINED}), ("bloom", "ntk", {"original_max_length": TRAINED}),
    ("mpt", "ntk", {}), ("falcon_alibi", "ntk", {}),
])
def test_cached_generation_agrees_with_full_forward(tiny_model_dir, arch, method, extra):
    lm = ctx_hf(tiny_model_dir(arch), scaling=method, factor=4, **extra)
    prompt = random_ids(LENGTH, batch=1)
    with torch.no_grad():
        out = lm.model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, do_sample=False,
                                output_logits=True, return_dict_in_generate=True, pad_token_id=3)
    step_logits = torch.stack(out.logits, dim=1)[0]  # (new tokens, vocab)
    full = logits(lm.model, out.sequences[:, :-1])[0, LENGTH - 1:]
    torch.testing.assert_close(step_logits, full, rtol=0, atol=1e-4)


def test_settings_are_recorded_for_the_results_json(tiny_model_dir):
    lm = ctx_hf(tiny_model_dir("gpt_neox"), scaling="ntk", factor=2)
    record = lm.get_model_info()["context_extension"]
    assert record["scaling"] == "ntk" and record["factor"] == 2.0
    assert record["original_max_length"] == TRAINED and record["max_length"] == 2 * TRAINED
    assert record["rope_parameters"]["rope_theta"] == pytest.approx(10000 * 2 ** (4 / 2))
    assert record["rope_parameters"]["partial_rotary_factor"] == 0.25
    assert math.isclose(lm.model.config.rope_parameters["rope_theta"], record["rope_parameters"]["rope_theta"])
