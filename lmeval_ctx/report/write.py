"""Leaderboards, plots and a page from lm-eval output folders.

Reads ``results_*.json`` (and the ``samples_<task>_<same stamp>.jsonl`` files of the
same run) as lm-eval writes them with ``--output_path`` (and ``--log_samples``),
from ``lmeval-ctx sweep`` or plain ``lm_eval`` runs, and writes ``leaderboard.md``,
``leaderboard.csv``, one plot per per-length curve, passkey heatmaps and
``index.html``. What each column and rule means: docs/report.md.

Per-length suites: our ``passkey*`` (accuracy) and ``longppl*`` (token perplexity),
lm-eval's RULER tasks (Hsieh et al. 2024, arXiv:2404.06654; one metric named by
each length, -1 for lengths not run) and BABILong (Kuratov et al. 2024,
arXiv:2406.10149; one length per run, named in the task's ``max_seq_lengths``), and
any task whose metrics are named by a length the way these are. Effective length
by each suite's rule: passkey's largest length with accuracy >= 0.8 (YaRN, Peng et
al. 2023, arXiv:2309.00071), RULER's largest length whose suite average reaches a
threshold (85.6 %, Llama-2-7B at 4k). Every other task is an "inside the window"
column: its primary metric, standard error and difference from the same model's
``none`` row. Proportions carry 95 % Wilson intervals (Wilson 1927).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from lmeval_ctx.taskdata.lengths import per_length_metric, split_per_length_metric
from lmeval_ctx.methods import ATTENTION_METHOD_OPTIONS
from lmeval_ctx.methods.catalog import MODIFIER_OPTIONS, ROPE_METHOD_OPTIONS

EFFECTIVE_ACCURACY = 0.8  # passkey's rule (YaRN's convention)
RULER_THRESHOLD = 85.6  # RULER's rule: Llama-2-7B's average at 4k, in percent
PASSKEY_METRIC, PERPLEXITY_METRIC = "acc", "token_perplexity"
Z95 = 1.959963984540054  # two-sided 95 % normal quantile
# lm-eval's RULER group and its members (lm_eval/tasks/ruler/ruler.yaml)
RULER_TASKS = (
    "niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2", "niah_multikey_3",
    "niah_multiquery", "niah_multivalue", "ruler_vt", "ruler_cwe", "ruler_fwe", "ruler_qa_squad", "ruler_qa_hotpot",
)
# metadata keys that choose the lengths: they are the columns, not part of a run's identity
LENGTH_KEYS = ("max_seq_lengths", "lengths")
# model args that do not change a result
NEUTRAL_MODEL_ARGS = ("batch_size", "max_batch_size", "device", "parallelize")
# members of a suite shown one by one in the Markdown table (the CSV and the page show all)
MAX_MEMBER_COLUMNS = 4


# -- statistics ---------------------------------------------------------------------------------
def wilson_interval(proportion: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (Wilson 1927, JASA 22:209)."""
    if n < 1:
        raise ValueError(f"n must be at least 1 sample; got {n}.")
    if not 0.0 <= proportion <= 1.0:
        raise ValueError(f"proportion must lie in [0, 1]; got {proportion}.")
    denominator = 1 + z * z / n
    centre = (proportion + z * z / (2 * n)) / denominator
    half = z * math.sqrt(proportion * (1 - proportion) / n + z * z / (4 * n * n)) / denominator
    # exact at the ends: 0/n has lower bound 0 and n/n upper bound 1 (not a rounding error away)
    lower = 0.0 if proportion == 0.0 else max(0.0, centre - half)
    upper = 1.0 if proportion == 1.0 else min(1.0, centre + half)
    return lower, upper


def weighted_average(values_by_length: dict[int, float], increasing: bool) -> float | None:
    """RULER's weighted average over lengths: weights 1..n rising (or falling) with the length."""
    if not values_by_length:
        return None
    lengths = sorted(values_by_length)
    weights = range(1, len(lengths) + 1) if increasing else range(len(lengths), 0, -1)
    weights = list(weights)
    return sum(w * values_by_length[n] for w, n in zip(weights, lengths)) / sum(weights)


@dataclass
class Measure:
    """One figure of one task at one length (or of a short task)."""

    value: float
    n: int | None = None  # samples behind it
    stderr: float | None = None
    binary: bool = False  # every per-sample score is 0 or 1, so a Wilson interval applies

    @property
    def interval(self) -> tuple[float, float] | None:
        if self.binary and self.n and 0.0 <= self.value <= 1.0:
            return wilson_interval(self.value, self.n)
        return None


# -- suites -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Suite:
    name: str
    metric: str  # what the values are
    proportion: bool  # accuracies (Wilson intervals, the ≈ mark)
    higher_is_better: bool = True
    weight_by_size: bool = False  # the suite average per length: by samples (lm-eval's babilong group) or not


