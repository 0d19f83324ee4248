"""Pooling the ALiBi recipe across seeds (benchmarks/alibi_extrapolation_seeds.py), on made-up seed results."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def seeds():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location("alibi_seeds", REPO / "benchmarks" / "alibi_extrapolation_seeds.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return module


def _row(point, correct: dict, ppl: dict, n: int = 10):
    method, _, factor = point.partition("_x")
    return {"point": point, "method": method, "factor": float(factor) if factor else None,
            "passkey": {length: {"correct": c, "n": n} for length, c in correct.items()},
            "token_perplexity": dict(ppl)}


def _seed(none_at_512: int, ntk_at_512: int) -> dict:
    return {"evaluation": {"rows": [
        _row("none", {"256": 10, "512": none_at_512}, {"256": 60.0, "512": 58.0}),
        _row("ntk_x8", {"256": 10, "512": ntk_at_512}, {"256": 66.0, "512": 62.0 + ntk_at_512})]}}


def test_pooling_counts_every_prompt_and_spreads_over_seeds(seeds):
    rows = seeds.pool({0: _seed(2, 9), 1: _seed(4, 10), 2: _seed(3, 8)})
    ntk = next(r for r in rows if r["method"] == "ntk")
    cell = ntk["passkey"]["512"]
    assert (cell["correct"], cell["n"]) == (27, 30)
    assert cell["per_seed"] == [0.9, 1.0, 0.8] and cell["min"] == 0.8 and cell["max"] == 1.0
    assert cell["mean"] == pytest.approx(0.9) and cell["std"] == pytest.approx(0.1)
    low, high = seeds.wilson(27, 30)
    assert cell["wilson95"] == [round(low, 3), round(high, 3)]
    assert ntk["token_perplexity"]["512"]["mean"] == pytest.approx(71.0)
    assert [r["method"] for r in rows] == ["none", "ntk"]


def test_a_difference_holds_only_when_every_seed_agrees_and_intervals_are_disjoint(seeds):
    holds = seeds.against_none(seeds.pool({0: _seed(2, 9), 1: _seed(4, 10), 2: _seed(3, 8)}))
    at_512 = next(v for v in holds if v["length"] == 512)
    assert at_512["direction"] == "ahead" and at_512["pooled_intervals_disjoint"] and at_512["holds"]
    at_256 = next(v for v in holds if v["length"] == 256)
    assert at_256["direction"] == "mixed" and not at_256["holds"]
    # one seed where ntk does no better than none: the pooled figures still differ, the verdict does not hold
    mixed = seeds.against_none(seeds.pool({0: _seed(2, 9), 1: _seed(4, 10), 2: _seed(8, 8)}))
    assert not next(v for v in mixed if v["length"] == 512)["holds"]


def test_a_point_missing_from_one_seed_is_refused(seeds):
    partial = _seed(2, 9)
    partial["evaluation"]["rows"] = partial["evaluation"]["rows"][:1]
    with pytest.raises(ValueError, match=r"point ntk_x8 is missing from seed\(s\) \[1\]"):
        seeds.pool({0: _seed(2, 9), 1: partial})


def test_arguments_are_checked(seeds):
    with pytest.raises(SystemExit):
        seeds.parse_args(["--seeds", "3"])
    with pytest.raises(SystemExit):
        seeds.parse_args(["--seeds", "1,1"])
    with pytest.raises(SystemExit):
        seeds.parse_args(["--seeds", "0,1", "--", "--seed", "4"])
    assert seeds.parse_args(["--seeds", "0,1", "--", "--steps", "10"]).extra == ["--steps", "10"]
