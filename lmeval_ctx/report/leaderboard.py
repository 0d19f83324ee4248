"""The leaderboard: one column function per kind of column, the ``none`` baseline, the Markdown text.

Every column is a :class:`Column`: a title and how a row's cell reads in the compact
Markdown table and in the full-precision CSV (either may be absent). What each column and
rule means: docs/report.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from lmeval_ctx.methods.catalog import factor_text
from lmeval_ctx.report.results import (
    EFFECTIVE_ACCURACY, KEY_COUNT_METRIC, KEY_PERPLEXITY_METRIC, NO_DATE, PASSKEY, PERPLEXITY, RELATIVE_FRACTION,
    RULER, RULER_THRESHOLD, Measure, Run, Suite, Table, suite_lengths, suite_members, suites_in,
)
from lmeval_ctx.report.statistics import weighted_average

# members of a suite shown one by one in the Markdown table (the CSV and the page show all)
MAX_MEMBER_COLUMNS = 4
Cell = Callable[[Run], str]


@dataclass(frozen=True)
class Column:
    """One column: its title and a row's cell in the Markdown table and in the CSV (None: not there)."""

    title: str
    markdown: Cell | None
    csv: Cell | None


def compact(value: float | None, digits: int = 3) -> str:
    """A value for the Markdown table: fixed decimals."""
    return "" if value is None else f"{value:.{digits}f}"


def full(value: float | None) -> str:
    """A value for the CSV: every digit, as in the results JSON."""
    return "" if value is None else repr(float(value))


def _date_text(run: Run) -> str:
    return run.date.strftime("%Y-%m-%d %H:%M") if run.date else ""


# -- the none baseline --------------------------------------------------------------------------
def baseline(run: Run, runs: list[Run], ran_the_same: Callable[[Run], bool]) -> Run | None:
    """The ``none`` row ``run`` is compared with: the same model, method ``none``, and for which
    ``ran_the_same`` holds (the same task with the same settings and data, lengths aside); without
    method parameters where there is one (``none`` with ``logn`` or ``rope_theta`` is a method of
    its own), the newest when it was run more than once. None when there is none or it is ``run``."""
    candidates = [r for r in runs if r.model_key == run.model_key and r.method == "none" and ran_the_same(r)]
    candidates = [r for r in candidates if not r.params] or candidates
    if not candidates:
        return None
    chosen = max(candidates, key=lambda r: r.date or NO_DATE)
    return None if chosen is run else chosen


def baseline_measure(run: Run, runs: list[Run], suite: Suite, member: str, length: int) -> Measure | None:
    """The ``none`` baseline's value of ``member`` at ``length`` (see :func:`baseline`)."""
    mine = run.task_at(suite, member, length)
    if mine is None:
        return None
    none = baseline(run, runs, lambda other: mine.same_task_as(other.task_at(suite, member, length)))
    return None if none is None else none.task_at(suite, member, length).values[length]


def baseline_short(run: Run, runs: list[Run], task: str) -> Measure | None:
    """The ``none`` baseline's primary metric of ``task``, a task inside the window (see :func:`baseline`)."""
    mine = run.tasks[task]

    def ran_the_same(other: Run) -> bool:
        theirs = other.tasks.get(task)
        return mine.same_task_as(theirs) and theirs.metric == mine.metric and theirs.short is not None

    none = baseline(run, runs, ran_the_same)
    return None if none is None else none.tasks[task].short


