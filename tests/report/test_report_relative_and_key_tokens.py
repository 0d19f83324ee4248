"""NoLiMa's relative effective length beside RULER's absolute one, and LongPPL's key-token perplexity
as its own column and plot."""

import pytest
from report_outputs import PNG, QUIET, ruler_results, write_run

from lmeval_ctx.report.leaderboard import leaderboard
from lmeval_ctx.report.read import read_runs
from lmeval_ctx.report.write import write_report

RELATIVE = "ruler relative effective length (≥ {:.0%} of own shortest)"


def cells(table, column):
    return [row[table.header.index(column)] for row in table.rows]


@pytest.fixture
def ruler_rows(tmp_path):
    """A weak model that keeps its score and a strong one that declines (RULER averages by length)."""
    weak = {1024: 0.5, 2048: 0.47, 4096: 0.40}
    strong = {1024: 1.0, 2048: 0.86, 4096: 0.84}
    for name, scores in (("weak", weak), ("strong", strong)):
        results, configs = ruler_results({"niah_single_1": scores}, [1024, 2048, 4096])
        write_run(tmp_path / name, "none" if name == "weak" else "yarn", None if name == "weak" else 2.0,
                  results, configs, model_args={"pretrained": f"/models/{name}"})
    return [tmp_path / "weak", tmp_path / "strong"]


def test_relative_effective_length_differs_from_rulers(ruler_rows):
    table = leaderboard(read_runs(ruler_rows))
    assert cells(table, "model") == ["strong", "weak"]
    assert cells(table, "ruler effective length (avg ≥ 85.6%)") == ["2048", "< 1024"]
    # weak: 0.47 >= 0.85 x 0.5 = 0.425 > 0.40; strong: 0.86 >= 0.85 > 0.84
    assert cells(table, RELATIVE.format(0.85)) == ["2048", "2048"]
    assert any("NoLiMa" in line for line in table.legend)


@pytest.mark.parametrize("fraction, expected", [(0.79, ["4096", "4096"]), (0.95, ["1024", "1024"])])
def test_the_fraction_is_an_option(ruler_rows, fraction, expected):
    table = leaderboard(read_runs(ruler_rows), fraction=fraction)
    assert cells(table, RELATIVE.format(fraction)) == expected  # weak 0.40 >= 0.395; strong 0.84 >= 0.79


def test_a_zero_score_at_the_shortest_length_has_no_relative_length(tmp_path):
    results, configs = ruler_results({"niah_single_1": {1024: 0.0, 2048: 0.0}}, [1024, 2048])
    write_run(tmp_path / "z", "none", None, results, configs)
    assert cells(leaderboard(read_runs([tmp_path / "z"])), RELATIVE.format(0.85)) == ["n/a"]


def test_a_bad_fraction_is_refused(ruler_rows, tmp_path):
    with pytest.raises(ValueError, match=r"--relative-fraction .* got 85"):
        write_report(ruler_rows, tmp_path / "out", fraction=85, **QUIET)
    assert not (tmp_path / "out").exists()


def key_token_run(folder, method, factor, key_ppl):
    results = {"longppl": {"token_perplexity@1024,none": 10.0, "token_perplexity@2048,none": 11.0,
                           "key_token_perplexity@1024,none": key_ppl[0], "key_token_perplexity@2048,none": key_ppl[1],
                           "key_tokens@1024,none": 57, "key_tokens@2048,none": 120},
               "longppl_4k": {"token_perplexity,none": 12.0, "key_token_perplexity,none": key_ppl[2],
                              "key_tokens,none": 300}}
    configs = {"longppl": {"metadata": {"lengths": [1024, 2048]}},
               "longppl_4k": {"dataset_kwargs": {"fixed_length": 4096}}}
    write_run(folder, method, factor, results, configs)


def test_key_token_perplexity_column_and_plot(tmp_path):
    key_token_run(tmp_path / "none", "none", None, (30.0, 31.5, 33.25))
    key_token_run(tmp_path / "pi", "pi", 2.0, (45.0, 60.0, 80.0))
    write_run(tmp_path / "plain", "yarn", 2.0, {"longppl_1k": {"token_perplexity,none": 9.0}},
              {"longppl_1k": {"dataset_kwargs": {"fixed_length": 1024}}})
    table = leaderboard(read_runs([tmp_path / "none", tmp_path / "pi", tmp_path / "plain"]))
    assert cells(table, "method") == ["none", "pi", "yarn"]
    assert cells(table, "key ppl@1024") == ["30.00", "45.00", ""]
    assert cells(table, "key ppl@4096") == ["33.25", "80.00", ""]
    assert cells(table, "ppl@4096") == ["12.00", "12.00", ""]
    rows = [dict(zip(table.csv_header, row)) for row in table.csv_rows]
    assert [row["key tokens@2048"] for row in rows] == ["120", "120", ""]
    assert rows[1]["key ppl@2048"] == "60.0"
    assert any("LongPPL" in line for line in table.legend)
    written = write_report([tmp_path / "none", tmp_path / "pi"], tmp_path / "report", **QUIET)
    plot = tmp_path / "report" / "key_token_perplexity_tiny.png"
    assert plot in written["files"] and plot.read_bytes().startswith(PNG)


def test_no_key_token_column_without_key_tokens(tmp_path):
    write_run(tmp_path / "plain", "none", None, {"longppl_1k": {"token_perplexity,none": 9.0}},
              {"longppl_1k": {"dataset_kwargs": {"fixed_length": 1024}}})
    table = leaderboard(read_runs([tmp_path / "plain"]))
    assert not [title for title in table.csv_header if title.startswith("key")]
    written = write_report([tmp_path / "plain"], tmp_path / "report", **QUIET)
    assert not [path for path in written["files"] if path.name.startswith("key_token")]