PASSKEY = Suite("passkey", "passkey accuracy", True)
PERPLEXITY = Suite("longppl", "token perplexity", False, higher_is_better=False)
RULER = Suite("ruler", "RULER score (string match, 0-1)", True)
BABILONG = Suite("babilong", "BABILong accuracy", True, weight_by_size=True)


def _suite_of(task: str, length_style: str) -> Suite:
    if task.startswith("passkey"):
        return PASSKEY
    if task.startswith("longppl"):
        return PERPLEXITY
    if task in RULER_TASKS or (length_style == "digits" and task.startswith(("niah_", "ruler_"))):
        return RULER
    if task.startswith("babilong"):
        return BABILONG
    return Suite(task, task, False)


def _babilong_length(value) -> int | None:
    """BABILong's split names ('0k', '4k', '128k') as tokens (k = 1024); None for anything else."""
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    match = re.fullmatch(r"\s*(\d+)\s*k\s*", str(value))
    return int(match.group(1)) * 1024 if match else None


# -- one results file ---------------------------------------------------------------------------
@dataclass
class TaskResult:
    """What one results file says about one task."""

    task: str
    suite: Suite | None  # None: a short ("inside the window") task
    values: dict[int, Measure] = field(default_factory=dict)  # length -> measure (per-length tasks)
    sample_metrics: dict[str, int] = field(default_factory=dict)  # per-sample metric name -> length
    short: Measure | None = None  # the primary metric of a short task
    metric: str = ""
    settings: str = ""  # canonical JSON of what determines the task's results besides the model
    data_identity: str | None = None
    samples: Path | None = None


@dataclass
class ResultsFile:
    path: Path
    run_key: str  # canonical JSON of model identity + context extension
    model_key: str  # canonical JSON of the model identity alone
    model: str  # display name
    method: str
    factor: float | None
    params: tuple  # the method's own parameters, ((key, value), ...) sorted: see method_parameters
    extension: dict
    model_args: dict
    date: datetime | None
    lm_eval_version: str | None
    tasks: dict[str, TaskResult]


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _normalised(value):
    """'2', 2 and 2.0 are one setting; '2.0000001' stays distinct."""
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return number if math.isfinite(number) else value
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def method_option_names() -> frozenset[str]:
    """Every model arg that is a method's parameter rather than the model's (read from the methods'
    option tables, so a new method's options count too): the method's own options and the
    modifiers ``rope_theta`` and ``logn``."""
    return frozenset().union(*ATTENTION_METHOD_OPTIONS.values(), *ROPE_METHOD_OPTIONS.values(), MODIFIER_OPTIONS)


def method_parameters(extension: dict) -> tuple[tuple[str, object], ...]:
    """The method's own parameters as the context-extension record gives them (``options``: what
    ran, an attention method's defaults filled in), sorted by key."""
    options = extension.get("options") or {}
    return tuple(sorted(options.items())) if isinstance(options, dict) else ()


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


def _model_args(results: dict) -> dict:
    args = results.get("config", {}).get("model_args") or {}
    if isinstance(args, str):
        args = dict(part.split("=", 1) for part in args.split(",") if "=" in part)
    return dict(args)


def _model_name(results: dict) -> str:
    args = _model_args(results)
    if args.get("gguf_file"):
        return Path(str(args["gguf_file"])).stem
    pretrained = str(args.get("pretrained") or results.get("model_name") or "model")
    return Path(pretrained).name if Path(pretrained).is_absolute() else pretrained


def _date(results: dict, path: Path) -> datetime | None:
    stamp = results.get("date")
    if isinstance(stamp, (int, float)):
        return datetime.fromtimestamp(stamp, tz=timezone.utc)
    match = re.search(r"(\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2})", path.name)
    if match:
        return datetime.strptime(match.group(1), "%Y-%m-%dT%H-%M-%S").replace(tzinfo=timezone.utc)
    return None


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _filter_of(metrics: dict, metric: str) -> str | None:
    for name in metrics:
        base, sep, filter_name = name.partition(",")
        if sep and base == metric:
            return filter_name
    return None


