"""The report's statistics: Wilson score intervals and RULER's weighted averages, by hand."""

import pytest

from lmeval_ctx.report.statistics import weighted_average, wilson_interval


def test_wilson_interval_by_hand():
    z = 1.959963984540054
    # 2 of 4: centre (p + z²/2n)/(1 + z²/n) = 0.5, half-width z·sqrt(p(1-p)/n + z²/4n²)/(1 + z²/n)
    half = z * (0.25 / 4 + z * z / 64) ** 0.5 / (1 + z * z / 4)
    assert wilson_interval(0.5, 4) == pytest.approx((0.5 - half, 0.5 + half), abs=1e-12)
    assert wilson_interval(0.5, 4) == pytest.approx((0.1500, 0.8500), abs=1e-4)
    # 0 of 5: upper bound z²/(n + z²)
    assert wilson_interval(0.0, 5) == pytest.approx((0.0, z * z / (5 + z * z)), abs=1e-12)
    with pytest.raises(ValueError, match="n must be at least 1"):
        wilson_interval(0.5, 0)


def test_ruler_weighted_averages():
    values = {1024: 0.9, 2048: 0.6, 4096: 0.3}
    assert weighted_average(values, increasing=True) == pytest.approx((1 * 0.9 + 2 * 0.6 + 3 * 0.3) / 6)
    assert weighted_average(values, increasing=False) == pytest.approx((3 * 0.9 + 2 * 0.6 + 1 * 0.3) / 6)
    assert weighted_average({}, increasing=True) is None
