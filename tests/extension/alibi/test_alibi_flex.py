"""FlexAttention as the ALiBi engine: equal to the block path and to a reference written here.

The reference replaces the attention core inside the models' attention forwards (so all three
runs share the projections) with dense attention computed in float64 from the definitions:
ALiBi's bias ``-m_h (p_i - p_j)`` over positions counted over the attention mask (BLOOM, Falcon)
or indices (MPT), Falcon's bfloat16-rounded ``slope x position`` over ``sqrt(head_dim)``
(its model's definition), LM-Infinite's ceiling ``min(d, L)`` and Λ mask, causality and left
padding, one softmax. Compiling costs ~20-40 s per padded length on CPU: these tests use one
bucket (1,024) and one batch shape.
"""

import math

import pytest
import torch
import transformers
from torch._dynamo.utils import counters

from lmeval_ctx.extension import flex
from lmeval_ctx.extension.alibi import attention as alibi_attention
from lmeval_ctx.extension.alibi import flex_attention
from lmeval_ctx.extension.alibi.install import install_alibi_scaling
from lmeval_ctx.extension.alibi.masks import RowBlockMask
from lmeval_ctx.extension.alibi.scaling import AlibiScaling, running_call

ARCHS = ("bloom", "mpt", "falcon_alibi")
METHODS = ("none", "pi", "ntk", "dynamic_ntk", "lm_infinite")
TRAINED, CEILING = 128, 64
LENGTH = 300
TOL = dict(rtol=0, atol=1e-4)



def flex_reason() -> str | None:
    with torch.no_grad():  # on CPU FlexAttention serves inference only
        return flex.flex_unavailable("cpu")


pytestmark = pytest.mark.skipif(flex_reason() is not None, reason=f"FlexAttention cannot run: {flex_reason()}")


def scaling(method: str) -> AlibiScaling:
    if method == "lm_infinite":  # a window inside the ceiling and one past it: both change pairs here
        return AlibiScaling(method, None, CEILING, {"global_tokens": 4, "local_window": 48})
    return AlibiScaling(method, None if method in ("none", "dynamic_ntk") else 4.0, TRAINED)


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    loaded = {}

    def get(arch: str):
        if arch not in loaded:
            loaded[arch] = transformers.AutoModelForCausalLM.from_pretrained(
                str(tiny_model_dir(arch)), dtype=torch.float32).eval()
        return loaded[arch]

    return get


def random_ids(length=LENGTH, batch=2) -> torch.Tensor:
    return torch.randint(4, 100, (batch, length), generator=torch.Generator().manual_seed(length))


def left_padded(ids: torch.Tensor) -> torch.Tensor:
    mask = torch.ones_like(ids)
    mask[1, :37] = 0
    return mask


class Calls:
    """Counts the FlexAttention and block-path calls of the ALiBi attention."""

    def __init__(self, monkeypatch):
        self.flex = self.blocked = 0
        for name in ("flex_alibi_attention", "blocked_alibi_attention"):
            original = getattr(alibi_attention, name)

            def counted(*args, _original=original, _field=name.split("_")[0], **kwargs):
                setattr(self, _field, getattr(self, _field) + 1)
                return _original(*args, **kwargs)

            monkeypatch.setattr(alibi_attention, name, counted)


@torch.no_grad()
def logits(model, method, engine, ids, mask):
    install_alibi_scaling(model, scaling(method), attention=engine)
    return model(ids, attention_mask=mask).logits


