"""The blocked ALiBi attention against transformers' own, and its memory bound.

Each comparison runs one tiny model twice: with ``attention="blocks"`` and with
``attention="transformers"`` (BLOOM, MPT: eager; Falcon-ALiBi: SDPA with the dense
float mask, what ``from_pretrained`` loads), both with the same slopes from
:mod:`lmeval_ctx.extension.alibi.scaling` (the slopes themselves are checked against
docs/methods.md in tests/model_wrappers/test_ctx_hf_logits.py). Blocks are made
small here (64 query rows) so 300-token inputs span several of them.
"""

import pytest
import torch
import transformers
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from lmeval_ctx.extension.alibi import attention as alibi_attention
from lmeval_ctx.extension.alibi.install import install_alibi_scaling
from lmeval_ctx.extension.alibi.scaling import AlibiScaling
from lmeval_ctx.model_wrappers.ctx_hf import CtxHFLM

TRAINED = 128  # the tiny models' trained length (BLOOM's config has none: passed as original_max_length)
LENGTH = 300  # past it, and past MPT's max_seq_len
ARCHS = ("bloom", "mpt", "falcon_alibi")
METHODS = ("none", "pi", "ntk", "dynamic_ntk")
TOL = dict(rtol=0, atol=1e-4)


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setattr(alibi_attention, "MAX_BLOCK_ROWS", 64)


def load(folder) -> torch.nn.Module:
    return transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()


def pair(folder, method: str, models=None):
    """(blocked, transformers' attention): the same weights and slopes; ``models`` to re-use."""
    scaling = AlibiScaling(method, 4.0, TRAINED)
    blocked, reference = models or (load(folder), load(folder))
    install_alibi_scaling(blocked, scaling, attention="blocks")
    install_alibi_scaling(reference, scaling, attention="transformers")
    return blocked, reference


@pytest.fixture(scope="module")
def shared_pair(tiny_model_dir):
    """``shared_pair(arch, method)``: one pair per architecture, the method re-installed (as a sweep does)."""
    loaded = {}

    def get(arch: str, method: str):
        folder = tiny_model_dir(arch)
        loaded[arch] = pair(folder, method, loaded.get(arch))
        return loaded[arch]

    return get


def random_ids(length=LENGTH, batch=2, seed=1) -> torch.Tensor:
    return torch.randint(4, 100, (batch, length), generator=torch.Generator().manual_seed(seed))


def masks(ids: torch.Tensor) -> dict:
    padded = torch.ones_like(ids)
    padded[1, :37] = 0  # second row left-padded
    padded[0, 150:170] = 0  # first row: tokens masked out in the middle, an arbitrary 2-D mask
    return {"no mask": None, "ones": torch.ones_like(ids), "padded": padded}


@torch.no_grad()
def logits(model, ids, mask=None):
    return model(ids, attention_mask=mask).logits


class BlockedCalls:
    """Counts calls of the ALiBi attention's core (``core``: the block path, or ``_attend``: either
    engine, FlexAttention included)."""

    def __init__(self, monkeypatch, core: str = "blocked_alibi_attention"):
        self.count = 0
        original = getattr(alibi_attention, core)

        def counted(*args, **kwargs):
            self.count += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(alibi_attention, core, counted)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", METHODS)
def test_blocked_attention_equals_transformers(shared_pair, monkeypatch, arch, method):
    blocked, reference = shared_pair(arch, method)
    ids = random_ids()
    calls = BlockedCalls(monkeypatch)
    for name, mask in masks(ids).items():
        ours, expected = logits(blocked, ids, mask), logits(reference, ids, mask)
        torch.testing.assert_close(ours, expected, **TOL, msg=lambda m: f"{name}: {m}")
    assert calls.count == 2 * len(masks(ids))  # 2 layers per forward, each through the blocks
    if method != "none":
        unscaled, _ = shared_pair(arch, "none")
        assert (ours - logits(unscaled, ids, mask)).abs().max() > 1e-4, "the method changed nothing"