# -- per-length columns -------------------------------------------------------------------------
def value_columns(suite: Suite, member: str, length: int, runs: list[Run], in_markdown: bool) -> list[Column]:
    """``member@L`` (``ppl@L``), and for accuracies its sample count and 95 % interval (CSV only)."""
    def measure(run: Run) -> Measure | None:
        return run.suite_values(suite).get(member, {}).get(length)

    def markdown(run: Run) -> str:
        value = measure(run)
        if value is None:
            return ""
        text = compact(value.value, 2 if suite is PERPLEXITY else 3)
        reference = baseline_measure(run, runs, suite, member, length) if suite.proportion else None
        interval = reference.interval if reference is not None else None
        return "≈" + text if interval and interval[0] <= value.value <= interval[1] else text

    def sample_count(run: Run) -> str:
        value = measure(run)
        return "" if value is None or value.n is None else str(value.n)

    def interval(run: Run) -> str:
        value = measure(run)
        bounds = value.interval if value is not None else None
        return "" if bounds is None else f"{bounds[0]:.4f}-{bounds[1]:.4f}"

    def csv_value(run: Run) -> str:
        value = measure(run)
        return "" if value is None else full(value.value)

    title = f"ppl@{length}" if suite is PERPLEXITY else f"{member}@{length}"
    columns = [Column(title, markdown if in_markdown else None, csv_value)]
    if suite.proportion:
        columns += [Column(f"{title} n", None, sample_count), Column(f"{title} 95% CI", None, interval)]
    return columns


def average_column(suite: Suite, length: int) -> Column:
    """``<suite> avg@L``: the suite average at L."""
    return Column(f"{suite.name} avg@{length}", lambda run: compact(run.suite_average(suite).get(length)),
                  lambda run: full(run.suite_average(suite).get(length)))


def effective_length_column(suite: Suite, threshold: float) -> Column:
    """Passkey's or RULER's effective length; ``< L`` (the shortest length) where no length passes."""
    def cell(run: Run) -> str:
        lengths = sorted({n for values in run.suite_values(suite).values() for n in values})
        if not lengths:
            return ""
        effective = run.passkey_effective_length if suite is PASSKEY else run.ruler_effective_length(threshold)
        return str(effective) if effective else f"< {lengths[0]}"

    rule = f"acc ≥ {EFFECTIVE_ACCURACY}" if suite is PASSKEY else f"avg ≥ {threshold:g}%"
    return Column(f"{suite.name} effective length ({rule})", cell, cell)


def relative_effective_length_column(suite: Suite, fraction: float) -> Column:
    """NoLiMa's relative effective length; ``< L`` where even the shortest fails (never, with a score there),
    ``n/a`` where the shortest length scores 0."""
    def cell(run: Run) -> str:
        scores = run.suite_average(suite)
        if not scores:
            return ""
        effective = run.relative_effective_length(suite, fraction)
        return "n/a" if effective is None else str(effective)

    return Column(f"{suite.name} relative effective length (≥ {fraction:.0%} of own shortest)", cell, cell)


def key_token_columns(runs: list[Run]) -> list[Column]:
    """longppl's ``key ppl@L`` (LongPPL) and, in the CSV, ``key tokens@L``, where any row chose key tokens."""
    lengths = sorted({n for run in runs for n in run.extra_values(KEY_PERPLEXITY_METRIC)})

    def cell(metric: str, length: int, text: Callable[[float], str]) -> Cell:
        def read(run: Run) -> str:
            measure = run.extra_values(metric).get(length)
            return "" if measure is None else text(measure.value)
        return read

    return [column for n in lengths for column in (
        Column(f"key ppl@{n}", cell(KEY_PERPLEXITY_METRIC, n, lambda v: compact(v, 2)),
               cell(KEY_PERPLEXITY_METRIC, n, full)),
        Column(f"key tokens@{n}", None, cell(KEY_COUNT_METRIC, n, lambda v: str(int(v)))))]


def weighted_average_column(suite: Suite, increasing: bool) -> Column:
    """RULER's wAvg inc (or dec) over the lengths of the suite average."""
    def value(run: Run) -> float | None:
        return weighted_average(run.suite_average(suite), increasing=increasing)

    return Column(f"{suite.name} wAvg {'inc' if increasing else 'dec'}", lambda run: compact(value(run)),
                  lambda run: full(value(run)))


