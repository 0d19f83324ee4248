"""The report's data model: suites, measures, what one results file holds, the rows and the table.

A row (:class:`Run`) is one model x method x every setting that can change a result; it
holds the :class:`TaskResult` of each task it ran, a per-length task's values as one
:class:`Measure` per length. The effective-length rules live here, with the rows they
read: passkey's largest length with accuracy >= 0.8 (YaRN, Peng et al. 2023,
arXiv:2309.00071), RULER's largest length whose suite average reaches a threshold
(85.6 %, Llama-2-7B at 4k; Hsieh et al. 2024, arXiv:2404.06654), and NoLiMa's relative
one: the largest length whose score stays >= 85 % of the row's own score at its shortest
length (Modarressi et al. 2025, arXiv:2502.05167), which a fixed threshold cannot tell apart
from a weak model's collapse or a strong model's decline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from lmeval_ctx.methods.catalog import factor_text
from lmeval_ctx.report.statistics import wilson_interval

EFFECTIVE_ACCURACY = 0.8  # passkey's rule (YaRN's convention)
RULER_THRESHOLD = 85.6  # RULER's rule: Llama-2-7B's average at 4k, in percent
RELATIVE_FRACTION = 0.85  # NoLiMa's rule: the share of the shortest length's score a length must keep
PASSKEY_METRIC, PERPLEXITY_METRIC = "acc", "token_perplexity"
# longppl's key-token perplexity (LongPPL; Fang et al. 2024, arXiv:2410.23771) and its key-token count
KEY_PERPLEXITY_METRIC, KEY_COUNT_METRIC = "key_token_perplexity", "key_tokens"
NO_DATE = datetime.min.replace(tzinfo=timezone.utc)  # sorts a file or row without a date first


@dataclass
class Measure:
    """One figure of one task at one length (or of a task inside the window)."""

    value: float
    n: int | None = None  # samples behind it
    stderr: float | None = None
    binary: bool = False  # every per-sample score is 0 or 1, so a Wilson interval applies

    @property
    def interval(self) -> tuple[float, float] | None:
        """The 95 % Wilson interval of an accuracy whose samples are known, else None."""
        if self.binary and self.n and 0.0 <= self.value <= 1.0:
            return wilson_interval(self.value, self.n)
        return None


@dataclass(frozen=True)
class Suite:
    """A family of per-length tasks read, averaged and ruled on together."""

    name: str
    metric: str  # what the values are
    proportion: bool  # accuracies (Wilson intervals, the ≈ mark)
    weight_by_size: bool = False  # the suite average per length: by samples (lm-eval's babilong group) or not

    @property
    def one_member(self) -> bool:
        """Our suites (passkey, longppl) show their tasks as one curve; RULER and BABILong one per task."""
        return self in (PASSKEY, PERPLEXITY)

    def member(self, task: str) -> str:
        """The member of the suite ``task`` counts for: the suite itself for passkey and longppl."""
        return self.name if self.one_member else task


PASSKEY = Suite("passkey", "passkey accuracy", True)
PERPLEXITY = Suite("longppl", "token perplexity", False)
RULER = Suite("ruler", "RULER score (string match, 0-1)", True)
BABILONG = Suite("babilong", "BABILong accuracy", True, weight_by_size=True)
SUITE_ORDER = {PASSKEY.name: 0, RULER.name: 1, BABILONG.name: 2, PERPLEXITY.name: 4}  # any other suite: 3


@dataclass
class TaskResult:
    """What one results file says about one task."""

    task: str
    suite: Suite | None  # None: a task inside the window (no lengths)
    values: dict[int, Measure] = field(default_factory=dict)  # length -> measure (per-length tasks)
    sample_metrics: dict[str, int] = field(default_factory=dict)  # per-sample metric name -> length
    short: Measure | None = None  # the primary metric of a task inside the window
    # a per-length task's other figures by metric and length (longppl's key-token perplexity and count)
    extra: dict[str, dict[int, Measure]] = field(default_factory=dict)
    metric: str = ""
    settings: str = ""  # canonical JSON of what determines the task's results besides the model
    data_identity: str | None = None
    samples: Path | None = None

    def same_task_as(self, other: TaskResult | None) -> bool:
        """Whether ``other`` ran this task with the same settings and data (lengths aside)."""
        return other is not None and other.settings == self.settings and other.data_identity == self.data_identity


@dataclass
class ResultsFile:
    """One ``results_*.json``, read."""

    path: Path
    run_key: str  # canonical JSON of model identity + context extension
    model_key: str  # canonical JSON of the model identity alone
    model: str  # display name
    method: str
    factor: float | None
    params: tuple  # the method's own parameters, ((key, value), ...) sorted: see read.method_parameters
    extension: dict
    model_args: dict
    date: datetime | None
    lm_eval_version: str | None
    tasks: dict[str, TaskResult]


def parameters_text(params) -> str:
    """``group_size=4, neighbor_window=1024``: numbers in their shortest exact form, booleans as
    true/false, keys sorted (as the sweep names its points)."""
    def shown(value) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            return factor_text(value)
        return str(value)

    return ", ".join(f"{key}={shown(value)}" for key, value in params)


@dataclass
class Run:
    """One leaderboard row: the results files of one model x method x settings that do not overlap."""

    model: str
    method: str
    factor: float | None
    run_key: str
    model_key: str
    params: tuple = ()  # the method's own parameters ((key, value), ...), sorted: part of the label
    extension: dict = field(default_factory=dict)
    model_args: dict = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    dates: list[datetime] = field(default_factory=list)
    lm_eval_versions: set = field(default_factory=set)
    tasks: dict[str, TaskResult] = field(default_factory=dict)
    note: str = ""  # what tells this row apart from rows with the same label

    @property
    def original_max_length(self) -> int | None:
        return self.extension.get("original_max_length")

    @property
    def window(self) -> int | None:
        """The evaluation window (max_length) from the record, else the model arguments."""
        value = self.extension.get("max_length") or self.model_args.get("max_length")
        return int(value) if value not in (None, "") else None

    @property
    def parameters(self) -> str:
        """The method's parameters as text ("" without any): ``group_size=4, neighbor_window=1024``."""
        return parameters_text(self.params)

    @property
    def method_label(self) -> str:
        """The method with its parameters: ``self_extend (group_size=4, neighbor_window=1024)``."""
        return self.method + (f" ({self.parameters})" if self.params else "")

    @property
    def label(self) -> str:
        """Method, factor and parameters: ``yarn ×4``, ``self_extend (group_size=4, neighbor_window=1024)``."""
        scaled = self.method if self.factor in (None, 1.0) else f"{self.method} ×{factor_text(self.factor)}"
        return scaled + (f" ({self.parameters})" if self.params else "")

    @property
    def date(self) -> datetime | None:
        """The date of the newest results file in the row."""
        return max(self.dates) if self.dates else None

    def suite_values(self, suite: Suite) -> dict[str, dict[int, Measure]]:
        """{member task (or the suite for passkey/longppl): {length: Measure}}."""
        out: dict[str, dict[int, Measure]] = {}
        for task, result in sorted(self.tasks.items()):
            if result.suite == suite:
                out.setdefault(suite.member(task), {}).update(result.values)
        return out

    def task_at(self, suite: Suite, member: str, length: int) -> TaskResult | None:
        """The task whose value :meth:`suite_values` shows for ``member`` at ``length`` (the last in task order)."""
        found = None
        for task, result in sorted(self.tasks.items()):
            if result.suite == suite and suite.member(task) == member and length in result.values:
                found = result
        return found

    def suite_average(self, suite: Suite) -> dict[int, float]:
        """The suite's average per length over its members, where every member has that length."""
        members = self.suite_values(suite)
        if not members:
            return {}
        lengths = set.intersection(*(set(values) for values in members.values()))
        out = {}
        for length in sorted(lengths):
            measures = [values[length] for values in members.values()]
            if suite.weight_by_size and all(m.n for m in measures):
                out[length] = sum(m.value * m.n for m in measures) / sum(m.n for m in measures)
            else:
                out[length] = sum(m.value for m in measures) / len(measures)
        return out

    @property
    def passkey_accuracy(self) -> dict[int, float]:
        """Passkey accuracy by length."""
        return {n: m.value for n, m in self.suite_values(PASSKEY).get(PASSKEY.name, {}).items()}

    @property
    def passkey_effective_length(self) -> int | None:
        """Passkey's rule: the largest tested length whose accuracy is >= 0.8."""
        passing = [length for length, acc in self.passkey_accuracy.items() if acc >= EFFECTIVE_ACCURACY]
        return max(passing) if passing else None

    def ruler_effective_length(self, threshold: float = RULER_THRESHOLD) -> int | None:
        """RULER's rule: the largest length whose suite average (in %) is >= ``threshold``."""
        passing = [n for n, v in self.suite_average(RULER).items() if 100.0 * v >= threshold]
        return max(passing) if passing else None

    def relative_effective_length(self, suite: Suite, fraction: float = RELATIVE_FRACTION) -> int | None:
        """NoLiMa's rule: the largest length whose score (the suite average) is >= ``fraction`` x the row's own
        score at its shortest length; None without lengths or when that score is 0 (every length would pass)."""
        scores = self.suite_average(suite)
        if not scores or scores[min(scores)] <= 0:
            return None
        passing = [n for n, v in scores.items() if v >= fraction * scores[min(scores)]]
        return max(passing)

    def extra_values(self, metric: str) -> dict[int, Measure]:
        """A per-length metric beside the suite's own, by length (longppl's ``key_token_perplexity``)."""
        out: dict[int, Measure] = {}
        for _, result in sorted(self.tasks.items()):
            out.update(result.extra.get(metric, {}))
        return out


def suites_in(runs: list[Run]) -> list[Suite]:
    """The suites the rows ran, in the table's order: passkey, RULER, BABILong, others, longppl."""
    seen = []
    for run in runs:
        for result in run.tasks.values():
            if result.suite is not None and result.suite not in seen:
                seen.append(result.suite)
    return sorted(seen, key=lambda s: (SUITE_ORDER.get(s.name, 3), s.name))


def suite_members(runs: list[Run], suite: Suite) -> list[str]:
    """The members of ``suite`` any row ran, sorted."""
    return sorted({name for run in runs for name in run.suite_values(suite)})


def suite_lengths(runs: list[Run], suite: Suite) -> list[int]:
    """Every length any row ran in ``suite``, sorted."""
    return sorted({n for run in runs for values in run.suite_values(suite).values() for n in values})


@dataclass
class Table:
    """The leaderboard: Markdown columns (compact) and CSV columns (everything, full precision)."""

    header: list[str]
    rows: list[list[str]]
    csv_header: list[str]
    csv_rows: list[list[str]]
    legend: list[str]
    notes: list[str]