def _per_length_values(task: str, metrics: dict, config: dict, n_samples: int | None):
    """(suite, {length: Measure}, {sample metric: length}, metric) of a per-length task, or None."""
    fixed = (config.get("dataset_kwargs") or {}).get("fixed_length")
    digits, at, values, sample_metrics = {}, {}, {}, {}
    for name, value in metrics.items():
        base, sep, filter_name = name.partition(",")
        number = _number(value)
        if not sep or number is None or base.endswith("_stderr") or "_stderr@" in base:
            continue
        if base.isdigit():
            digits[int(base)] = (base, filter_name, number)
        elif split := split_per_length_metric(base):
            at.setdefault(split[0], {})[split[1]] = (base, filter_name, number)
    if digits:  # RULER's style: the metric is the length; -1 = not run
        suite = _suite_of(task, "digits")
        for length, (base, filter_name, number) in digits.items():
            if number == -1:
                continue
            stderr = _number(metrics.get(f"{base}_stderr,{filter_name}"))
            values[length] = Measure(number, None, stderr)
            sample_metrics[base] = length
        return suite, values, sample_metrics, "score"
    suite = _suite_of(task, "at")
    metric = PERPLEXITY_METRIC if suite is PERPLEXITY else PASSKEY_METRIC if suite is PASSKEY else None
    if at:
        metric = metric if metric in at else next(iter(at))
        for length, (base, filter_name, number) in at[metric].items():
            stderr = _number(metrics.get(f"{per_length_metric(metric + '_stderr', length)},{filter_name}"))
            values[length] = Measure(number, None, stderr)
            sample_metrics[base] = length
        return suite, values, sample_metrics, metric
    if suite in (PASSKEY, PERPLEXITY) and fixed is not None:
        filter_name = _filter_of(metrics, metric)
        number = _number(metrics.get(f"{metric},{filter_name}"))
        if number is not None:
            stderr = _number(metrics.get(f"{metric}_stderr,{filter_name}"))
            values[int(fixed)] = Measure(number, n_samples, stderr)
            sample_metrics[metric] = int(fixed)
            return suite, values, sample_metrics, metric
    if suite is BABILONG:
        length = _babilong_length((config.get("metadata") or {}).get("max_seq_lengths", "0k"))
        filter_name = _filter_of(metrics, "acc")
        number = _number(metrics.get(f"acc,{filter_name}"))
        if length is not None and number is not None:
            stderr = _number(metrics.get(f"acc_stderr,{filter_name}"))
            values[length] = Measure(number, n_samples, stderr)
            sample_metrics["acc"] = length
            return suite, values, sample_metrics, "acc"
    return None


def _short_result(task: str, metrics: dict, config: dict, n_samples: int | None) -> tuple[str, Measure] | None:
    """(metric, Measure) of a task's primary metric: the first of its metric_list, as lm-eval lists them."""
    names = [m.get("metric") for m in config.get("metric_list") or [] if isinstance(m, dict)]
    names += [name.partition(",")[0] for name in metrics if "," in name]
    for metric in names:
        if not isinstance(metric, str) or metric.endswith("_stderr"):
            continue
        filter_name = _filter_of(metrics, metric)
        number = _number(metrics.get(f"{metric},{filter_name}")) if filter_name is not None else None
        if number is not None:
            stderr = _number(metrics.get(f"{metric}_stderr,{filter_name}"))
            label = metric if filter_name == "none" else f"{metric},{filter_name}"
            return label, Measure(number, n_samples, stderr)
    return None


def _task_settings(results: dict, task: str, model_args: dict) -> tuple[str, str | None]:
    """(canonical settings, data identity) of ``task`` in one results file."""
    config = results.get("configs", {}).get(task, {})
    metadata = dict(config.get("metadata") or {})
    identity = metadata.get("data_identity")
    for key in [*LENGTH_KEYS, "config_source"]:
        metadata.pop(key, None)
    for key, value in model_args.items():  # lm-eval merges the model args into every task's metadata
        if key in metadata and _normalised(metadata[key]) == _normalised(value):
            del metadata[key]
    run = results.get("config", {})
    settings = {
        "version": results.get("versions", {}).get(task),
        "metadata": {k: _normalised(v) for k, v in metadata.items()},
        "num_fewshot": results.get("n-shot", {}).get(task),
        "limit": run.get("limit"),
        "gen_kwargs": run.get("gen_kwargs"),
        "seeds": [run.get(k) for k in ("random_seed", "numpy_seed", "torch_seed", "fewshot_seed")],
    }
    short = None
    if isinstance(identity, dict) and identity.get("value"):
        short = str(identity["value"])
    elif isinstance(identity, str) and identity:
        short = identity
    return _canonical(settings), short


def _samples_file(path: Path, task: str) -> Path | None:
    """The samples file of ``task`` written by the same run as results file ``path``.

    lm-eval names both after the run's own time stamp (``results_<stamp>.json``,
    ``samples_<task>_<stamp>.jsonl``) in one folder: the pairing is by that exact stamp,
    never by a pattern that another run's files could match.
    """
    stamp = path.stem[len("results_"):]
    candidate = path.parent / f"samples_{task}_{stamp}.jsonl"
    return candidate if candidate.is_file() else None


