"""The report's plots: one per per-length curve (a line per method) and passkey heatmaps."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from lmeval_ctx.report.results import KEY_PERPLEXITY_METRIC, PERPLEXITY, RULER, Run, Suite, suite_members, suites_in
from lmeval_ctx.report.samples import passkey_grid

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _pyplot():
    import matplotlib  # here: matplotlib takes a second to import, and only the plots need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# -- file names ---------------------------------------------------------------------------------
def slug(text: str) -> str:
    """``text`` made file-safe."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def row_slug(run: Run, runs: list[Run]) -> str:
    """A file-name part unique to the row (the label, plus a number where labels repeat)."""
    same = [r for r in runs if r.model == run.model and r.label == run.label]
    base = f"{slug(run.model)}_{slug(run.label.replace(' ×', '_x'))}"
    return base if len(same) == 1 else f"{base}_{same.index(run) + 1}"


# -- heatmaps -----------------------------------------------------------------------------------
def plot_heatmap(run: Run, grid, path: Path) -> None:
    """Passkey accuracy by length x needle depth, on one 0-1 colour scale for every method."""
    import numpy as np

    plt = _pyplot()
    lengths, depths, values = grid
    data = np.array([[np.nan if v is None else v for v in row] for row in values])
    fig, ax = plt.subplots(figsize=(max(5.5, 2.5 + 0.9 * len(lengths)), max(3.5, 1.6 + 0.45 * len(depths))),
                           constrained_layout=True)
    image = ax.imshow(data, vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto", origin="upper")
    ax.set_xticks(range(len(lengths)), [f"{n:,}" for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:.2f}" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth (0 = start, 1 = end)")
    ax.set_title(f"Passkey accuracy: {run.label}\n{run.model}", fontsize=11)
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            if value is not None:
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(image, ax=ax, label="accuracy (same 0–1 scale for every method)")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_heatmaps(runs: list[Run], output: Path, log=print) -> list[Path]:
    """A heatmap of every row that ran passkey, from its logged samples; the paths written."""
    written = []
    for run in runs:
        if not run.passkey_accuracy:
            continue
        grid = passkey_grid(run)
        if grid is None:
            log(f"{run.model}, {run.label}: no passkey samples (run lm_eval with --log_samples); heatmap skipped")
            continue
        path = output / f"passkey_heatmap_{row_slug(run, runs)}.png"
        plot_heatmap(run, grid, path)
        written.append(path)
    return written


# -- curves by length ---------------------------------------------------------------------------
def curves(runs: list[Run]) -> list[tuple[str, Suite, str | None]]:
    """(title, suite, member or None for the suite average) of every per-length curve."""
    out = []
    for suite in suites_in(runs):
        members = suite_members(runs, suite)
        out += [(member, suite, member) for member in members]
        if len(members) > 1 and not suite.one_member:
            out.append((f"{suite.name} average", suite, None))
    return out


def legend_label(run: Run, runs: list[Run]) -> str:
    """The row's label in a plot's legend; where labels repeat, with what tells the rows apart."""
    same = [r for r in runs if r.label == run.label]
    return run.label if len(same) == 1 else f"{run.label} ({run.note or same.index(run) + 1})"[:60]


def _points(run: Run, suite: Suite, member: str | None) -> dict[int, tuple[float, tuple | None]]:
    """{length: (value, 95 % interval or None)} of the member (or the suite average) in ``run``."""
    if member is None:
        return {n: (v, None) for n, v in run.suite_average(suite).items()}
    return {n: (m.value, m.interval) for n, m in run.suite_values(suite).get(member, {}).items()}


def _draw_line(ax, index: int, label: str, points: dict) -> None:
    """One row's line, with error bars where its values have intervals."""
    lengths = sorted(points)
    values = [points[n][0] for n in lengths]
    style = dict(marker=MARKERS[index % len(MARKERS)], markersize=max(4, 10 - 1.5 * index), linewidth=1.5,
                 label=label, capsize=4)
    if any(points[n][1] for n in lengths):
        # clipped at 0: an interval's bound can sit a rounding error past its value (0/n)
        lower = [max(0.0, v - points[n][1][0]) if points[n][1] else 0.0 for n, v in zip(lengths, values)]
        upper = [max(0.0, points[n][1][1] - v) if points[n][1] else 0.0 for n, v in zip(lengths, values)]
        ax.errorbar(lengths, values, yerr=[lower, upper], **style)
    else:
        ax.errorbar(lengths, values, **style)


def _length_axis(ax, runs: list[Run], lengths: set[int]) -> None:
    """A log-2 length axis ticked at every length run, with each trained length as a dashed line."""
    from matplotlib.ticker import NullLocator

    trained = sorted({run.original_max_length for run in runs if run.original_max_length})
    for length in trained:
        ax.axvline(length, color="grey", linestyle="--", linewidth=1)
        ax.annotate(f"trained length {length:,}", (length, 1), xycoords=("data", "axes fraction"),
                    xytext=(-4, -14), textcoords="offset points", ha="right", color="grey", fontsize=8)
    ticks = sorted(lengths | set(trained))
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [f"{n:,}" for n in ticks])
    ax.xaxis.set_minor_locator(NullLocator())
    if len(ticks) == 1:
        ax.set_xlim(ticks[0] / 1.5, ticks[0] * 1.5)
    ax.set_xlabel("context length (tokens)")


