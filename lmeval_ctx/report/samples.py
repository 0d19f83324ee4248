"""A run's logged samples (``samples_<task>_<stamp>.jsonl``, lm-eval's ``--log_samples``).

They give the sample count and 0/1-ness behind each accuracy (for the Wilson intervals)
and the passkey accuracy by length and needle depth (for the heatmaps). A samples file is
read with the results file of the same run only, and must match lm-eval's task hash there.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path

from lmeval_ctx.report.results import PASSKEY, PASSKEY_METRIC, Run, TaskResult
from lmeval_ctx.taskdata.lengths import per_length_metric


def number(value) -> float | None:
    """``value`` as a float when it is a number (not a bool), else None."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def samples_file(results_path: Path, task: str) -> Path | None:
    """The samples file of ``task`` written by the same run as results file ``results_path``.

    lm-eval names both after the run's own time stamp (``results_<stamp>.json``,
    ``samples_<task>_<stamp>.jsonl``) in one folder: the pairing is by that exact stamp,
    never by a pattern that another run's files could match.
    """
    stamp = results_path.stem[len("results_"):]
    candidate = results_path.parent / f"samples_{task}_{stamp}.jsonl"
    return candidate if candidate.is_file() else None


def read_samples(path: Path) -> list[dict]:
    """Every sample of a samples file; a truncated or corrupt line is an error naming the file and line."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise TypeError("a line is not a JSON object")
            except (json.JSONDecodeError, TypeError) as error:
                raise ValueError(f"{str(path)!r} line {line_number} is not an lm-eval sample ({error}); "
                                 "the file is truncated or corrupt: re-run with --log_samples.") from error
            rows.append(row)
    return rows


def check_task_hash(results_path: Path, samples_path: Path, rows: list[dict], task: str) -> None:
    """The samples must be the ones the results were computed from (lm-eval's own task hash)."""
    try:
        expected = json.loads(results_path.read_text()).get("task_hashes", {}).get(task)
    except json.JSONDecodeError:
        return
    if not expected or not all("doc_hash" in r and "prompt_hash" in r and "target_hash" in r for r in rows):
        return
    joined = "".join(r["doc_hash"] + r["prompt_hash"] + r["target_hash"] for r in rows)
    if hashlib.sha256(joined.encode("utf-8")).hexdigest() != expected:
        raise ValueError(f"{str(samples_path)!r} does not hold the samples of {str(results_path)!r} (lm-eval's "
                         f"task hash of {task} differs): the files come from different runs.")


def _scored_filter(rows: list[dict]):
    """The filter whose samples count: lm-eval's ``none`` where there is one, else the first by name."""
    filters = {row.get("filter") for row in rows}
    return "none" if "none" in filters else sorted(filters, key=str)[0] if filters else None


def add_sample_counts(results_path: Path, result: TaskResult) -> None:
    """n and 0/1-ness per length (or of the primary metric) from the run's own samples."""
    if result.samples is None:
        return
    rows = read_samples(result.samples)
    check_task_hash(results_path, result.samples, rows, result.task)
    keep = _scored_filter(rows)
    scored = [row for row in rows if row.get("filter") == keep]
    scores: dict[int, list[float]] = defaultdict(list)
    for row in scored:
        for name, length in result.sample_metrics.items():
            value = number(row.get(name))
            if value is not None and value != -1:
                scores[length].append(value)
    for length, measure in result.values.items():
        values = scores.get(length)
        if values:
            measure.n = len(values)
            measure.binary = all(v in (0.0, 1.0) for v in values)
    if result.short is not None:
        values = [v for row in scored for v in [number(row.get(result.metric.partition(",")[0]))] if v is not None]
        if values:
            result.short.n = len(values)
            result.short.binary = all(v in (0.0, 1.0) for v in values)


def passkey_grid(run: Run) -> tuple[list[int], list[float], list[list[float | None]]] | None:
    """(lengths, depths, accuracy[depth][length]) from the row's own logged samples, or None without."""
    cells: dict[tuple[int, float], list[float]] = defaultdict(list)
    for result in run.tasks.values():
        if result.suite is not PASSKEY or result.samples is None:
            continue
        for sample in read_samples(result.samples):
            if sample.get("filter", "none") != "none":
                continue
            doc = sample.get("doc", {})
            length, depth = doc.get("length"), doc.get("depth")
            if length is None or depth is None or int(length) not in result.values:
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