def head_size(model) -> int:
    return next(module.head_dim for module in model.modules() if hasattr(module, "head_dim"))


@pytest.mark.parametrize("arch", ARCHS)
def test_sdpa_runs_at_the_model_head_size(shared_pair, monkeypatch, arch):
    """The bias reaches SDPA as an additive float mask per head, so queries, keys and values keep
    the model's head size (a column added to carry the bias rules out SDPA's fused GPU kernels),
    and the logits stay transformers'."""
    blocked, reference = shared_pair(arch, "ntk")
    ids = random_ids()
    mask = masks(ids)["padded"]
    expected = logits(reference, ids, mask)  # before recording: Falcon's reference calls SDPA too
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recorded(query, key, value, *args, attn_mask=None, **kwargs):
        calls.append((query.shape[-1], key.shape[-1], value.shape[-1], attn_mask.dtype, attn_mask.shape[1]))
        return sdpa(query, key, value, *args, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recorded)
    ours = logits(blocked, ids, mask)
    heads, size = alibi_attention_heads(blocked), head_size(blocked)
    assert len(calls) == 2 * -(-LENGTH // alibi_attention.MAX_BLOCK_ROWS)  # 2 layers, one call per block
    assert set(calls) == {(size, size, size, torch.float32, heads)}
    torch.testing.assert_close(ours, expected, **TOL)


def test_falcon_refuses_a_dense_4d_mask_by_name(shared_pair):
    blocked, _ = shared_pair("falcon_alibi", "none")
    dense = torch.zeros(1, 1, 8, 8).masked_fill(~torch.ones(8, 8, dtype=torch.bool).tril(), -1e30)
    with pytest.raises(ValueError, match="pass a 2-D attention_mask"):
        logits(blocked, random_ids(8, batch=1), dense)


def test_a_dense_4d_mask_is_used_as_given(shared_pair):
    # MPT only: BLOOM and Falcon build their ALiBi positions from a 2-D mask and reject a 4-D one
    blocked, reference = shared_pair("mpt", "ntk")
    ids = random_ids()
    allowed = torch.ones(LENGTH, LENGTH, dtype=torch.bool).tril()
    allowed[200:, 10:60] = False  # not a causal pattern: no key range can be skipped
    dense = torch.zeros(2, 1, LENGTH, LENGTH).masked_fill(~allowed, torch.finfo(torch.float32).min)
    torch.testing.assert_close(logits(blocked, ids, dense), logits(reference, ids, dense), **TOL)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", ["none", "ntk"])
def test_cached_generation_equals_a_full_forward(shared_pair, arch, method):
    blocked, _ = shared_pair(arch, method)
    prompt = random_ids(200, batch=1)
    with torch.no_grad():
        out = blocked.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, do_sample=False,
                               output_logits=True, return_dict_in_generate=True, pad_token_id=3)
    steps = torch.stack(out.logits, dim=1)[0]
    full = logits(blocked, out.sequences[:, :-1])[0, 199:]
    torch.testing.assert_close(steps, full, **TOL)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", ["ntk", "dynamic_ntk"])
def test_left_padded_cached_generation_equals_transformers(shared_pair, arch, method):
    blocked, reference = shared_pair(arch, method)
    prompt = random_ids(200)
    mask = torch.ones_like(prompt)
    mask[1, :23] = 0
    outs = []
    for model in (blocked, reference):
        with torch.no_grad():
            outs.append(model.generate(prompt, attention_mask=mask, max_new_tokens=6, do_sample=False,
                                       output_logits=True, return_dict_in_generate=True, pad_token_id=3))
    torch.testing.assert_close(torch.stack(outs[0].logits), torch.stack(outs[1].logits), **TOL)
    assert torch.equal(outs[0].sequences, outs[1].sequences)