def suite_columns(suite: Suite, runs: list[Run], threshold: float,
                  fraction: float = RELATIVE_FRACTION) -> tuple[list[Column], list[str]]:
    """A suite's columns (its members by length, averages, effective lengths) and their legend."""
    members, lengths = suite_members(runs, suite), suite_lengths(runs, suite)
    averaged = not suite.one_member and len(members) > 1
    in_markdown = not averaged or len(members) <= MAX_MEMBER_COLUMNS
    columns = [column for member in members for length in lengths
               for column in value_columns(suite, member, length, runs, in_markdown)]
    legend = []
    if averaged:
        columns += [average_column(suite, length) for length in lengths]
        legend.append(f"{suite.name} avg@L: the mean of {', '.join(members)} at L tokens"
                      + (", weighted by samples (as lm-eval's group)" if suite.weight_by_size else
                         " (unweighted, as RULER averages its tasks)") + "; only where every member ran L.")
    if suite is PASSKEY:
        columns += [effective_length_column(suite, threshold), relative_effective_length_column(suite, fraction)]
        legend.append(f"passkey effective length: the largest tested length whose passkey accuracy is ≥ "
                      f"{EFFECTIVE_ACCURACY} (YaRN's convention).")
    if suite is RULER:
        columns += [effective_length_column(suite, threshold), relative_effective_length_column(suite, fraction),
                    weighted_average_column(suite, True), weighted_average_column(suite, False)]
        legend.append(f"ruler effective length: the largest length whose RULER average is ≥ {threshold:g} % "
                      "(RULER's rule; 85.6 is Llama-2-7B at 4k; --threshold changes it). wAvg inc/dec: RULER's "
                      "averages over lengths with weights rising/falling linearly with the length.")
    if suite in (PASSKEY, RULER):
        legend.append(f"{suite.name} relative effective length: the largest length whose score is ≥ {fraction:.0%} "
                      "of the row's own score at its shortest length (NoLiMa, Modarressi et al. 2025); n/a where "
                      "that score is 0.")
    if suite is PERPLEXITY and (key := key_token_columns(runs)):
        columns += key
        legend.append("key ppl@L: perplexity over the key tokens only (LongPPL, Fang et al. 2024): the tokens the "
                      "run's evaluator predicts much better from the whole window than from its last K tokens, the "
                      "same tokens for every method; the CSV has their count (key tokens@L).")
    return columns, legend


# -- tasks inside the window --------------------------------------------------------------------
def short_task_columns(task: str, metric: str, runs: list[Run]) -> list[Column]:
    """``<task> <metric>``: the primary metric ± its standard error (Δ: its difference from the
    :func:`baseline`); in the CSV apart, as value, ``stderr`` and ``Δ none``."""
    def measure(run: Run) -> Measure | None:
        result = run.tasks.get(task)
        return result.short if result is not None and result.metric == metric else None

    def delta(run: Run) -> float | None:
        reference = baseline_short(run, runs, task) if measure(run) is not None else None
        return None if reference is None else measure(run).value - reference.value

    def markdown(run: Run) -> str:
        value = measure(run)
        if value is None:
            return ""
        text = compact(value.value) + ("" if value.stderr is None else f" ± {value.stderr:.3f}")
        return text + ("" if delta(run) is None else f" (Δ {delta(run):+.3f})")

    def csv_cell(field: Callable[[Measure], float | None]) -> Cell:
        return lambda run: "" if measure(run) is None else full(field(measure(run)))

    return [Column(f"{task} {metric}", markdown, csv_cell(lambda value: value.value)),
            Column(f"{task} {metric} stderr", None, csv_cell(lambda value: value.stderr)),
            Column(f"{task} {metric} Δ none", None, lambda run: full(delta(run)))]


def short_tasks(runs: list[Run]) -> list[tuple[str, str]]:
    """(task, primary metric) of every task inside the window any row ran, sorted."""
    return sorted({(task, r.metric) for run in runs for task, r in run.tasks.items() if r.suite is None})


# -- what a row is ------------------------------------------------------------------------------
def _window_text(run: Run) -> str:
    return "" if run.window is None else str(run.window)


def _data_identities(run: Run, width: int | None) -> str:
    return " ".join(f"{task}:{r.data_identity[:width]}" for task, r in sorted(run.tasks.items()) if r.data_identity)


