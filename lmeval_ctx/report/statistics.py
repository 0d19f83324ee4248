"""The report's statistics: Wilson score intervals of accuracies and RULER's averages over lengths."""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # two-sided 95 % normal quantile


def wilson_interval(proportion: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (Wilson 1927, JASA 22:209)."""
    if n < 1:
        raise ValueError(f"n must be at least 1 sample; got {n}.")
    if not 0.0 <= proportion <= 1.0:
        raise ValueError(f"proportion must lie in [0, 1]; got {proportion}.")
    denominator = 1 + z * z / n
    centre = (proportion + z * z / (2 * n)) / denominator
    half = z * math.sqrt(proportion * (1 - proportion) / n + z * z / (4 * n * n)) / denominator
    # exact at the ends: 0/n has lower bound 0 and n/n upper bound 1 (not a rounding error away)
    lower = 0.0 if proportion == 0.0 else max(0.0, centre - half)
    upper = 1.0 if proportion == 1.0 else min(1.0, centre + half)
    return lower, upper


def weighted_average(values_by_length: dict[int, float], increasing: bool) -> float | None:
    """RULER's weighted average over lengths (Hsieh et al. 2024, arXiv:2404.06654, "wAvg"): weights
    1..n rising (or falling) with the length."""
    if not values_by_length:
        return None
    lengths = sorted(values_by_length)
    weights = list(range(1, len(lengths) + 1) if increasing else range(len(lengths), 0, -1))
    return sum(w * values_by_length[n] for w, n in zip(weights, lengths)) / sum(weights)
