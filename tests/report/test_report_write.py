"""``lmeval-ctx report`` end to end: the files it writes, and bad input refused before anything is written."""

import pytest
from report_outputs import PNG, QUIET, runs, write_run  # noqa: F401 - runs: the fixture

from lmeval_ctx.cli import main
from lmeval_ctx.report.write import write_report


def test_the_report_writes_its_files(runs, tmp_path):  # noqa: F811
    written = write_report(list(runs), tmp_path / "report", **QUIET)
    names = sorted(path.name for path in written["files"])
    assert names == ["index.html", "leaderboard.csv", "leaderboard.md", "passkey_heatmap_tiny_none.png",
                     "passkey_heatmap_tiny_yarn_x2.png", "passkey_tiny.png", "perplexity_tiny.png"]
    assert (tmp_path / "report" / "leaderboard.md").read_text() == written["table"]
    assert (tmp_path / "report" / "leaderboard.csv").read_text().startswith("model,method,parameters,factor,")
    for path in written["files"]:
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == PNG and path.stat().st_size > 10_000


def test_report_command_prints_the_table(runs, tmp_path, capsys):  # noqa: F811
    assert main(["report", *map(str, runs), "--output", str(tmp_path / "cli")]) == 0
    out = capsys.readouterr().out
    assert "| tiny | yarn | 2 |  | ≈1.000 |" in out and (tmp_path / "cli" / "perplexity_tiny.png").is_file()
    assert (tmp_path / "cli" / "index.html").is_file()


def test_a_bad_threshold_is_refused(runs, tmp_path):  # noqa: F811
    with pytest.raises(ValueError, match="--threshold is RULER's score in percent"):
        write_report(list(runs), tmp_path / "out", threshold=0.856, **QUIET)
    assert not (tmp_path / "out").exists()


def test_output_problems_are_found_before_the_work(runs, tmp_path, capsys, monkeypatch):  # noqa: F811
    import lmeval_ctx.report.write as report

    def must_not_run(folders):
        raise AssertionError("read the runs before checking the output")

    monkeypatch.setattr(report, "read_runs", must_not_run)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(runs[0]), "--output", str(a_file)])
    assert exit_info.value.code == 2 and "is a file, not a folder" in capsys.readouterr().err
    with pytest.raises(ValueError, match="cannot hold the report"):
        write_report(list(runs), a_file / "inside", **QUIET)


def test_a_refused_report_creates_nothing(tmp_path, capsys):
    """A folder without results, or without per-length results, is refused and leaves no report folder."""
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(empty)])  # the default output: empty/report
    assert exit_info.value.code == 2 and "holds no lm-eval results" in capsys.readouterr().err
    assert list(empty.iterdir()) == []
    short_only = tmp_path / "short_only"
    write_run(short_only, "none", None, {"hellaswag": {"acc,none": 0.3}}, {})
    with pytest.raises(ValueError, match="No per-length results"):
        write_report([short_only], tmp_path / "new" / "report", **QUIET)
    assert not (tmp_path / "new").exists()