def row_columns(runs: list[Run]) -> list[Column]:
    """Model, method, factor, window; where rows read alike, date and settings; the CSV has them all."""
    show_dates = any(run.note for run in runs)

    def where_alike(cell: Cell) -> Cell | None:
        return cell if show_dates else None

    return [
        Column("model", lambda run: run.model, lambda run: run.model),
        Column("method", lambda run: run.method_label, lambda run: run.method),
        Column("parameters", None, lambda run: run.parameters),
        Column("factor", lambda run: factor_text(run.factor), lambda run: factor_text(run.factor)),
        Column("window", _window_text, _window_text),
        Column("original length", None,
               lambda run: "" if run.original_max_length is None else str(run.original_max_length)),
        Column("date", where_alike(_date_text), lambda run: run.date.isoformat() if run.date else ""),
        Column("settings", where_alike(lambda run: run.note), lambda run: run.note),
        Column("data identity", None, lambda run: _data_identities(run, None)),
    ]


def data_column(runs: list[Run]) -> list[Column]:
    """``data``: a short form of each task's data identity, in the Markdown table where any is recorded."""
    if not any(r.data_identity for run in runs for r in run.tasks.values()):
        return []
    return [Column("data", lambda run: _data_identities(run, 10), None)]


# -- the table ----------------------------------------------------------------------------------
def columns_and_legend(runs: list[Run], threshold: float,
                       fraction: float = RELATIVE_FRACTION) -> tuple[list[Column], list[str]]:
    """Every column in order (row, suites, parameters, tasks inside the window, data) and the legend."""
    columns, legend = row_columns(runs), []
    suites = suites_in(runs)
    for suite in suites:
        more, lines = suite_columns(suite, runs, threshold, fraction)
        columns += more
        legend += lines
    if any(run.params for run in runs):
        legend.append("method: with its own parameters in parentheses, as they ran (an attention-level method's "
                      "defaults filled in); rows that differ in them are separate rows. The CSV has them in "
                      "its parameters column.")
    short = short_tasks(runs)
    columns += [column for task, metric in short for column in short_task_columns(task, metric, runs)]
    if short:
        legend.append("Inside the window: a task's primary metric ± its standard error, and Δ its difference from "
                      "the same model's `none` row that ran the task with the same settings and data (no Δ "
                      "without one).")
    if any(s.proportion for s in suites):
        legend.append("≈: within the 95 % Wilson interval of the `none` row at that length (the same model's, "
                      "with the same task settings and data; a difference these samples cannot show). The CSV "
                      "holds the intervals and sample counts.")
    return columns + data_column(runs), legend


def repeat_notes(runs: list[Run]) -> list[str]:
    """A note for each row run more than once with the same settings."""
    return [f"{run.model}, {run.label}: run more than once with the same settings; each run is its own row "
            f"(this one {_date_text(run)})." for run in runs if "repeat run" in run.note]


def leaderboard(runs: list[Run], threshold: float = RULER_THRESHOLD, fraction: float = RELATIVE_FRACTION) -> Table:
    """The table of ``runs``: per-suite values by length, effective lengths (RULER's absolute ``threshold``,
    NoLiMa's relative ``fraction``), tasks inside the window, settings."""
    columns, legend = columns_and_legend(runs, threshold, fraction)
    markdown = [column for column in columns if column.markdown is not None]
    csv = [column for column in columns if column.csv is not None]
    return Table(header=[column.title for column in markdown],
                 rows=[[column.markdown(run) for column in markdown] for run in runs],
                 csv_header=[column.title for column in csv],
                 csv_rows=[[column.csv(run) for column in csv] for run in runs],
                 legend=legend, notes=repeat_notes(runs))


def markdown_table(table: Table) -> str:
    """The leaderboard as Markdown, with its legend and notes."""
    lines = ["| " + " | ".join(table.header) + " |", "|" + "|".join("---" for _ in table.header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in table.rows]
    text = "\n".join(lines) + "\n"
    text += "\nX@L: X at L tokens (passkey: retrieval accuracy; longppl: token perplexity; RULER tasks: their " \
            "string-match score, 0-1, as lm-eval reports it). window: the evaluation window (max_length).\n"
    text += "".join(f"\n{line}" for line in table.legend)
    text += "".join(f"\n\nNote: {line}" for line in table.notes)
    return text + "\n"