def read_results_file(path: Path) -> ResultsFile:
    try:
        results = json.loads(path.read_text())
        scores = results["results"]
        if not isinstance(scores, dict):
            raise TypeError("'results' is not an object")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{str(path)!r} is not an lm-eval results file ({type(error).__name__}: {error}); "
                         "re-run the evaluation or remove the file.") from error
    config = results.get("config", {}) or {}
    extension = config.get("context_extension") or {}
    model_args = _model_args(results)
    identity_args = {k: _normalised(v) for k, v in model_args.items() if k not in NEUTRAL_MODEL_ARGS}
    if config.get("model") in ("ctx-hf", "ctx-vllm"):
        identity_args.setdefault("scaling", "none")
    # the method and its parameters are the row's, not the model's: a row's `none` reference is found by this
    method_keys = {"scaling", "factor", "max_length"} | method_option_names() | set(extension.get("options") or {})
    model_identity = {key: value for key, value in identity_args.items() if key not in method_keys}
    model_identity["model"] = config.get("model")
    model_identity["model_revision"] = config.get("model_revision")
    model_identity["model_sha"] = config.get("model_sha")
    groups = set(results.get("group_subtasks") or {})
    n_samples = results.get("n-samples") or {}
    tasks: dict[str, TaskResult] = {}
    for task, metrics in scores.items():
        if task in groups or not isinstance(metrics, dict):
            continue  # a group's figures are its members', aggregated; we aggregate by each suite's rule
        task_config = results.get("configs", {}).get(task, {}) or {}
        n = (n_samples.get(task) or {}).get("effective")
        settings, identity = _task_settings(results, task, model_args)
        per_length = _per_length_values(task, metrics, task_config, n)
        if per_length is not None:
            suite, values, sample_metrics, metric = per_length
            tasks[task] = TaskResult(task, suite, values, sample_metrics, metric=metric, settings=settings,
                                     data_identity=identity, samples=_samples_file(path, task))
        elif (short := _short_result(task, metrics, task_config, n)) is not None:
            metric, measure = short
            tasks[task] = TaskResult(task, None, short=measure, metric=metric, settings=settings,
                                     data_identity=identity, samples=_samples_file(path, task))
    factor = extension.get("factor")
    return ResultsFile(
        path=path, run_key=_canonical({"model": model_identity, "args": identity_args, "extension": extension}),
        model_key=_canonical(model_identity), model=_model_name(results), method=extension.get("scaling", "none"),
        factor=float(factor) if factor is not None else None, params=method_parameters(extension),
        extension=extension, model_args=model_args,
        date=_date(results, path), lm_eval_version=results.get("lm_eval_version"), tasks=tasks,
    )


