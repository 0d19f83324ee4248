"""LM-Infinite on ALiBi models (BLOOM, MPT, Falcon-ALiBi) against its definition.

LM-Infinite (Han et al. 2023, arXiv:2308.16137): key j is visible to query i iff
``j < global_tokens`` or ``i - j < local_window``, and the ALiBi bias is
``-m_h * min(i - j, L)`` with the model's own slopes. The reference here is written from
that definition alone: a dense ``batch x heads x queries x keys`` bias and mask, softmax,
values; it replaces the blocked core inside the model's attention forward, so the two runs
share the projections (tested against transformers in test_alibi_attention.py) and
differ in everything LM-Infinite adds: the mask, the ceiling, the positions under padding,
the blocking and the keys left out of a block.

Positions count real tokens (left padding does not move a token), as BLOOM and Falcon count
their ALiBi positions. Lengths stay under 256: Falcon rounds slope x position to bfloat16,
which is exact there for its power-of-two slopes.
"""

import math
from unittest import mock

import pytest
import torch
import transformers

from lmeval_ctx.extension.alibi import attention as alibi_attention
from lmeval_ctx.extension.alibi.install import install_alibi_scaling
from lmeval_ctx.extension.alibi.scaling import AlibiScaling
from lmeval_ctx.extension.request import resolve_extension
from lmeval_ctx.methods.alibi import alibi_slopes, mpt_alibi_slopes

ARCHS = ("bloom", "mpt", "falcon_alibi")
LENGTH = 240
TRAINED = 64  # L, the distance ceiling (below the tiny models' 128, so short inputs reach past it)
# (global_tokens, local_window): the window inside the ceiling (the paper's shape, only the global
# tokens are capped) and beyond it (local keys capped too)
SETTINGS = {"window inside L": (4, 48), "window beyond L": (3, 150)}
TOL = dict(rtol=0, atol=1e-4)


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setattr(alibi_attention, "MAX_BLOCK_ROWS", 32)


def lm_infinite(global_tokens: int, local_window: int, original_length: int = TRAINED) -> AlibiScaling:
    return AlibiScaling("lm_infinite", None, original_length,
                        {"global_tokens": global_tokens, "local_window": local_window})


@pytest.fixture(scope="module")
def models(tiny_model_dir):
    """One blocked model per architecture; each test installs the scaling it needs."""
    loaded = {}

    def get(arch: str, scaling: AlibiScaling):
        if arch not in loaded:
            loaded[arch] = transformers.AutoModelForCausalLM.from_pretrained(
                str(tiny_model_dir(arch)), dtype=torch.float32).eval()
        install_alibi_scaling(loaded[arch], scaling, attention="blocks")
        return loaded[arch]

    return get


def effective_slopes(config) -> torch.Tensor:
    """Each head's slope in the units its bias is added to the scaled scores."""
    if config.model_type == "bloom":
        return torch.tensor(alibi_slopes(config.n_head))
    if config.model_type == "mpt":
        return torch.tensor(mpt_alibi_slopes(config.n_heads, config.attn_config.alibi_bias_max))
    head_dim = config.hidden_size // config.num_attention_heads  # Falcon: alibi / sqrt(head_dim)
    return torch.tensor(alibi_slopes(config.num_attention_heads)).bfloat16().float() / math.sqrt(head_dim)


def definition_core(slopes, padding, global_tokens, local_window, original_length):
    """A stand-in for the blocked core: dense attention with LM-Infinite's bias and mask."""

    def core(query, key, value, key_bias, mask, scale, position_method=None):
        keys, queries = key.shape[-2], query.shape[-2]
        real = torch.ones(query.shape[0], keys, dtype=torch.bool) if padding is None else padding.bool()
        position = real.long().cumsum(-1) - 1  # (batch, keys): real tokens before each key
        index = torch.arange(keys)
        query_index = index[keys - queries:]
        i, j = position[:, keys - queries:, None], position[:, None, :]  # (batch, queries, keys)
        distance = i - j
        allowed = ((index[None, :] <= query_index[:, None])[None] & real[:, None, :]
                   & ((j < global_tokens) | (distance < local_window)))
        bias = -slopes[None, :, None, None] * distance.clamp(max=original_length)[:, None].float()
        scores = (query @ key.transpose(-1, -2)) * scale + bias  # (batch, heads, queries, keys)
        scores = scores.masked_fill(~allowed[:, None], -math.inf)
        weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # padding query rows: no key
        return weights @ value

    return core


def random_ids(length=LENGTH, batch=2, seed=1) -> torch.Tensor:
    return torch.randint(4, 100, (batch, length), generator=torch.Generator().manual_seed(seed))


def left_padded(ids: torch.Tensor, pad: int = 37) -> torch.Tensor:
    mask = torch.ones_like(ids)
    mask[1, :pad] = 0
    return mask


@torch.no_grad()
def logits(model, ids, mask=None):
    return model(ids, attention_mask=mask).logits


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("setting", SETTINGS)
def test_logits_equal_the_definition(models, monkeypatch, arch, setting):
    global_tokens, local_window = SETTINGS[setting]
    model = models(arch, lm_infinite(global_tokens, local_window))
    ids = random_ids()
    mask = left_padded(ids)
    ours = logits(model, ids, mask)
    unchanged = logits(models(arch, AlibiScaling("none", None, TRAINED)), ids, mask)
    models(arch, lm_infinite(global_tokens, local_window))
    monkeypatch.setattr(alibi_attention, "blocked_alibi_attention", definition_core(
        effective_slopes(model.config), mask, global_tokens, local_window, TRAINED))
    expected = logits(model, ids, mask)
    real = mask.bool()
    torch.testing.assert_close(ours[real], expected[real], **TOL)
    # the method moves the logits by more than the tolerance of the comparison
    assert (ours[real] - unchanged[real]).abs().max() > 2 * TOL["atol"], "lm_infinite changed nothing"


