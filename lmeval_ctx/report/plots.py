"""The report's plots: one per per-length curve (a line per method) and passkey heatmaps."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from lmeval_ctx.report.write import PERPLEXITY, RULER, Run, _slug, _suites

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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


def _curves(runs: list[Run]) -> list[tuple[str, object, str | None]]:
    """(title, suite, member or None for the suite average) of every per-length curve."""
    out = []
    for suite in _suites(runs):
        members = sorted({name for run in runs for name in run.suite_values(suite)})
        out += [(member, suite, member) for member in members]
        if len(members) > 1 and suite.name not in ("passkey", "longppl"):
            out.append((f"{suite.name} average", suite, None))
    return out


def _legend_label(run: Run, runs: list[Run]) -> str:
    same = [r for r in runs if r.label == run.label]
    return run.label if len(same) == 1 else f"{run.label} ({run.note or same.index(run) + 1})"[:60]


def plot_curve(model: str, runs: list[Run], title: str, suite, member: str | None, path: Path,
               threshold: float) -> bool:
    """One line per row: the member's (or the suite average's) value by length; False if nothing to draw."""
    from matplotlib.ticker import LogLocator, NullLocator, ScalarFormatter

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    drawn, all_lengths, values_seen = 0, set(), []
    for index, run in enumerate(runs):
        if member is None:
            points = {n: (v, None) for n, v in run.suite_average(suite).items()}
        else:
            points = {n: (m.value, m.interval) for n, m in run.suite_values(suite).get(member, {}).items()}
        if not points:
            continue
        lengths = sorted(points)
        values = [points[n][0] for n in lengths]
        all_lengths |= set(lengths)
        values_seen += values
        style = dict(marker=MARKERS[index % len(MARKERS)], markersize=max(4, 10 - 1.5 * index), linewidth=1.5,
                     label=_legend_label(run, runs), capsize=4)
        if any(points[n][1] for n in lengths):
            # clipped at 0: an interval's bound can sit a rounding error past its value (0/n)
            lower = [max(0.0, v - points[n][1][0]) if points[n][1] else 0.0 for n, v in zip(lengths, values)]
            upper = [max(0.0, points[n][1][1] - v) if points[n][1] else 0.0 for n, v in zip(lengths, values)]
            ax.errorbar(lengths, values, yerr=[lower, upper], **style)
        else:
            ax.errorbar(lengths, values, **style)
        drawn += 1
    if not drawn:
        plt.close(fig)
        return False
    trained = sorted({run.original_max_length for run in runs if run.original_max_length})
    for length in trained:
        ax.axvline(length, color="grey", linestyle="--", linewidth=1)
        ax.annotate(f"trained length {length:,}", (length, 1), xycoords=("data", "axes fraction"),
                    xytext=(-4, -14), textcoords="offset points", ha="right", color="grey", fontsize=8)
    ticks = sorted(all_lengths | set(trained))
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [f"{n:,}" for n in ticks])
    ax.xaxis.set_minor_locator(NullLocator())
    if len(ticks) == 1:
        ax.set_xlim(ticks[0] / 1.5, ticks[0] * 1.5)
    if suite is PERPLEXITY:
        if max(values_seen) / min(values_seen) > 5:  # a method that explodes: log scale, readable ticks
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(ScalarFormatter())
            ax.yaxis.set_minor_locator(NullLocator())
            ax.set_ylabel("token perplexity (log scale)")
        else:
            ax.set_ylabel("token perplexity")
        ax.set_title(f"Long-range perplexity by length\n{model}", fontsize=11)
    else:
        ax.set_ylim(-0.05, 1.05) if suite.proportion else None
        bars = " (bars: 95% Wilson intervals)" if suite.proportion and member is not None else ""
        ax.set_ylabel(f"{suite.metric}{bars}" if member is not None else f"{suite.metric}, mean of tasks")
        if suite is RULER and member is None:
            ax.axhline(threshold / 100.0, color="tab:red", linestyle=":", linewidth=1)
            ax.annotate(f"effective-length threshold {threshold:g}%", (0, threshold / 100.0),
                        xycoords=("axes fraction", "data"), xytext=(4, 3), textcoords="offset points",
                        color="tab:red", fontsize=8)
        ax.set_title(f"{title} by length\n{model}", fontsize=11)
    ax.set_xlabel("context length (tokens)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(title="method", fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_curves(runs: list[Run], output: Path, threshold: float) -> list[Path]:
    """Every per-length curve of every model; the paths written."""
    by_model: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_model[run.model].append(run)
    written = []
    for model, model_runs in by_model.items():
        for title, suite, member in _curves(model_runs):
            name = "perplexity" if suite is PERPLEXITY else f"{_slug(title.replace(' average', '_average'))}"
            path = output / f"{name}_{_slug(model)}.png"
            if plot_curve(model, model_runs, title, suite, member, path, threshold):
                written.append(path)
    return written