class LargestStorage(TorchDispatchMode):
    """The largest storage (bytes) of any tensor an operator returns while active."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor) and leaf.device.type == "cpu":
                self.largest = max(self.largest, leaf.untyped_storage().nbytes())
        return out


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_no_length_squared_tensor_is_allocated(shared_pair, arch):
    """No operator of a forward pass returns even one float32 ``length x length`` tensor,
    while transformers' attention returns ``heads`` times that (its scores)."""
    length = 2048
    blocked, reference = shared_pair(arch, "ntk")
    heads = alibi_attention_heads(blocked)
    ids = random_ids(length, batch=1)
    bound = length * length * 4
    for model, expect_quadratic in ((blocked, False), (reference, True)):
        with torch.no_grad(), LargestStorage() as probe:
            model(ids, attention_mask=torch.ones_like(ids))
        if expect_quadratic:
            assert probe.largest >= heads * bound
        else:
            assert probe.largest < bound, f"{probe.largest} bytes >= length^2 floats ({bound})"


def alibi_attention_heads(model) -> int:
    config = model.config
    return getattr(config, "n_head", None) or getattr(config, "n_heads", None) or config.num_attention_heads


def test_another_model_in_the_process_is_untouched(tiny_model_dir, monkeypatch):
    folder = tiny_model_dir("bloom")
    plain = load(folder)
    ids = random_ids()
    mask = masks(ids)["padded"]
    before = logits(plain, ids, mask)
    scaled, _ = pair(folder, "ntk")
    calls = BlockedCalls(monkeypatch)
    torch.testing.assert_close(logits(plain, ids, mask), before, rtol=0, atol=0)
    torch.testing.assert_close(logits(load(folder), ids, mask), before, rtol=0, atol=0)  # built after
    assert calls.count == 0
    assert all("forward" not in vars(module) for module in plain.modules())
    logits(scaled, ids, mask)
    assert calls.count == 2


def test_switching_back_restores_transformers_attention(tiny_model_dir, monkeypatch):
    folder = tiny_model_dir("mpt")
    model, reference = pair(folder, "pi")
    ids = random_ids()
    install_alibi_scaling(model, AlibiScaling("pi", 4.0, TRAINED), attention="transformers")
    calls = BlockedCalls(monkeypatch)
    torch.testing.assert_close(logits(model, ids), logits(reference, ids), rtol=0, atol=0)
    assert calls.count == 0


@pytest.mark.parametrize("arch, extra", [("bloom", {"original_max_length": TRAINED}), ("falcon_alibi", {})])
def test_ctx_hf_runs_its_attention_and_takes_the_argument(tiny_model_dir, monkeypatch, arch, extra):
    """By default (``auto``) ctx-hf's own ALiBi attention runs (FlexAttention where it can, else the
    blocks), equal to transformers' own; an unknown engine is a ValueError naming it."""
    folder = tiny_model_dir(arch)
    calls = BlockedCalls(monkeypatch, core="_attend")
    default = CtxHFLM(pretrained=str(folder), device="cpu", dtype="float32", scaling="ntk", factor=4, **extra)
    ids = random_ids()
    ours = default._model_call(ids)
    assert calls.count == 2
    own = CtxHFLM(pretrained=str(folder), device="cpu", dtype="float32", scaling="ntk", factor=4,
                  attention_engine="transformers", **extra)
    expected = own._model_call(ids)
    assert calls.count == 2
    torch.testing.assert_close(ours, expected, **TOL)
    with pytest.raises(ValueError, match="='dense' is not"):
        CtxHFLM(pretrained=str(folder), device="cpu", dtype="float32", scaling="ntk", factor=4,
                attention_engine="dense", **extra)


def test_attention_weights_need_transformers_attention(shared_pair):
    blocked, _ = shared_pair("bloom", "ntk")
    with pytest.raises(ValueError, match="attention_engine=transformers"), torch.no_grad():
        blocked(random_ids(), output_attentions=True)