def _perplexity_axis(ax, values: list[float], model: str, what: str = "token perplexity",
                     title: str = "Long-range perplexity") -> None:
    """A perplexity, on a log scale when a method explodes (readable ticks there)."""
    from matplotlib.ticker import LogLocator, NullLocator, ScalarFormatter

    if max(values) / min(values) > 5:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_locator(NullLocator())
        ax.set_ylabel(f"{what} (log scale)")
    else:
        ax.set_ylabel(what)
    ax.set_title(f"{title} by length\n{model}", fontsize=11)


def _score_axis(ax, suite: Suite, member: str | None, title: str, model: str, threshold: float) -> None:
    """A suite's score (0-1 for accuracies); on the RULER average, the effective-length threshold."""
    if suite.proportion:
        ax.set_ylim(-0.05, 1.05)
    bars = " (bars: 95% Wilson intervals)" if suite.proportion and member is not None else ""
    ax.set_ylabel(f"{suite.metric}{bars}" if member is not None else f"{suite.metric}, mean of tasks")
    if suite is RULER and member is None:
        ax.axhline(threshold / 100.0, color="tab:red", linestyle=":", linewidth=1)
        ax.annotate(f"effective-length threshold {threshold:g}%", (0, threshold / 100.0),
                    xycoords=("axes fraction", "data"), xytext=(4, 3), textcoords="offset points",
                    color="tab:red", fontsize=8)
    ax.set_title(f"{title} by length\n{model}", fontsize=11)


def _save_lines(runs: list[Run], lines: list, path: Path, value_axis) -> None:
    """One line per ``(index, run, points)`` on the length axis, ``value_axis(ax)`` labelling the values."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    for index, run, points in lines:
        _draw_line(ax, index, legend_label(run, runs), points)
    _length_axis(ax, runs, {n for _, _, points in lines for n in points})
    value_axis(ax)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(title="method", fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curve(model: str, runs: list[Run], title: str, suite: Suite, member: str | None, path: Path,
               threshold: float) -> bool:
    """One line per row: the member's (or the suite average's) value by length; False if nothing to draw."""
    lines = [(index, run, points) for index, run in enumerate(runs) if (points := _points(run, suite, member))]
    if not lines:
        return False
    values = [value for _, _, points in lines for value, _ in points.values()]
    _save_lines(runs, lines, path, lambda ax: _perplexity_axis(ax, values, model) if suite is PERPLEXITY
                else _score_axis(ax, suite, member, title, model, threshold))
    return True


def plot_key_token_curve(model: str, runs: list[Run], path: Path) -> bool:
    """Key-token perplexity (LongPPL) by length, a line per row that chose key tokens; False if none did."""
    lines = [(index, run, {n: (m.value, None) for n, m in run.extra_values(KEY_PERPLEXITY_METRIC).items()
                           if m.value == m.value})  # NaN: no key token at that length
             for index, run in enumerate(runs)]
    lines = [line for line in lines if line[2]]
    if not lines:
        return False
    values = [value for _, _, points in lines for value, _ in points.values()]
    _save_lines(runs, lines, path, lambda ax: _perplexity_axis(ax, values, model, "key-token perplexity",
                                                               "Key-token perplexity (LongPPL)"))
    return True


def plot_curves(runs: list[Run], output: Path, threshold: float) -> list[Path]:
    """Every per-length curve of every model; the paths written."""
    by_model: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_model[run.model].append(run)
    written = []
    for model, model_runs in by_model.items():
        for title, suite, member in curves(model_runs):
            name = "perplexity" if suite is PERPLEXITY else slug(title.replace(" average", "_average"))
            path = output / f"{name}_{slug(model)}.png"
            if plot_curve(model, model_runs, title, suite, member, path, threshold):
                written.append(path)
        path = output / f"key_token_perplexity_{slug(model)}.png"
        if plot_key_token_curve(model, model_runs, path):
            written.append(path)
    return written