@pytest.mark.parametrize("arch", ARCHS)
def test_a_window_and_ceiling_past_the_input_change_nothing(models, arch):
    ids = random_ids()
    mask = left_padded(ids)
    expected = logits(models(arch, AlibiScaling("none", None, TRAINED)), ids, mask)
    ours = logits(models(arch, lm_infinite(2, LENGTH, original_length=LENGTH)), ids, mask)
    assert torch.equal(ours, expected)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_left_padded_batch_equals_its_rows_one_by_one(models, arch):
    model = models(arch, lm_infinite(*SETTINGS["window beyond L"]))
    ids = random_ids()
    mask = left_padded(ids, pad=50)
    batched = logits(model, ids, mask)
    torch.testing.assert_close(batched[0], logits(model, ids[:1])[0], **TOL)
    torch.testing.assert_close(batched[1, 50:], logits(model, ids[1:, 50:])[0], **TOL)


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_generation_equals_full_forwards(models, arch):
    model = models(arch, lm_infinite(*SETTINGS["window inside L"]))
    prompt = random_ids(200)
    mask = left_padded(prompt, pad=23)
    with torch.no_grad():
        out = model.generate(prompt, attention_mask=mask, max_new_tokens=6, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, pad_token_id=3)
    steps = torch.stack(out.logits, dim=1)  # (batch, new tokens, vocab)
    sequences = out.sequences[:, :-1]
    full_mask = torch.cat([mask, torch.ones(2, sequences.shape[1] - 200, dtype=mask.dtype)], dim=1)
    full = logits(model, sequences, full_mask)[:, 199:]
    torch.testing.assert_close(steps, full, **TOL)


def test_transformers_attention_is_refused(tiny_model_dir):
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tiny_model_dir("bloom")), dtype=torch.float32)
    with pytest.raises(ValueError, match=r"scaling=lm_infinite.*attention_engine=auto.*flex or blocks"):
        install_alibi_scaling(model, lm_infinite(4, 48), attention="transformers")


def test_the_scaling_needs_its_resolved_options():
    with pytest.raises(ValueError, match=r"needs original_length and its resolved options.*missing: local_window"):
        AlibiScaling("lm_infinite", None, TRAINED, {"global_tokens": 4})
    with pytest.raises(ValueError, match=r"local_window=0 must be a whole number >= 1"):
        lm_infinite(4, 0)


def test_resolved_from_the_request_with_the_papers_defaults():
    ext = resolve_extension(transformers.BloomConfig(), scaling="lm_infinite", original_max_length=2048)
    scaling = AlibiScaling.from_extension(ext)
    assert scaling.options == {"global_tokens": 10, "local_window": 2048} and scaling.original_length == 2048
    assert not ext.attention_level  # RoPE's attention patch is not installed on an ALiBi model
    record = ext.record()
    assert record["options"] == {"global_tokens": 10, "local_window": 2048}
    assert record["alibi_positions"]["bias"] == "-slope * min(i - j, 2048)"
    ext = resolve_extension(transformers.MptConfig(max_seq_len=512), scaling="lm_infinite", global_tokens=4,
                            local_window=256)
    assert AlibiScaling.from_extension(ext).options == {"global_tokens": 4, "local_window": 256}


def test_blocks_leave_out_the_keys_no_query_sees(models, monkeypatch):
    """Past the window a block's SDPA call gets the global tokens and the window, not every key."""
    global_tokens, local_window = SETTINGS["window inside L"]
    model = models("bloom", lm_infinite(global_tokens, local_window))
    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recorded(query, key, *args, **kwargs):
        seen.append(key.shape[-2])
        return sdpa(query, key, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recorded)
    logits(model, random_ids(batch=1))
    rows = alibi_attention.MAX_BLOCK_ROWS
    assert len(seen) == 2 * math.ceil(LENGTH / rows)  # 2 layers, one call per block
    assert max(seen) <= global_tokens + local_window - 1 + rows < LENGTH


@pytest.mark.parametrize("arch", ARCHS)
def test_ctx_hf_applies_it_from_model_args(tiny_model_dir, models, arch):
    """``--model_args scaling=lm_infinite,...`` reaches the same attention as installing it by hand."""
    from lmeval_ctx.model_wrappers.ctx_hf import CtxHFLM

    lm = CtxHFLM(pretrained=str(tiny_model_dir(arch)), device="cpu", dtype="float32", scaling="lm_infinite",
                 original_max_length=TRAINED, global_tokens=4, local_window=48, max_length=LENGTH)
    ids = random_ids()
    expected = logits(models(arch, lm_infinite(4, 48)), ids)
    torch.testing.assert_close(logits(lm.model, ids), expected, **TOL)  # ctx-hf: FlexAttention under auto
    record = lm.context_extension_record
    assert record["scaling"] == "lm_infinite"
    assert (record["options"]["global_tokens"], record["options"]["local_window"]) == (4, 48)


def test_ctx_hf_refuses_transformers_attention_before_loading(tiny_model_dir):
    from lmeval_ctx.model_wrappers.ctx_hf import CtxHFLM

    with mock.patch("transformers.AutoModelForCausalLM.from_pretrained") as load:
        with pytest.raises(ValueError, match="attention_engine=auto"):
            CtxHFLM(pretrained=str(tiny_model_dir("bloom")), device="cpu", scaling="lm_infinite",
                    original_max_length=TRAINED, attention_engine="transformers")
    load.assert_not_called()
