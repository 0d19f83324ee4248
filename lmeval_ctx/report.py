"""Leaderboards and plots from lm-eval output folders.

Reads ``results_*.json`` (and, for the heatmaps, ``samples_passkey*.jsonl``) as
lm-eval writes them with ``--output_path`` (and ``--log_samples``), from
``lmeval-ctx sweep`` or plain ``lm_eval`` runs, and writes:

- ``leaderboard.md`` / ``leaderboard.csv``: one row per model x method x factor,
  passkey accuracy and token perplexity per length, and the effective context
  length: the largest tested length whose passkey accuracy is >= 0.8 (the
  convention of YaRN, Peng et al. 2023, arXiv:2309.00071);
- ``passkey_heatmap_<model>_<method>.png``: accuracy by length x needle depth;
- ``perplexity_<model>.png``: token perplexity against length, one line per method.
"""

from __future__ import annotations

import csv
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from lmeval_ctx.lengths import per_length_metric, split_per_length_metric

EFFECTIVE_ACCURACY = 0.8
PASSKEY_METRIC, PERPLEXITY_METRIC = "acc", "token_perplexity"


@dataclass
class Run:
    """The figures of one model x method x factor, merged over its results files."""

    model: str
    method: str
    factor: float | None
    original_max_length: int | None = None
    passkey: dict[int, float] = field(default_factory=dict)  # length -> accuracy
    perplexity: dict[int, float] = field(default_factory=dict)  # length -> token perplexity
    sample_files: list[Path] = field(default_factory=list)  # passkey samples

    @property
    def key(self) -> tuple:
        return (self.model, self.method, self.factor)

    @property
    def label(self) -> str:
        return self.method if self.factor in (None, 1.0) else f"{self.method} ×{self.factor:g}"

    @property
    def effective_length(self) -> int | None:
        passing = [length for length, acc in self.passkey.items() if acc >= EFFECTIVE_ACCURACY]
        return max(passing) if passing else None


def _model_name(results: dict) -> str:
    args = results.get("config", {}).get("model_args") or {}
    if isinstance(args, str):
        args = dict(part.split("=", 1) for part in args.split(",") if "=" in part)
    if args.get("gguf_file"):
        return Path(str(args["gguf_file"])).stem
    pretrained = str(args.get("pretrained") or results.get("model_name") or "model")
    return Path(pretrained).name if Path(pretrained).is_absolute() else pretrained


def _lengths_and_values(metrics: dict, config: dict, metric: str) -> dict[int, float]:
    """``{length: value}`` of ``metric`` for a fixed-length task or a per-length one."""
    out = {}
    fixed = (config.get("dataset_kwargs") or {}).get("fixed_length")
    for name, value in metrics.items():
        base, _, filter_name = name.partition(",")
        if filter_name != "none" or not isinstance(value, (int, float)):
            continue
        if base == metric and fixed is not None:
            out[int(fixed)] = float(value)
        elif (split := split_per_length_metric(base)) and split[0] == metric:
            out[split[1]] = float(value)
    return out


def read_runs(folders: list[str | Path]) -> list[Run]:
    """Every run found under ``folders``; a clear error for a folder with no lm-eval results."""
    runs: dict[tuple, Run] = {}
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise ValueError(f"{str(folder)!r} is not a folder.")
        files = sorted(folder.rglob("results_*.json"))
        if not files:
            raise ValueError(
                f"{str(folder)!r} holds no lm-eval results (results_*.json): give the --output_path of an lm_eval "
                "run or of lmeval-ctx sweep."
            )
        for path in files:
            try:
                results = json.loads(path.read_text())
                scores = results["results"]
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise ValueError(f"{str(path)!r} is not an lm-eval results file ({error}).") from error
            extension = results.get("config", {}).get("context_extension") or {}
            method = extension.get("scaling", "none")
            factor = extension.get("factor")
            model = _model_name(results)
            run = runs.setdefault((model, method, factor), Run(model, method, factor))
            run.original_max_length = extension.get("original_max_length") or run.original_max_length
            for task, metrics in scores.items():
                config = results.get("configs", {}).get(task, {})
                if task.startswith("passkey"):
                    run.passkey.update(_lengths_and_values(metrics, config, PASSKEY_METRIC))
                    run.sample_files += sorted(path.parent.glob(f"samples_{task}_*.jsonl"))
                elif task.startswith("longppl"):
                    run.perplexity.update(_lengths_and_values(metrics, config, PERPLEXITY_METRIC))
    usable = [run for run in runs.values() if run.passkey or run.perplexity]
    if not usable:
        raise ValueError("No passkey or longppl results in " + ", ".join(map(str, folders)) + ".")
    return sorted(usable, key=lambda r: (r.model, r.method != "none", r.method, r.factor or 0))


