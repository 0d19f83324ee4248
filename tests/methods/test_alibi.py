"""ALiBi slopes and methods against docs/methods.md and transformers' own slopes."""

import math

import pytest
import torch
from transformers.models.bloom import modeling_bloom
from transformers.models.mpt import modeling_mpt

from lmeval_ctx.methods.alibi import (
    ALIBI_METHODS,
    alibi_slopes,
    mpt_alibi_slopes,
    steepness_ranks,
)


def test_eight_heads_are_one_half_to_one_256th():
    assert alibi_slopes(8) == [2.0 ** -h for h in range(1, 9)]


@pytest.mark.parametrize("heads", [1, 2, 4, 6, 8, 12, 16, 20, 32, 40, 112])
def test_slopes_match_bloom(heads):
    ours = torch.tensor(alibi_slopes(heads), dtype=torch.float32)
    # call the function transformers ships, not a dispatcher a test may have installed
    original = getattr(modeling_bloom._get_alibi_slopes, "__wrapped__", modeling_bloom._get_alibi_slopes)
    torch.testing.assert_close(ours, original(heads, torch.device("cpu")), rtol=1e-6, atol=0)


def test_non_power_of_two_takes_odd_slopes_of_the_doubled_sequence():
    # H = 12: n = 8 slopes 2^(-8h/8), then 2^(-8(2k-1)/16) for k = 1..4
    expected = [2.0 ** -h for h in range(1, 9)] + [2.0 ** (-(2 * k - 1) / 2) for k in range(1, 5)]
    assert alibi_slopes(12) == pytest.approx(expected)


@pytest.mark.parametrize("heads", [4, 6, 8, 12, 16, 24])
def test_mpt_slopes_match_mpt(heads):
    original = getattr(modeling_mpt.build_mpt_alibi_tensor, "__wrapped__", modeling_mpt.build_mpt_alibi_tensor)
    bias = original(heads, 2)  # (heads, 1, 2): -slope, 0
    torch.testing.assert_close(torch.tensor(mpt_alibi_slopes(heads)), -bias[:, 0, 0], rtol=1e-6, atol=0)


def test_pi_divides_every_slope():
    base = alibi_slopes(8)
    assert ALIBI_METHODS["pi"](base, 4.0, 2048, 8192) == pytest.approx([m / 4 for m in base])


@pytest.mark.parametrize("heads, a", [(8, 2.0), (8, 4.0), (16, 3.0), (32, 8.0)])
def test_ntk_alibi_matches_the_source_formula(heads, a):
    base = alibi_slopes(heads)
    scaled = ALIBI_METHODS["ntk"](base, a, 2048, 4096)
    # m'_h = 1 / (2^(8h/H) * a^((h-1)/(H-1))), h = 1..H
    expected = [1 / (2 ** (8 * h / heads) * a ** ((h - 1) / (heads - 1))) for h in range(1, heads + 1)]
    assert scaled == pytest.approx(expected, rel=1e-12)
    # equivalently m'_h = b / (2^(8/H) b)^h with b = a^(1/(H-1))
    b = a ** (1 / (heads - 1))
    assert scaled == pytest.approx([b / (2 ** (8 / heads) * b) ** h for h in range(1, heads + 1)], rel=1e-12)
    assert scaled[0] == base[0]  # steepest head: extrapolation
    assert scaled[-1] == pytest.approx(base[-1] / a)  # flattest: interpolation


def test_ntk_alibi_ranks_heads_by_steepness_when_not_ordered():
    base = mpt_alibi_slopes(12)  # MPT interleaves: not monotone
    ranks = steepness_ranks(base)
    assert sorted(ranks) == list(range(12))
    scaled = ALIBI_METHODS["ntk"](base, 4.0, 2048, 8192)
    for h, m in enumerate(base):
        assert scaled[h] == pytest.approx(m * 4.0 ** (-ranks[h] / 11))
    steepest, flattest = ranks.index(0), ranks.index(11)
    assert scaled[steepest] == base[steepest] and scaled[flattest] == pytest.approx(base[flattest] / 4)


def test_dynamic_ntk_alibi_takes_the_factor_from_the_length():
    base, original = alibi_slopes(8), 2048
    dynamic = ALIBI_METHODS["dynamic_ntk"]
    assert dynamic(base, 4.0, original, 1000) == base  # inside the window: unchanged
    assert dynamic(base, 4.0, original, original) == base
    assert dynamic(base, 4.0, original, 3 * original) == pytest.approx(ALIBI_METHODS["ntk"](base, 3.0, original, 0))


def test_ntk_alibi_needs_two_heads():
    with pytest.raises(ValueError, match="at least 2 heads"):
        ALIBI_METHODS["ntk"]([0.5], 2.0, 2048, 4096)
    assert math.isclose(ALIBI_METHODS["pi"]([0.5], 2.0, 2048, 4096)[0], 0.25)


def test_lm_infinite_keeps_the_slopes():
    # LM-Infinite changes the mask and caps the distance in the attention; the slopes stay the model's
    for base in (alibi_slopes(8), mpt_alibi_slopes(12)):
        assert ALIBI_METHODS["lm_infinite"](base, None, 2048, 8192) == base
