"""Attention-level methods and log-n scaling on tiny Llama, Qwen2 and GPT-NeoX (partial rotary)
models: logits against a brute-force reference built here from each paper's definition, the
identities, padding, KV-cache decoding, and scoping to the scaled model."""

import copy
import functools
import math

import pytest
import torch
import transformers
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from lmeval_ctx.extension.attention import patch as attention_patch
from lmeval_ctx.extension.lifecycle import extend
from lmeval_ctx.extension.rope.rotary import rotary_modules
from tiny_models import CONFIGS

ARCHS = ("llama", "qwen2", "gpt_neox")  # GPT-NeoX rotates 4 of 16 dimensions per head
ORIGINAL = 48  # original_max_length passed to the methods, so the tiny inputs reach past it
LENGTH, PAD = 72, 9
IDS = torch.randint(4, 99, (2, LENGTH), generator=torch.Generator().manual_seed(3))

# The definitions, from the papers (docs/attention_methods.md): relative position of query i and
# key j, and which keys are visible. i, j: (Q, 1) and (1, K) tensors of positions.


def rel_rerope(i, j, o):
    return torch.minimum(i - j, torch.tensor(o["window"]))


def rel_leaky_rerope(i, j, o):
    d = (i - j).double()
    return torch.where(d < o["window"], d, o["window"] + (d - o["window"]) / o["leak"])


