"""ALiBi slopes and their context-extension methods, as pure functions.

ALiBi (Press et al. 2021, "Train Short, Test Long", arXiv:2108.12409) adds
``-m_h * (i - j)`` to the attention score of head ``h``. Extending the context
changes the slopes ``m_h`` (formulas in docs/methods.md):

- interpolation (``pi``): every slope divided by the factor ``a``;
- NTK-ALiBi (``ntk``): the steepest head unchanged, the flattest divided by ``a``,
  geometric in between. Not from a paper: from the Chinese-language blog post
  "NTK-ALiBi:通过插值实现大模型ALiBi位置编码的长文本外推" (NTK-ALiBi: long-text
  extrapolation of LLMs' ALiBi position encoding by interpolation), Zhihu,
  https://zhuanlan.zhihu.com/p/632780188, as summarised in the CSDN post
  "LLM 位置编码及外推" (LLM position encoding and extrapolation);
- dynamic NTK-ALiBi (``dynamic_ntk``, this project's definition): NTK-ALiBi with
  ``a = max(1, current_length / original_length)``: the scale follows each input, so it takes
  no factor (:data:`LENGTH_SCALED_METHODS`; the window is set with ``max_length``);
- LM-Infinite (``lm_infinite``; Han et al. 2023, "LM-Infinite: Zero-Shot Extreme Length
  Generalization for Large Language Models", arXiv:2308.16137): the slopes unchanged; its
  Λ-shaped mask and distance ceiling (the bias becomes ``-m_h * min(i - j, L)``) are
  applied inside the attention (:mod:`lmeval_ctx.extension.alibi.attention`, with the relative
  positions of :func:`lmeval_ctx.methods.attention.lm_infinite`).

Every method has the signature ``(slopes, factor, original_length, current_length)``
and returns new slopes; ``slopes`` are the architecture's own base slopes.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence


def alibi_slopes(num_heads: int) -> list[float]:
    """The ALiBi slopes of Press et al. (BLOOM's and Falcon's convention).

    For ``H`` a power of two, ``m_h = 2**(-8h/H)``; otherwise the ``n = 2**floor(log2 H)``
    slopes for ``n`` heads followed by the odd-indexed slopes of the ``2n`` sequence.
    """
    if num_heads < 1:
        raise ValueError(f"num_heads must be >= 1, got {num_heads}")
    n = 2 ** math.floor(math.log2(num_heads))
    slopes = [2.0 ** (-8.0 * h / n) for h in range(1, n + 1)]
    extra = num_heads - n
    slopes += [2.0 ** (-8.0 * (2 * k - 1) / (2 * n)) for k in range(1, extra + 1)]
    return slopes


def mpt_alibi_slopes(num_heads: int, alibi_bias_max: float = 8.0) -> list[float]:
    """MPT's slopes: ``2**(-alibi_bias_max*h/P)`` for ``P = 2**ceil(log2 H)``, odd then even when H < P."""
    if num_heads < 1:
        raise ValueError(f"num_heads must be >= 1, got {num_heads}")
    p = 2 ** math.ceil(math.log2(num_heads))
    slopes = [2.0 ** (-alibi_bias_max * h / p) for h in range(1, p + 1)]
    if p != num_heads:
        slopes = (slopes[1::2] + slopes[::2])[:num_heads]
    return slopes


def steepness_ranks(slopes: Sequence[float]) -> list[int]:
    """Rank of each head from steepest (0) to flattest (H-1); ties keep head order."""
    order = sorted(range(len(slopes)), key=lambda h: (-slopes[h], h))
    ranks = [0] * len(slopes)
    for rank, head in enumerate(order):
        ranks[head] = rank
    return ranks


def none_slopes(slopes: Sequence[float], factor: float, original_length: int, current_length: int) -> list[float]:
    """No scaling: the model's own slopes."""
    return list(slopes)


def pi_slopes(slopes: Sequence[float], factor: float, original_length: int, current_length: int) -> list[float]:
    """Interpolation for ALiBi: every slope divided by ``a``, i.e. distances divided by ``a``."""
    return [m / factor for m in slopes]


def ntk_slopes(slopes: Sequence[float], factor: float, original_length: int, current_length: int) -> list[float]:
    """NTK-ALiBi: ``m'_h = m_h * a**(-rank_h/(H-1))``, steepest head kept, flattest divided by ``a``."""
    num_heads = len(slopes)
    if num_heads < 2:
        raise ValueError(
            "NTK-ALiBi interpolates between the steepest and the flattest head and needs at least 2 heads; "
            "for a single head use scaling=pi."
        )
    ranks = steepness_ranks(slopes)
    return [m * factor ** (-ranks[h] / (num_heads - 1)) for h, m in enumerate(slopes)]


def dynamic_ntk_slopes(slopes: Sequence[float], factor: float, original_length: int,
                       current_length: int) -> list[float]:
    """Dynamic NTK-ALiBi: NTK-ALiBi with ``a = max(1, current_length / original_length)``.

    ``factor`` is not read (the common signature passes it): the scale follows the sequence
    alone, so a request with a factor is refused (:data:`LENGTH_SCALED_METHODS`).
    """
    scale = max(1.0, current_length / original_length)
    if scale == 1.0:
        return list(slopes)
    return ntk_slopes(slopes, scale, original_length, current_length)


def lm_infinite_slopes(slopes: Sequence[float], factor: float, original_length: int,
                       current_length: int) -> list[float]:
    """LM-Infinite (Han et al. 2023) keeps the model's own slopes: it changes which keys a query
    sees and caps the distance at the trained length, both in the attention."""
    return list(slopes)


AlibiMethod = Callable[[Sequence[float], float, int, int], list]

ALIBI_METHODS: dict[str, AlibiMethod] = {
    "none": none_slopes,
    "pi": pi_slopes,
    "ntk": ntk_slopes,
    "dynamic_ntk": dynamic_ntk_slopes,
    "lm_infinite": lm_infinite_slopes,
}

# Methods whose scale is each input's length over the trained length (docs/methods.md), not a
# factor: the request gives them none (a factor would have no effect), only the window.
LENGTH_SCALED_METHODS = frozenset({"dynamic_ntk"})

# Methods that keep the architecture's own slopes, so its own slope code runs unchanged.
UNSCALED_SLOPE_METHODS = frozenset({"none", "lm_infinite"})