def reference_bias(arch: str, model, real: torch.Tensor, queries: int) -> torch.Tensor:
    """``(batch, heads, queries, keys)`` float64: the model's ALiBi bias from its definition."""
    keys = real.shape[-1]
    slopes = torch.tensor(running_call().slopes, dtype=torch.float64)
    counted = real.long().cumsum(-1) - 1
    if arch == "mpt":
        counted = torch.arange(keys).expand_as(counted)
    if arch == "falcon_alibi":  # bfloat16 slopes x position, in bfloat16, over sqrt(head_dim)
        per_key = (slopes.float().bfloat16()[None, :, None] * counted[:, None, :]).double()
        per_key = per_key / math.sqrt(model.config.hidden_size // model.config.num_attention_heads)
        return per_key[:, :, None, :] - per_key[:, :, keys - queries:, None]
    distance = (counted[:, keys - queries:, None] - counted[:, None, :]).double()
    return -slopes[None, :, None, None] * distance[:, None]


def reference_core(arch: str, model):
    """A stand-in for the ALiBi attention's core: dense, float64, one softmax."""

    def attend(query, key, value, alibi, mask, scale, slopes):
        batch, heads, queries, _ = query.shape
        keys = key.shape[-2]
        real = mask.padding.bool() if isinstance(mask, RowBlockMask) and mask.padding is not None \
            else torch.ones(batch, keys, dtype=torch.bool)
        bias = reference_bias(arch, model, real, queries)
        allowed = torch.ones(queries, keys, dtype=torch.bool).tril(keys - queries)[None] & real[:, None, :]
        setting = running_call().setting.scaling
        if setting.method == "lm_infinite":
            counted = (real.long().cumsum(-1) - 1).double()
            distance = counted[:, keys - queries:, None] - counted[:, None, :]
            allowed = allowed & ((distance < setting.options["local_window"])
                                 | (counted[:, None, :] < setting.options["global_tokens"]))
            excess = (distance - setting.original_length).clamp(min=0)
            bias = bias + slopes.double()[None, :, None, None] * excess[:, None]
        scores = (query.double() @ key.double().transpose(-1, -2)) * scale + bias
        scores = scores.masked_fill(~allowed[:, None], -math.inf)
        weights = torch.softmax(scores, dim=-1)
        out = weights.nan_to_num(0.0) @ value.double()
        empty = ~allowed.any(-1)[:, None, :, None]  # rows with no key: the mean of all values
        return torch.where(empty, value.double().mean(-2, keepdim=True), out).to(query.dtype)

    return attend


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", METHODS)
def test_flex_equals_the_blocks_and_the_definition(model, monkeypatch, arch, method):
    built, ids = model(arch), random_ids()
    mask = left_padded(ids)
    calls = Calls(monkeypatch)
    ours = logits(built, method, "flex", ids, mask)
    assert (calls.flex, calls.blocked) == (2, 0), "FlexAttention did not run in both layers"
    blocks = logits(built, method, "blocks", ids, mask)
    assert calls.blocked == 2
    monkeypatch.setattr(alibi_attention, "_attend", reference_core(arch, built))
    expected = logits(built, method, "blocks", ids, mask)
    torch.testing.assert_close(ours, blocks, **TOL)
    torch.testing.assert_close(ours, expected.float(), **TOL)
    if method != "none":
        assert (ours - logits(built, "none", "blocks", ids, mask)).abs().max() > 2 * TOL["atol"], "the method changed nothing"


def test_a_second_length_neither_recompiles_nor_falls_back(model, monkeypatch):
    """Lengths share a padded bucket (1,024 here): after the first call no graph is compiled again,
    and the second length runs FlexAttention, equal to the blocks."""
    built = model("bloom")
    first = random_ids(LENGTH)
    logits(built, "ntk", "flex", first, left_padded(first))
    graphs = dict(counters["stats"])
    calls = Calls(monkeypatch)
    second = random_ids(517)
    ours = logits(built, "ntk", "flex", second, left_padded(second))
    assert dict(counters["stats"]) == graphs, "a second length compiled again"
    assert (calls.flex, calls.blocked) == (2, 0)
    torch.testing.assert_close(ours, logits(built, "ntk", "blocks", second, left_padded(second)), **TOL)


def test_auto_falls_back_to_the_blocks_where_flex_cannot_run(model, monkeypatch):
    built, ids = model("mpt"), random_ids(200, batch=1)
    monkeypatch.setattr(flex, "flex_unavailable", lambda device: "no compiler here (test)")
    calls = Calls(monkeypatch)
    logits(built, "ntk", "auto", ids, None)
    assert (calls.flex, calls.blocked) == (0, 2)
    with pytest.raises(RuntimeError, match="attention_engine=flex cannot run here: no compiler here"):
        logits(built, "ntk", "flex", ids, None)


def test_short_calls_and_dense_masks_run_the_blocks(model, monkeypatch):
    """A generation step (under 128 queries: under ``auto`` and ``flex``) and MPT's dense 4-D mask
    (under ``auto``) go through the block path; ``flex`` names why it cannot take a dense mask."""
    built = model("mpt")
    calls = Calls(monkeypatch)
    short = random_ids(100, batch=1)
    logits(built, "ntk", "flex", short, None)
    dense = torch.zeros(1, 1, 200, 200).masked_fill(~torch.ones(200, 200, dtype=torch.bool).tril(), -1e30)
    logits(built, "ntk", "auto", random_ids(200, batch=1), dense)
    assert (calls.flex, calls.blocked) == (0, 4)
    with pytest.raises(ValueError, match="attention_engine=flex cannot run this call: a caller's dense 4-D mask"):
        logits(built, "ntk", "flex", random_ids(200, batch=1), dense)


def test_past_dynamos_recompile_limit_auto_runs_the_blocks(model, monkeypatch):
    """A new kernel past the limit would run FlexAttention unfused (``queries x keys`` scores per
    head): ``auto`` runs the blocks instead."""
    limit = flex.RECOMPILE_LIMIT
    monkeypatch.setattr(flex_attention, "_KERNELS", {("another shape", n) for n in range(limit)})
    built, ids = model("falcon_alibi"), random_ids()
    calls = Calls(monkeypatch)
    logits(built, "ntk", "auto", ids, left_padded(ids))
    assert (calls.flex, calls.blocked) == (0, 2)
    with pytest.raises(ValueError, match="recompile limit"):
        logits(built, "ntk", "flex", ids, left_padded(ids))
