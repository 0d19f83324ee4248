"""``lmeval-ctx report``: leaderboards, plots and a page from lm-eval output folders.

Reads ``results_*.json`` (and the ``samples_<task>_<same stamp>.jsonl`` files of the same
run) as lm-eval writes them with ``--output_path`` (and ``--log_samples``), from
``lmeval-ctx sweep`` or plain ``lm_eval`` runs, and writes ``leaderboard.md``,
``leaderboard.csv``, one plot per per-length curve, passkey heatmaps and ``index.html``.
Every check of the input comes before the report's folder is created: a refused report
leaves nothing behind. What each column and rule means: docs/report.md.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from lmeval_ctx.report.leaderboard import leaderboard, markdown_table
from lmeval_ctx.report.page import write_page
from lmeval_ctx.report.plots import plot_curves, plot_heatmaps
from lmeval_ctx.report.read import read_runs
from lmeval_ctx.report.results import RELATIVE_FRACTION, RULER_THRESHOLD, Table

__all__ = ["RELATIVE_FRACTION", "RULER_THRESHOLD", "check_output", "write_report"]


def check_threshold(threshold) -> float:
    """RULER's threshold in percent (above 1, at most 100), or a ValueError naming the fix."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 1 < threshold <= 100:
        raise ValueError(f"--threshold is RULER's score in percent (above 1, at most 100), e.g. 85.6; "
                         f"got {threshold!r}.")
    return threshold


def check_fraction(fraction) -> float:
    """NoLiMa's share of the shortest length's score (above 0, at most 1), or a ValueError naming the fix."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ValueError(f"--relative-fraction is the share of a row's shortest-length score a length must keep, "
                         f"above 0 and at most 1, e.g. 0.85 (NoLiMa's); got {fraction!r}.")
    return fraction


def _cannot_hold(output: Path, reason: str) -> ValueError:
    return ValueError(f"--output {str(output)!r} cannot hold the report ({reason}): give a folder you can write to.")


def check_output(output: str | Path) -> Path:
    """The report folder, checked before any work and without creating it: an existing folder must
    take a file, a new one's nearest existing parent must be a folder we can write in."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise ValueError(f"--output {str(output)!r} is a file, not a folder: give a folder for the report.")
    if output.is_dir():
        try:
            probe = output / f".lmeval-ctx-write-test-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as error:
            raise _cannot_hold(output, error.strerror or str(error)) from error
        return output
    parent = next(folder for folder in output.absolute().parents if folder.exists())
    if not parent.is_dir():
        raise _cannot_hold(output, f"{str(parent)!r} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise _cannot_hold(output, f"{str(parent)!r} is not writable")
    return output


def _create(output: Path) -> Path:
    """Create the report folder, once the input has been read and found good."""
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _cannot_hold(output, error.strerror or str(error)) from error
    return output


def write_csv(path: Path, table: Table) -> Path:
    """The leaderboard's CSV: every column, full precision."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(table.csv_header)
        writer.writerows(table.csv_rows)
    return path


def write_report(folders: list[str | Path], output: str | Path, log=print,
                 threshold: float = RULER_THRESHOLD, fraction: float = RELATIVE_FRACTION) -> dict:
    """Write the leaderboard, plots and page of the runs under ``folders`` to ``output``.

    ``threshold``: RULER's absolute effective-length threshold (percent); ``fraction``: NoLiMa's
    relative one (the share of each row's shortest-length score).

    Returns {"table": the Markdown text, "files": the paths written, "runs": the rows,
    "leaderboard": the :class:`Table`}.
    """
    threshold, fraction = check_threshold(threshold), check_fraction(fraction)
    output = check_output(output)
    runs = read_runs(folders)
    table = leaderboard(runs, threshold, fraction)
    text = markdown_table(table)
    output = _create(output)
    (output / "leaderboard.md").write_text(text)
    files = [output / "leaderboard.md", write_csv(output / "leaderboard.csv", table)]
    files += plot_heatmaps(runs, output, log)
    files += plot_curves(runs, output, threshold)
    files.append(write_page(output / "index.html", table, runs, [p for p in files if p.suffix == ".png"]))
    return {"table": text, "files": files, "runs": runs, "leaderboard": table}