def leaderboard(runs: list[Run]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the leaderboard (values as text; '' where not measured)."""
    passkey_lengths = sorted({n for run in runs for n in run.passkey})
    ppl_lengths = sorted({n for run in runs for n in run.perplexity})
    header = ["model", "method", "factor"]
    header += [f"passkey@{n}" for n in passkey_lengths] + [f"ppl@{n}" for n in ppl_lengths]
    header += ["effective length"] if passkey_lengths else []
    rows = []
    for run in runs:
        row = [run.model, run.method, "" if run.factor is None else f"{run.factor:g}"]
        row += [f"{run.passkey[n]:.2f}" if n in run.passkey else "" for n in passkey_lengths]
        row += [f"{run.perplexity[n]:.2f}" if n in run.perplexity else "" for n in ppl_lengths]
        if passkey_lengths:
            effective = run.effective_length
            row.append(str(effective) if effective else (f"< {min(run.passkey)}" if run.passkey else ""))
        rows.append(row)
    return header, rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    note = (f"\npasskey@L: passkey retrieval accuracy at L tokens; ppl@L: token perplexity with L tokens of "
            f"context. Effective length: the largest tested length whose passkey accuracy is ≥ {EFFECTIVE_ACCURACY} "
            "(YaRN's convention).\n")
    return "\n".join(lines) + "\n" + note


def passkey_grid(run: Run) -> tuple[list[int], list[float], list[list[float | None]]] | None:
    """(lengths, depths, accuracy[depth][length]) from the run's logged samples, or None without samples."""
    cells: dict[tuple[int, float], list[float]] = defaultdict(list)
    for path in run.sample_files:
        for line in path.read_text().splitlines():
            sample = json.loads(line)
            doc = sample.get("doc", {})
            length, depth = doc.get("length"), doc.get("depth")
            if length is None or depth is None:
                continue
            value = sample.get(PASSKEY_METRIC, sample.get(per_length_metric(PASSKEY_METRIC, length)))
            if value is None:
                continue
            cells[(int(length), round(float(depth), 4))].append(float(value))
    if not cells:
        return None
    lengths = sorted({length for length, _ in cells})
    depths = sorted({depth for _, depth in cells})
    grid = [[(sum(cells[(n, d)]) / len(cells[(n, d)])) if (n, d) in cells else None for n in lengths]
            for d in depths]
    return lengths, depths, grid


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def plot_heatmap(run: Run, grid, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

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


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def plot_perplexity(model: str, runs: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, NullLocator, ScalarFormatter

    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    for index, run in enumerate(runs):
        lengths = sorted(run.perplexity)
        # shrinking markers keep a line visible when another lies exactly on it
        ax.plot(lengths, [run.perplexity[n] for n in lengths], marker=MARKERS[index % len(MARKERS)],
                markersize=max(4, 10 - 1.5 * index), linewidth=1.5, label=run.label)
    trained = {run.original_max_length for run in runs if run.original_max_length}
    for length in sorted(trained):
        ax.axvline(length, color="grey", linestyle="--", linewidth=1)
        ax.annotate(f"trained length {length:,}", (length, 1), xycoords=("data", "axes fraction"),
                    xytext=(-4, -14), textcoords="offset points", ha="right", color="grey", fontsize=8)
    all_lengths = sorted({n for run in runs for n in run.perplexity})
    ax.set_xscale("log", base=2)
    ax.set_xticks(all_lengths, [f"{n:,}" for n in all_lengths])
    ax.xaxis.set_minor_locator(NullLocator())
    values = [v for run in runs for v in run.perplexity.values()]
    if max(values) / min(values) > 5:  # a method that explodes: log scale, with readable ticks
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_locator(NullLocator())
        ax.set_ylabel("token perplexity (log scale)")
    else:
        ax.set_ylabel("token perplexity")
    ax.set_xlabel("evaluated length (tokens)")
    ax.set_title(f"Long-range perplexity by length\n{model}", fontsize=11)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(title="method")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(folders: list[str | Path], output: str | Path, log=print) -> dict:
    """Write the leaderboard and plots of the runs under ``folders`` to ``output``; return what was written."""
    runs = read_runs(folders)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    header, rows = leaderboard(runs)
    table = markdown_table(header, rows)
    (output / "leaderboard.md").write_text(table)
    with open(output / "leaderboard.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    written = {"table": table, "files": [output / "leaderboard.md", output / "leaderboard.csv"], "skipped": []}
    for run in runs:
        if not run.passkey:
            continue
        grid = passkey_grid(run)
        if grid is None:
            message = (f"{run.model}, {run.label}: no passkey samples (run lm_eval with --log_samples); "
                       "heatmap skipped")
            written["skipped"].append(message)
            log(message)
            continue
        path = output / f"passkey_heatmap_{_slug(run.model)}_{_slug(run.label.replace(' ×', '_x'))}.png"
        plot_heatmap(run, grid, path)
        written["files"].append(path)
    by_model: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        if run.perplexity:
            by_model[run.model].append(run)
    for model, model_runs in by_model.items():
        path = output / f"perplexity_{_slug(model)}.png"
        plot_perplexity(model, model_runs, path)
        written["files"].append(path)
    return written
