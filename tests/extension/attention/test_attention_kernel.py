"""The attention-level methods' attention computation (lmeval_ctx.extension.attention.kernel) on
tiny Llama, Qwen2 and GPT-NeoX (partial rotary) models: logits against a brute-force reference
built from each paper's definition, the identities, padding, KV-cache decoding, both block paths
and half precision."""

import functools

import pytest
import torch
from attention_reference import (
    cached_decoding,
    ARCHS,
    CASES,
    IDS,
    LENGTH,
    PAD,
    Reference,
    padded_inputs,
    run,
    tiny,
    with_method,
)

from lmeval_ctx.extension.attention import function as attention_function
from lmeval_ctx.extension.attention import kernel as attention_kernel
from lmeval_ctx.extension.attention import patch as attention_patch
from lmeval_ctx.extension.lifecycle import extend


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
    steps, full = cached_decoding(model, LENGTH - 8)
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=0)


def test_generate_with_left_padding_equals_unpadded():
    model = with_method("llama", "self_extend", CASES["self_extend"][0])
    ids, mask, _ = padded_inputs(True)
    settings = dict(max_new_tokens=6, do_sample=False, pad_token_id=3)
    with torch.no_grad():
        batched = model.generate(ids, attention_mask=mask, **settings)
        alone = model.generate(ids[1:, PAD:], **settings)
    assert torch.equal(batched[1, LENGTH:], alone[0, LENGTH - PAD:])


@pytest.mark.parametrize("split", (True, False), ids=("split-cpu-kernel", "joined-sdpa"))
@pytest.mark.parametrize("arch", ("llama", "gpt_neox"))
@pytest.mark.parametrize("method", [m for m in CASES if m != "none"])
def test_small_query_blocks_match_the_definition(arch, method, split, monkeypatch):
    """Blocks of 5 queries: the 72 tokens span many blocks, and the keys near for some of a block's
    rows and far for others (each taken twice, once per rotation) fall inside blocks; the logits
    still match the brute-force reference, padded rows included, on both block paths (runs merged
    by log-sum-exp on CPU, one joined SDPA call elsewhere)."""
    monkeypatch.setattr(attention_kernel, "BLOCK_ROWS", 5)
    monkeypatch.setattr(attention_kernel, "SPLIT_ON_CPU", split)
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
    call = functools.partial(attention_function.method_attention, module, attention_mask=None, scaling=0.25,
                             position_ids=torch.arange(LENGTH)[None])
    half, _ = call(query, key, value)
    full, _ = call(query.float(), key.float(), value.float())
    assert half.dtype == torch.bfloat16
    assert torch.equal(half, full.to(torch.bfloat16))


class _CreatedDtypes(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the dtype of every tensor an operator returns."""

    def __init__(self):
        super().__init__()
        self.dtypes = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in torch.utils._pytree.tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.dtypes.add(leaf.dtype)
        return out


@pytest.mark.parametrize("method", [m for m in CASES if m != "none"])
def test_the_joined_path_reads_nothing_back_per_block_and_makes_no_float64(method):
    """The blocks of the joined path (the fallback off the CPU) on the ``meta`` device, whose tensors
    have no data: any read on the host (``.tolist()``, ``bool()``, ``.item()``) raises, so this runs
    only if no block synchronises with the host; and no operator makes a float64 tensor there."""
    options, _, _ = CASES[method]
    module = attention_patch.attention_modules(with_method("llama", method, options))[0]
    setting = getattr(module, attention_kernel.SETTING_ATTRIBUTE)
    batch, heads, queries, keys, rot = 2, 4, 40, 72, setting.rotary_dim
    query = torch.randn(batch, heads, queries, 16, device="meta")
    key, value = (torch.randn(batch, 2, keys, 16, device="meta") for _ in range(2))
    query_positions = torch.arange(keys - queries, keys, device="meta").expand(batch, queries)
    key_positions = torch.arange(keys, device="meta").expand(batch, keys)
    padding = torch.ones(batch, 1, queries, keys, dtype=torch.bool, device="meta")
    with _CreatedDtypes() as created:
        attend = attention_kernel._JoinedKeys(key, key[..., :rot], value, rot, 0.25)
        blocks = list(attention_kernel._blocks(setting, query, query[..., :rot], query_positions, key_positions,
                                               padding, rows=16))
        outputs = [attend(block) for block in blocks]
    assert len(blocks) == 3 and all(o.shape == (batch, heads, b.rows.stop - b.rows.start, 16)
                                    for o, b in zip(outputs, blocks))
    assert torch.float64 not in created.dtypes and torch.bool in created.dtypes
    with pytest.raises((NotImplementedError, RuntimeError)):  # the check has teeth: a read does raise
        attention_kernel._runs(blocks[0].near[0, 0, 0])