def _read_samples(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise TypeError("a line is not a JSON object")
            except (json.JSONDecodeError, TypeError) as error:
                raise ValueError(f"{str(path)!r} line {number} is not an lm-eval sample ({error}); "
                                 "the file is truncated or corrupt: re-run with --log_samples.") from error
            rows.append(row)
    return rows


def _check_task_hash(results_path: Path, samples_path: Path, rows: list[dict], task: str) -> None:
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


def _add_sample_counts(results_path: Path, result: TaskResult) -> None:
    """n and 0/1-ness per length from the run's own samples, for the Wilson intervals."""
    if result.samples is None:
        return
    rows = _read_samples(result.samples)
    _check_task_hash(results_path, result.samples, rows, result.task)
    filters = {row.get("filter") for row in rows}
    keep = "none" if "none" in filters else sorted(filters, key=str)[0] if filters else None
    scores: dict[int, list[float]] = defaultdict(list)
    for row in rows:
        if row.get("filter") != keep:
            continue
        for name, length in result.sample_metrics.items():
            value = _number(row.get(name))
            if value is not None and value != -1:
                scores[length].append(value)
    for length, measure in result.values.items():
        values = scores.get(length)
        if values:
            measure.n = len(values)
            measure.binary = all(v in (0.0, 1.0) for v in values)
    if result.short is not None:
        values = [v for row in rows if row.get("filter") == keep
                  for v in [_number(row.get(result.metric.partition(",")[0]))] if v is not None]
        if values:
            result.short.n = len(values)
            result.short.binary = all(v in (0.0, 1.0) for v in values)


# -- rows ---------------------------------------------------------------------------------------
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
        return max(self.dates) if self.dates else None

    def suite_values(self, suite: Suite) -> dict[str, dict[int, Measure]]:
        """{member task (or the suite for passkey/longppl): {length: Measure}}."""
        out: dict[str, dict[int, Measure]] = {}
        for task, result in sorted(self.tasks.items()):
            if result.suite != suite:
                continue
            name = suite.name if suite in (PASSKEY, PERPLEXITY) else task
            out.setdefault(name, {}).update(result.values)
        return out

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
    def passkey(self) -> dict[int, float]:
        return {n: m.value for n, m in self.suite_values(PASSKEY).get("passkey", {}).items()}

    @property
    def perplexity(self) -> dict[int, float]:
        return {n: m.value for n, m in self.suite_values(PERPLEXITY).get("longppl", {}).items()}

    @property
    def effective_length(self) -> int | None:
        """Passkey's rule: the largest tested length whose accuracy is >= 0.8."""
        passing = [length for length, acc in self.passkey.items() if acc >= EFFECTIVE_ACCURACY]
        return max(passing) if passing else None

    def ruler_effective_length(self, threshold: float = RULER_THRESHOLD) -> int | None:
        """RULER's rule: the largest length whose suite average (in %) is >= ``threshold``."""
        passing = [n for n, v in self.suite_average(RULER).items() if 100.0 * v >= threshold]
        return max(passing) if passing else None

    @property
    def sample_files(self) -> list[Path]:
        return [r.samples for r in self.tasks.values() if r.suite is PASSKEY and r.samples is not None]

    def cells(self) -> set[tuple[str, int | None]]:
        out = set()
        for task, result in self.tasks.items():
            if result.suite is None:
                out.add((task, None))
            else:
                out |= {(task, length) for length in result.values}
        return out


def factor_text(factor: float | None) -> str:
    """The factor as written, shortest exact form: 2.0 -> '2', 2.0000001 -> '2.0000001'."""
    if factor is None:
        return ""
    text = repr(float(factor))
    return text[:-2] if text.endswith(".0") else text


def _collect_files(folders) -> list[Path]:
    files = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise ValueError(f"{str(folder)!r} is not a folder.")
        found = sorted(folder.rglob("results_*.json"))
        if not found:
            raise ValueError(
                f"{str(folder)!r} holds no lm-eval results (results_*.json): give the --output_path of an lm_eval "
                "run or of lmeval-ctx sweep."
            )
        files += found
    unique = []
    for path in files:
        if path.resolve() not in {p.resolve() for p in unique}:
            unique.append(path)
    return unique


def _fits(run: Run, results: ResultsFile) -> bool:
    """A results file joins a row when it measures nothing the row has, with the same task settings."""
    for task, result in results.tasks.items():
        mine = run.tasks.get(task)
        if mine is None:
            continue
        if mine.settings != result.settings or mine.data_identity != result.data_identity:
            return False
        if result.suite is None or set(mine.values) & set(result.values):
            return False
    return True


def _add(run: Run, results: ResultsFile) -> None:
    run.files.append(results.path)
    if results.date:
        run.dates.append(results.date)
    if results.lm_eval_version:
        run.lm_eval_versions.add(results.lm_eval_version)
    for task, result in results.tasks.items():
        _add_sample_counts(results.path, result)
        if task in run.tasks:
            run.tasks[task].values.update(result.values)
            run.tasks[task].sample_metrics.update(result.sample_metrics)
        else:
            run.tasks[task] = result


def read_runs(folders: list[str | Path]) -> list[Run]:
    """The leaderboard's rows from every results file under ``folders``.

    Files are rows' parts when they share the model identity, the context extension and
    every model argument that can change a result, and measure different things (other
    tasks or other lengths of a task run with the same settings). A file that measures
    something a row already has is another run: it gets its own row, never mixed in.
    """
    files = [read_results_file(path) for path in _collect_files(folders)]
    files.sort(key=lambda f: (f.date or datetime.min.replace(tzinfo=timezone.utc), str(f.path)))
    rows: list[Run] = []
    for results in files:
        if not results.tasks:
            continue
        row = next((r for r in rows if r.run_key == results.run_key and _fits(r, results)), None)
        if row is None:
            row = Run(results.model, results.method, results.factor, results.run_key, results.model_key,
                      params=results.params, extension=results.extension, model_args=results.model_args)
            rows.append(row)
        _add(row, results)
    if not any(r.suite is not None for row in rows for r in row.tasks.values()):
        raise ValueError("No per-length results (passkey, longppl, RULER, BABILong or a task with per-length "
                         "metrics) in " + ", ".join(map(str, folders)) + ".")
    _describe_differences(rows)
    return sorted(rows, key=lambda r: (r.model, r.model_key, r.method != "none", r.method, r.factor or 0,
                                       r.parameters, r.note, r.date or datetime.min.replace(tzinfo=timezone.utc)))


def _flat_settings(run: Run) -> dict[str, str]:
    out = {f"{k}": str(v) for k, v in sorted(json.loads(run.run_key)["args"].items())}
    for key, value in json.loads(run.model_key).items():
        if key in ("model", "model_revision", "model_sha") and value:
            out[key] = str(value)
    for task, result in sorted(run.tasks.items()):
        for key, value in json.loads(result.settings).items():
            if value not in (None, {}, []):
                out[f"{task}.{key}"] = _canonical(value)
        if result.data_identity:
            out[f"{task}.data"] = result.data_identity[:12]
    return out


def _describe_differences(rows: list[Run]) -> None:
    """Rows that would read alike get what tells them apart; true repeats say so (and show their date)."""
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for row in rows:
        groups[(row.model, row.label)].append(row)
    for group in groups.values():
        if len(group) < 2:
            continue
        flats = [_flat_settings(row) for row in group]
        for index, (row, flat) in enumerate(zip(group, flats)):
            others = [(other_row, other) for j, (other_row, other) in enumerate(zip(group, flats)) if j != index]
            keys = sorted({key for other in flats for key in other})

            def compared(key, other_row, row=row) -> bool:  # a task's settings count only where both rows ran it
                task = key.partition(".")[0] if "." in key else None
                return task is None or (task in row.tasks and task in other_row.tasks)

            parts = [f"{key}={flat.get(key, 'unset')}" for key in keys
                     if any(compared(key, other_row) and other.get(key) != flat.get(key)
                            for other_row, other in others)]
            twins = [other_row for other_row, other in others
                     if not any(compared(key, other_row) and other.get(key) != flat.get(key) for key in keys)]
            row.note = "; ".join(parts + (["repeat run"] if twins else []))


# -- the table ----------------------------------------------------------------------------------
def _fmt(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _full(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def _none_row(run: Run, runs: list[Run]) -> Run | None:
    """The same model's ``none`` row: without parameters where there is one (``none`` with ``logn`` or
    ``rope_theta`` is a method of its own), the newest when it was run more than once."""
    candidates = [r for r in runs if r.model_key == run.model_key and r.method == "none"]
    candidates = [r for r in candidates if not r.params] or candidates
    return max(candidates, key=lambda r: r.date or datetime.min.replace(tzinfo=timezone.utc)) if candidates else None


def _suites(runs: list[Run]) -> list[Suite]:
    seen = []
    for run in runs:
        for result in run.tasks.values():
            if result.suite is not None and result.suite not in seen:
                seen.append(result.suite)
    order = {PASSKEY.name: 0, RULER.name: 1, BABILONG.name: 2, PERPLEXITY.name: 4}
    return sorted(seen, key=lambda s: (order.get(s.name, 3), s.name))


def _short_tasks(runs: list[Run]) -> list[tuple[str, str]]:
    return sorted({(task, r.metric) for run in runs for task, r in run.tasks.items() if r.suite is None})


@dataclass
class Table:
    """The leaderboard: Markdown columns (compact) and CSV columns (everything, full precision)."""

    header: list[str]
    rows: list[list[str]]
    csv_header: list[str]
    csv_rows: list[list[str]]
    legend: list[str]
    notes: list[str]


def leaderboard(runs: list[Run], threshold: float = RULER_THRESHOLD) -> Table:
    """The table of ``runs``: per-suite values by length, effective lengths, short tasks, settings."""
    suites = _suites(runs)
    header = ["model", "method", "factor", "window"]
    csv_header = ["model", "method", "parameters", "factor", "window", "original length", "date", "settings",
                  "data identity"]
    md_cols: list = []  # (kind, ...) column specs for Markdown
    csv_cols: list = []
    legend = []
    for suite in suites:
        members = sorted({name for run in runs for name in run.suite_values(suite)})
        lengths = sorted({n for run in runs for values in run.suite_values(suite).values() for n in values})
        averaged = suite not in (PASSKEY, PERPLEXITY) and len(members) > 1
        for member in members:
            for n in lengths:
                csv_cols.append(("value", suite, member, n))
                if suite.proportion:
                    csv_cols.append(("n", suite, member, n))
                    csv_cols.append(("ci", suite, member, n))
            if not averaged or len(members) <= MAX_MEMBER_COLUMNS:
                md_cols += [("value", suite, member, n) for n in lengths]
        if averaged:
            cols = [("average", suite, None, n) for n in lengths]
            md_cols += cols
            csv_cols += cols
            legend.append(f"{suite.name} avg@L: the mean of {', '.join(members)} at L tokens"
                          + (", weighted by samples (as lm-eval's group)" if suite.weight_by_size else
                             " (unweighted, as RULER averages its tasks)") + "; only where every member ran L.")
        if suite is PASSKEY:
            md_cols.append(("effective", suite))
            csv_cols.append(("effective", suite))
            legend.append(f"passkey effective length: the largest tested length whose passkey accuracy is ≥ "
                          f"{EFFECTIVE_ACCURACY} (YaRN's convention).")
        if suite is RULER:
            cols = [("effective", suite), ("wavg", suite, True), ("wavg", suite, False)]
            md_cols += cols
            csv_cols += cols
            legend.append(f"ruler effective length: the largest length whose RULER average is ≥ {threshold:g} % "
                          "(RULER's rule; 85.6 is Llama-2-7B at 4k; --threshold changes it). wAvg inc/dec: RULER's "
                          "averages over lengths with weights rising/falling linearly with the length.")
    if any(run.params for run in runs):
        legend.append("method: with its own parameters in parentheses, as they ran (an attention-level method's "
                      "defaults filled in); rows that differ in them are separate rows. The CSV has them in "
                      "its parameters column.")
    short = _short_tasks(runs)
    for task, metric in short:
        md_cols.append(("short", task, metric))
        csv_cols += [("short", task, metric), ("short_stderr", task, metric), ("short_delta", task, metric)]
    if short:
        legend.append("Inside the window: a task's primary metric ± its standard error, and Δ its difference from "
                      "the same model's `none` row.")
    if any(s.proportion for s in suites):
        legend.append("≈: within the 95 % Wilson interval of the `none` row at that length (a difference these "
                      "samples cannot show). The CSV holds the intervals and sample counts.")

    def title(col) -> str:
        kind = col[0]
        if kind == "value":
            _, suite, member, n = col
            return f"ppl@{n}" if suite is PERPLEXITY else f"{member}@{n}"
        if kind == "n":
            return f"{col[2]}@{col[3]} n"
        if kind == "ci":
            return f"{col[2]}@{col[3]} 95% CI"
        if kind == "average":
            return f"{col[1].name} avg@{col[3]}"
        if kind == "effective":
            rule = f"acc ≥ {EFFECTIVE_ACCURACY}" if col[1] is PASSKEY else f"avg ≥ {threshold:g}%"
            return f"{col[1].name} effective length ({rule})"
        if kind == "wavg":
            return f"{col[1].name} wAvg {'inc' if col[2] else 'dec'}"
        if kind == "short":
            return f"{col[1]} {col[2]}"
        if kind == "short_stderr":
            return f"{col[1]} {col[2]} stderr"
        return f"{col[1]} {col[2]} Δ none"

    def cell(run: Run, col, markdown: bool) -> str:
        kind = col[0]
        if kind in ("value", "n", "ci"):
            _, suite, member, n = col
            measure = run.suite_values(suite).get(member, {}).get(n)
            if measure is None:
                return ""
            if kind == "n":
                return "" if measure.n is None else str(measure.n)
            if kind == "ci":
                interval = measure.interval
                return "" if interval is None else f"{interval[0]:.4f}-{interval[1]:.4f}"
            if not markdown:
                return _full(measure.value)
            text = _fmt(measure.value, 2 if suite is PERPLEXITY else 3)
            none = _none_row(run, runs)
            if suite.proportion and none is not None and none is not run:
                reference = none.suite_values(suite).get(member, {}).get(n)
                interval = reference.interval if reference is not None else None
                if interval and interval[0] <= measure.value <= interval[1]:
                    text = "≈" + text
            return text
        if kind == "average":
            value = run.suite_average(col[1]).get(col[3])
            return _fmt(value) if markdown else _full(value)
        if kind == "effective":
            suite = col[1]
            lengths = sorted({n for values in run.suite_values(suite).values() for n in values})
            if not lengths:
                return ""
            effective = run.effective_length if suite is PASSKEY else run.ruler_effective_length(threshold)
            return str(effective) if effective else f"< {lengths[0]}"
        if kind == "wavg":
            value = weighted_average(run.suite_average(col[1]), increasing=col[2])
            return _fmt(value) if markdown else _full(value)
        _, task, metric = col
        result = run.tasks.get(task)
        if result is None or result.metric != metric or result.short is None:
            return ""
        none = _none_row(run, runs)
        reference = none.tasks.get(task) if none is not None else None
        delta = (result.short.value - reference.short.value
                 if reference is not None and reference.short is not None and none is not run else None)
        if kind == "short_stderr":
            return _full(result.short.stderr)
        if kind == "short_delta":
            return _full(delta)
        if not markdown:
            return _full(result.short.value)
        text = _fmt(result.short.value)
        if result.short.stderr is not None:
            text += f" ± {result.short.stderr:.3f}"
        if delta is not None:
            text += f" (Δ {delta:+.3f})"
        return text

    show_dates = any(run.note for run in runs)
    if show_dates:
        header += ["date", "settings"]
    header += [title(c) for c in md_cols]
    identities = any(r.data_identity for run in runs for r in run.tasks.values())
    if identities:
        header.append("data")
    csv_header += [title(c) for c in csv_cols]
    rows, csv_rows, notes = [], [], []
    for run in runs:
        date = run.date.strftime("%Y-%m-%d %H:%M") if run.date else ""
        window = "" if run.window is None else str(run.window)
        base = [run.model, run.method_label, factor_text(run.factor), window]
        row = base + ([date, run.note] if show_dates else []) + [cell(run, c, True) for c in md_cols]
        if identities:
            row.append(" ".join(f"{t}:{r.data_identity[:10]}" for t, r in sorted(run.tasks.items())
                                if r.data_identity))
        rows.append(row)
        full_ids = " ".join(f"{t}:{r.data_identity}" for t, r in sorted(run.tasks.items()) if r.data_identity)
        csv_rows.append([run.model, run.method, run.parameters, factor_text(run.factor), window,
                         "" if run.original_max_length is None else str(run.original_max_length),
                         run.date.isoformat() if run.date else "", run.note, full_ids]
                        + [cell(run, c, False) for c in csv_cols])
        if "repeat run" in run.note:
            notes.append(f"{run.model}, {run.label}: run more than once with the same settings; each run is its "
                         f"own row (this one {date}).")
    return Table(header, rows, csv_header, csv_rows, legend, notes)


def markdown_table(table: Table) -> str:
    lines = ["| " + " | ".join(table.header) + " |", "|" + "|".join("---" for _ in table.header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in table.rows]
    text = "\n".join(lines) + "\n"
    text += "\nX@L: X at L tokens (passkey: retrieval accuracy; longppl: token perplexity; RULER tasks: their " \
            "string-match score, 0-1, as lm-eval reports it). window: the evaluation window (max_length).\n"
    text += "".join(f"\n{line}" for line in table.legend)
    text += "".join(f"\n\nNote: {line}" for line in table.notes)
    return text + "\n"


# -- heatmaps -----------------------------------------------------------------------------------
def passkey_grid(run: Run) -> tuple[list[int], list[float], list[list[float | None]]] | None:
    """(lengths, depths, accuracy[depth][length]) from the row's own logged samples, or None without."""
    cells: dict[tuple[int, float], list[float]] = defaultdict(list)
    for result in run.tasks.values():
        if result.suite is not PASSKEY or result.samples is None:
            continue
        for sample in _read_samples(result.samples):
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


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def row_slug(run: Run, runs: list[Run]) -> str:
    """A file-name part unique to the row (the label, plus a number where labels repeat)."""
    same = [r for r in runs if r.model == run.model and r.label == run.label]
    base = f"{_slug(run.model)}_{_slug(run.label.replace(' ×', '_x'))}"
    return base if len(same) == 1 else f"{base}_{same.index(run) + 1}"


# -- output -------------------------------------------------------------------------------------
def check_output(output: str | Path) -> Path:
    """The report folder, created and proven writable before any work; a clear error otherwise."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise ValueError(f"--output {str(output)!r} is a file, not a folder: give a folder for the report.")
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / f".lmeval-ctx-write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise ValueError(f"--output {str(output)!r} cannot hold the report ({error.strerror or error}): "
                         "give a folder you can write to.") from error
    return output


def write_report(folders: list[str | Path], output: str | Path, log=print,
                 threshold: float = RULER_THRESHOLD) -> dict:
    """Write the leaderboard, plots and page of the runs under ``folders`` to ``output``."""
    from lmeval_ctx.report import page as report_page; from lmeval_ctx.report import plots as report_plots

    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 1 < threshold <= 100:
        raise ValueError(f"--threshold is RULER's score in percent (above 1, at most 100), e.g. 85.6; "
                         f"got {threshold!r}.")
    output = check_output(output)
    runs = read_runs(folders)
    table = leaderboard(runs, threshold)
    text = markdown_table(table)
    (output / "leaderboard.md").write_text(text)
    with open(output / "leaderboard.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(table.csv_header)
        writer.writerows(table.csv_rows)
    files = [output / "leaderboard.md", output / "leaderboard.csv"]
    for run in runs:
        if not run.passkey:
            continue
        grid = passkey_grid(run)
        if grid is None:
            message = (f"{run.model}, {run.label}: no passkey samples (run lm_eval with --log_samples); "
                       "heatmap skipped")
            log(message)
            continue
        path = output / f"passkey_heatmap_{row_slug(run, runs)}.png"
        report_plots.plot_heatmap(run, grid, path)
        files.append(path)
    files += report_plots.plot_curves(runs, output, threshold)
    page = output / "index.html"
    report_page.write_page(page, table, runs, [p for p in files if p.suffix == ".png"], text)
    files.append(page)
    return {"table": text, "files": files, "runs": runs, "leaderboard": table}