def rel_self_extend(i, j, o):
    g, w = o["group_size"], o["neighbor_window"]
    return torch.where(i - j < w, i - j, i // g - j // g + w - w // g)


def rel_lm_infinite(i, j, o):
    return torch.minimum(i - j, torch.tensor(ORIGINAL))


def visible_lm_infinite(i, j, o):
    return ((i - j) < o["local_window"]) | (j < o["global_tokens"])


def rel_dual_chunk(i, j, o):
    """DCA: query at i mod s (same chunk), s + i mod s or c - 1 (the chunk before: the first
    local_window queries of a chunk or the rest), c - 1 (earlier); key at j mod s."""
    c = o["original_max_length"]
    s, w = c * 3 // 4, o["local_window"]  # the default chunk size
    apart = i // s - j // s
    succ = torch.where(i % s < w, s + i % s, torch.tensor(c - 1))
    query = torch.where(apart == 0, i % s, torch.where(apart == 1, succ, torch.tensor(c - 1)))
    return query - j % s


CASES = {
    "rerope": (dict(window=20), rel_rerope, None),
    "leaky_rerope": (dict(window=20, leak=3.0), rel_leaky_rerope, None),
    "self_extend": (dict(group_size=3, neighbor_window=16), rel_self_extend, None),
    "lm_infinite": (dict(global_tokens=4, local_window=30), rel_lm_infinite, visible_lm_infinite),
    # a trained length of 24 puts the 72 tokens in four chunks of the default 18 (3/4 of it)
    "dual_chunk": (dict(original_max_length=24, local_window=3), rel_dual_chunk, None),
    "none": ({}, lambda i, j, o: i - j, None),  # with logn=true below
}


@functools.cache
def _built(arch: str):
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(CONFIGS[arch](), dtype=torch.float32).eval()


def tiny(arch: str):
    """A fresh copy of the tiny ``arch`` model (random weights, built once)."""
    return copy.deepcopy(_built(arch))


def padded_inputs(padded: bool):
    """The two rows of IDS, the second left-padded by PAD tokens when ``padded``; positions as
    ``generate`` assigns them (cumulative count of real tokens, from 0)."""
    ids = IDS.clone()
    mask = torch.ones_like(ids)
    if padded:
        ids[1, :PAD] = 3
        mask[1, :PAD] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions


def rotate_pairs(x, rel, inv_freq):
    """x: (b, h, Q, d) queries; rel: (b, Q, K) relative positions -> (b, h, Q, K, d): each query
    rotated by each pair's relative position (rotate-half layout on 2*len(inv_freq) dims)."""
    half = inv_freq.numel()
    angle = rel.double()[..., None] * inv_freq.double()  # (b, Q, K, half)
    cos, sin = angle.cos()[:, None].float(), angle.sin()[:, None].float()
    x = x[:, :, :, None, :].expand(-1, -1, -1, rel.shape[-1], -1)
    a, b, rest = x[..., :half], x[..., half:2 * half], x[..., 2 * half:]
    return torch.cat((a * cos - b * sin, b * cos + a * sin, rest), dim=-1)


class Reference:
    """Brute-force attention: the model's rotary embedding made the identity, so the attention
    function gets unrotated queries and keys; each query is then rotated by every pair's relative
    position from the definition (keys stay at 0), scores masked and softmaxed in full."""

    NAME = "lmeval_ctx_test_reference"

    def __init__(self, model, rel, visible, options, logn: bool):
        self.rel, self.visible, self.options, self.logn = rel, visible, options, logn
        (_, rotary), = rotary_modules(model)
        self.inv_freq = rotary.inv_freq.clone()
        rotary.forward = lambda x, position_ids: (torch.ones(*position_ids.shape, 2 * self.inv_freq.numel()),
                                                  torch.zeros(*position_ids.shape, 2 * self.inv_freq.numel()))
        AttentionInterface.register(self.NAME, self.attention)
        AttentionMaskInterface.register(self.NAME, sdpa_mask)
        model.config._attn_implementation = self.NAME

    def attention(self, module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        positions = kwargs["position_ids"].expand(query.shape[0], -1)  # no cache: keys = queries
        i, j = positions[:, :, None], positions[:, None, :]
        heads = query.shape[1]
        key = key.repeat_interleave(heads // key.shape[1], 1)
        value = value.repeat_interleave(heads // value.shape[1], 1)
        if self.logn:
            count = positions.double() + 1
            scale = torch.where(count > ORIGINAL, count.log() / math.log(ORIGINAL), torch.ones_like(count))
            query = query * scale[:, None, :, None].float()
        rotated = rotate_pairs(query, self.rel(i, j, self.options), self.inv_freq)
        scores = (rotated * key[:, :, None]).sum(-1) * scaling
        allowed = attention_mask if attention_mask is not None else torch.ones_like(scores, dtype=torch.bool).tril()
        if self.visible is not None:
            allowed = allowed & self.visible(i, j, self.options)[:, None]
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        return (scores.softmax(-1) @ value).transpose(1, 2).contiguous(), None


def with_method(arch, method, options, logn=False):
    model = tiny(arch)
    extend(model.config, {"scaling": method, "original_max_length": ORIGINAL, "logn": logn or None, **options},
           model=model)
    return model


def run(model, padded):
    ids, mask, positions = padded_inputs(padded)
    with torch.no_grad():
        return model(ids, attention_mask=mask, position_ids=positions).logits


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", list(CASES))
def test_logits_match_the_definition(arch, method):
    options, rel, visible = CASES[method]
    logn = method == "none"
    model = with_method(arch, method, options, logn=logn)
    assert model.config._attn_implementation == attention_patch.IMPLEMENTATION
    reference = tiny(arch)
    Reference(reference, rel, visible, options, logn)
    for padded in (False, True):
        got, want = run(model, padded), run(reference, padded)
        real = padded_inputs(padded)[1].bool()
        torch.testing.assert_close(got[real], want[real], atol=1e-5, rtol=0)
    # the padded row's real tokens score as the same tokens alone
    ids, _, _ = padded_inputs(True)
    with torch.no_grad():
        alone = model(ids[1:, PAD:]).logits[0]
    torch.testing.assert_close(run(model, True)[1, PAD:], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_identities_equal_none_exactly(arch):
    """Inside the trained length (128): group size 1, a ReRoPE window and an LM-Infinite local
    window at least the length, and DCA's default chunk (96) longer than the input, change no
    pair, and the logits are none's, bit for bit."""
    plain = tiny(arch)
    for request in (dict(scaling="self_extend", group_size=1, neighbor_window=8),
                    dict(scaling="rerope", window=LENGTH),
                    dict(scaling="lm_infinite", local_window=LENGTH),
                    dict(scaling="dual_chunk", local_window=2)):
        model = tiny(arch)
        extend(model.config, request, model=model)
        assert model.config._attn_implementation == attention_patch.IMPLEMENTATION
        for padded in (False, True):
            assert torch.equal(run(model, padded), run(plain, padded)), (request, padded)


@pytest.mark.parametrize("method, arch", [("rerope", "llama"), ("leaky_rerope", "qwen2"), ("self_extend", "gpt_neox"),
                                          ("lm_infinite", "llama"), ("dual_chunk", "qwen2"),
                                          ("dual_chunk", "gpt_neox"), ("none", "gpt_neox")])
def test_kv_cache_decoding_equals_a_full_forward(arch, method):
    """A prefill past the trained length, then one token at a time from the cache (which holds
    keys at their true positions), gives the full forward's logits; log-n scaling on throughout."""
    model = with_method(arch, method, CASES[method][0], logn=True)
    ids, prefill = IDS[:1], LENGTH - 8
    with torch.no_grad():
        full = model(ids).logits[0]
        out = model(ids[:, :prefill], use_cache=True)
        steps = [out.logits[0, -1]]
        for t in range(prefill, LENGTH - 1):
            out = model(ids[:, t:t + 1], cache=out.past_key_values, use_cache=True)
            steps.append(out.logits[0, -1])
    torch.testing.assert_close(torch.stack(steps), full[prefill - 1:LENGTH - 1], atol=1e-5, rtol=0)


def test_generate_with_left_padding_equals_unpadded():
    model = with_method("llama", "self_extend", CASES["self_extend"][0])
    ids, mask, _ = padded_inputs(True)
    settings = dict(max_new_tokens=6, do_sample=False, pad_token_id=3)
    with torch.no_grad():
        batched = model.generate(ids, attention_mask=mask, **settings)
        alone = model.generate(ids[1:, PAD:], **settings)
    assert torch.equal(batched[1, LENGTH:], alone[0, LENGTH - PAD:])


def test_only_the_scaled_model_changes_and_none_restores():
    scaled, other = with_method("llama", "rerope", dict(window=20)), tiny("llama")
    assert other.config._attn_implementation == "sdpa"
    before = run(other, False)
    extend(scaled.config, {"scaling": "none"}, model=scaled)
    assert scaled.config._attn_implementation == "sdpa" and not attention_patch.installed(scaled)
    torch.testing.assert_close(run(scaled, False), before, atol=0, rtol=0)


def test_ctx_hf_runs_a_method_records_it_and_reapplies(tiny_model_dir):
    """Through ctx-hf from a saved checkpoint: the same logits as the method applied to the loaded
    model here, recorded; re-applying none gives the model its own attention back."""
    from lmeval_ctx.model_wrappers.ctx_hf import CtxHFLM

    folder = tiny_model_dir("llama")
    options = dict(group_size=3, neighbor_window=16)
    lm = CtxHFLM(pretrained=str(folder), device="cpu", dtype="float32", scaling="self_extend",
                 original_max_length=ORIGINAL, max_length=96, logn="true", **options)
    record = lm.context_extension_record
    assert record["scaling"] == "self_extend" and record["factor"] is None and record["max_length"] == 96
    assert record["options"] == {**options, "logn": True}
    assert record["attention"]["method"] == "self_extend" and record["attention"]["layers"] == [0, 1]
    loaded = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    plain = run(loaded, True)
    extend(loaded.config, {"scaling": "self_extend", "original_max_length": ORIGINAL, "logn": True, **options},
           model=loaded)
    torch.testing.assert_close(run(lm.model, True), run(loaded, True), atol=0, rtol=0)
    lm.apply_extension("none", logn=None)
    assert lm.model.config._attn_implementation == "sdpa" and "attention" not in lm.context_extension_record
    torch.testing.assert_close(run(lm.model, True), plain, atol=0, rtol=0)


def test_sliding_window_layers_keep_their_attention():
    """Qwen2 with a sliding window (16 <= the trained length) in layer 1: that layer keeps SDPA
    with its sliding mask, layer 0 (full attention) gets the method."""
    config = CONFIGS["qwen2"]()
    config.sliding_window, config.layer_types = 16, ["full_attention", "sliding_attention"]
    assert config.layer_types == ["full_attention", "sliding_attention"]
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    plain = copy.deepcopy(model)
    state = extend(model.config, {"scaling": "rerope", "window": 20, "original_max_length": ORIGINAL}, model=model)
    attention = state.record["attention"]
    assert attention["layers"] == [0] and list(attention["kept_layer_types"]) == ["sliding_attention"]
    assert attention_patch.SETTING_ATTRIBUTE not in model.model.layers[1].self_attn.__dict__
    # the kept layer runs as before: with the method on layer 0 only, the output differs from
    # the plain model's, and equals it once layer 0's setting is taken off too
    assert not torch.allclose(run(model, False), run(plain, False), atol=1e-4)
    del model.model.layers[0].self_attn.__dict__[attention_patch.SETTING_ATTRIBUTE]
    torch.testing.assert_close(run(model, False), run(plain, False), atol=0, rtol=0)


@pytest.mark.parametrize("split", (True, False), ids=("split-cpu-kernel", "joined-sdpa"))
@pytest.mark.parametrize("arch", ("llama", "gpt_neox"))
@pytest.mark.parametrize("method", [m for m in CASES if m != "none"])
def test_small_query_blocks_match_the_definition(arch, method, split, monkeypatch):
    """Blocks of 5 queries: the 72 tokens span many blocks, and the keys near for some of a block's
    rows and far for others (each taken twice, once per rotation) fall inside blocks; the logits
    still match the brute-force reference, padded rows included, on both block paths (runs merged
    by log-sum-exp on CPU, one joined SDPA call elsewhere)."""
    monkeypatch.setattr(attention_patch, "BLOCK_ROWS", 5)
    monkeypatch.setattr(attention_patch, "SPLIT_ON_CPU", split)
    options, rel, visible = CASES[method]
    model = with_method(arch, method, options)
    reference = tiny(arch)
    Reference(reference, rel, visible, options, logn=False)
    for padded in (False, True):
        real = padded_inputs(padded)[1].bool()
        torch.testing.assert_close(run(model, padded)[real], run(reference, padded)[real], atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["self_extend", "lm_infinite"])
def test_an_additive_float_mask_equals_the_boolean_one(method):
    """A 4D float mask (0 where a pair takes part, the dtype's lowest elsewhere), passed to the
    model as transformers passes a prepared mask through, gives the boolean padding mask's logits."""
    model = with_method("llama", method, CASES[method][0])
    ids, mask, positions = padded_inputs(True)
    allowed = torch.ones(LENGTH, LENGTH, dtype=torch.bool).tril()[None, None] & mask.bool()[:, None, None, :]
    additive = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    with torch.no_grad():
        got = model(ids, attention_mask=additive, position_ids=positions).logits
    real = mask.bool()
    torch.testing.assert_close(got[real], run(model, True)[real], atol=1e-5, rtol=0)


def test_half_precision_is_computed_in_float32():
    """bfloat16 queries, keys and values give the float32 computation's output, rounded once."""
    model = with_method("qwen2", "rerope", CASES["rerope"][0])
    module = attention_patch.attention_modules(model)[0]
    generator = torch.Generator().manual_seed(5)
    query, key, value = (torch.randn(1, heads, LENGTH, 16, generator=generator).to(torch.bfloat16)
                         for heads in (4, 2, 2))
    call = functools.partial(attention_patch.method_attention, module, attention_mask=None, scaling=0.25,
                             position_ids=torch.arange(LENGTH)[None])
    half, _ = call(query, key, value)
    full, _ = call(query.float(), key.float(), value.float())
    assert half.dtype == torch.bfloat16
    assert torch.equal(half, full.to(torch.bfloat16))
