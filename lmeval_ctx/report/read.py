"""Reading lm-eval output folders: every ``results_*.json`` under them, into the leaderboard's rows.

Per-length suites: our ``passkey_custom``/``passkey_<N>k`` (accuracy) and ``longppl``/``longppl_<N>k``
(token perplexity), lm-eval's RULER tasks (Hsieh et al. 2024, arXiv:2404.06654; one metric named by each
length, -1 for lengths not run) and BABILong (Kuratov et al. 2024, arXiv:2406.10149; one
length per run, named in the task's ``max_seq_lengths``), and any task whose metrics are
named by a length the way these are. Every other task is read as a task inside the window:
its primary metric and standard error. What makes files one row: docs/report.md.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

from lmeval_ctx.common.model_args import parse_model_args, result_args
from lmeval_ctx.methods.catalog import METHOD_OPTION_NAMES
from lmeval_ctx.report.results import (
    BABILONG, KEY_COUNT_METRIC, KEY_PERPLEXITY_METRIC, NO_DATE, PASSKEY, PASSKEY_METRIC, PERPLEXITY,
    PERPLEXITY_METRIC, RULER, Measure, ResultsFile, Run, Suite, TaskResult,
)
from lmeval_ctx.report.samples import add_sample_counts, number, samples_file
from lmeval_ctx.taskdata.lengths import per_length_metric, split_per_length_metric
from lmeval_ctx.taskdata.names import task_family

# lm-eval's RULER group and its members (lm_eval/tasks/ruler/ruler.yaml)
RULER_TASKS = (
    "niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2", "niah_multikey_3",
    "niah_multiquery", "niah_multivalue", "ruler_vt", "ruler_cwe", "ruler_fwe", "ruler_qa_squad", "ruler_qa_hotpot",
)
# metadata keys that choose the lengths: they are the columns, not part of a run's identity
LENGTH_KEYS = ("max_seq_lengths", "lengths")
# the plugin's model classes, whose runs are "none" when no method is given
PLUGIN_MODELS = ("ctx-hf", "ctx-vllm")


# -- one task's figures -------------------------------------------------------------------------
def suite_of(task: str, length_style: str) -> Suite:
    """The suite of a per-length task; ``length_style`` "digits" (RULER's ``4096``) or "at" (``acc@4096``)."""
    family = task_family(task)  # ours by exact name: LIBRA's passkey_with_librusec is not
    if family == "passkey":
        return PASSKEY
    if family == "longppl":
        return PERPLEXITY
    if task in RULER_TASKS or (length_style == "digits" and task.startswith(("niah_", "ruler_"))):
        return RULER
    if task.startswith("babilong"):
        return BABILONG
    return Suite(task, task, False)


def babilong_length(value) -> int | None:
    """BABILong's split names ('0k', '4k', '128k') as tokens (k = 1024); None for anything else."""
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    match = re.fullmatch(r"\s*(\d+)\s*k\s*", str(value))
    return int(match.group(1)) * 1024 if match else None


def _filter_of(metrics: dict, metric: str) -> str | None:
    """The filter lm-eval reported ``metric`` under (``acc,none`` -> ``none``), or None."""
    for name in metrics:
        base, sep, filter_name = name.partition(",")
        if sep and base == metric:
            return filter_name
    return None


def _length_metrics(metrics: dict) -> tuple[dict, dict]:
    """The per-length figures by naming style: RULER's {length: (name, filter, value)} and ours
    {metric: {length: (name, filter, value)}} (standard errors and non-numbers left out)."""
    digits, at = {}, {}
    for name, value in metrics.items():
        base, sep, filter_name = name.partition(",")
        figure = number(value)
        if not sep or figure is None or base.endswith("_stderr") or "_stderr@" in base:
            continue
        if base.isdigit():
            digits[int(base)] = (base, filter_name, figure)
        elif split := split_per_length_metric(base):
            at.setdefault(split[0], {})[split[1]] = (base, filter_name, figure)
    return digits, at


def _ruler_style(task: str, metrics: dict, digits: dict) -> TaskResult:
    """RULER's style: the metric is the length; -1 = not run."""
    result = TaskResult(task, suite_of(task, "digits"), metric="score")
    for length, (base, filter_name, figure) in digits.items():
        if figure == -1:
            continue
        result.values[length] = Measure(figure, None, number(metrics.get(f"{base}_stderr,{filter_name}")))
        result.sample_metrics[base] = length
    return result


def _at_style(task: str, suite: Suite, metric: str | None, metrics: dict, at: dict) -> TaskResult:
    """Our style: ``acc@4096`` (the suite's metric where it has one, else the first named)."""
    metric = metric if metric in at else next(iter(at))
    result = TaskResult(task, suite, metric=metric)
    for length, (base, filter_name, figure) in at[metric].items():
        stderr = number(metrics.get(f"{per_length_metric(metric + '_stderr', length)},{filter_name}"))
        result.values[length] = Measure(figure, None, stderr)
        result.sample_metrics[base] = length
    return result


def _one_length(task: str, suite: Suite, metric: str, length: int | None, metrics: dict,
                n_samples: int | None) -> TaskResult | None:
    """A task run at one length (``passkey_4k``, a BABILong split): its plain metric at ``length``."""
    filter_name = _filter_of(metrics, metric)
    figure = number(metrics.get(f"{metric},{filter_name}"))
    if length is None or figure is None:
        return None
    stderr = number(metrics.get(f"{metric}_stderr,{filter_name}"))
    return TaskResult(task, suite, {length: Measure(figure, n_samples, stderr)}, {metric: length}, metric=metric)


def per_length_result(task: str, metrics: dict, config: dict, n_samples: int | None) -> TaskResult | None:
    """The suite, values by length and per-sample metric names of a per-length task, or None."""
    digits, at = _length_metrics(metrics)
    if digits:
        return _ruler_style(task, metrics, digits)
    suite = suite_of(task, "at")
    metric = PERPLEXITY_METRIC if suite is PERPLEXITY else PASSKEY_METRIC if suite is PASSKEY else None
    fixed = (config.get("dataset_kwargs") or {}).get("fixed_length")
    if suite is PERPLEXITY and (at or fixed is not None):
        result = _at_style(task, suite, metric, metrics, at) if at else \
            _one_length(task, suite, metric, int(fixed), metrics, n_samples)
        return _with_key_tokens(result, metrics, at, fixed)
    if at:
        return _at_style(task, suite, metric, metrics, at)
    if suite is PASSKEY and fixed is not None:
        return _one_length(task, suite, metric, int(fixed), metrics, n_samples)
    if suite is BABILONG:
        length = babilong_length((config.get("metadata") or {}).get("max_seq_lengths", "0k"))
        return _one_length(task, suite, "acc", length, metrics, n_samples)
    return None


def _with_key_tokens(result: TaskResult | None, metrics: dict, at: dict, fixed) -> TaskResult | None:
    """longppl's key-token perplexity and count by length (``key_token_perplexity@L`` or, at a fixed
    length, ``key_token_perplexity``), beside its token perplexity; absent when the run chose no key tokens."""
    if result is None:
        return None
    for metric in (KEY_PERPLEXITY_METRIC, KEY_COUNT_METRIC):
        if metric in at:
            values = {length: Measure(figure) for length, (_, _, figure) in at[metric].items()}
        else:
            figure = number(metrics.get(f"{metric},{_filter_of(metrics, metric)}"))
            values = {int(fixed): Measure(figure)} if figure is not None and fixed is not None else {}
        if values:
            result.extra[metric] = values
    return result


def short_result(task: str, metrics: dict, config: dict, n_samples: int | None) -> TaskResult | None:
    """A task inside the window: its primary metric, the first of its metric_list (lm-eval's order)."""
    names = [m.get("metric") for m in config.get("metric_list") or [] if isinstance(m, dict)]
    names += [name.partition(",")[0] for name in metrics if "," in name]
    for metric in names:
        if not isinstance(metric, str) or metric.endswith("_stderr"):
            continue
        filter_name = _filter_of(metrics, metric)
        figure = number(metrics.get(f"{metric},{filter_name}")) if filter_name is not None else None
        if figure is not None:
            stderr = number(metrics.get(f"{metric}_stderr,{filter_name}"))
            label = metric if filter_name == "none" else f"{metric},{filter_name}"
            return TaskResult(task, None, short=Measure(figure, n_samples, stderr), metric=label)
    return None


# -- one results file ---------------------------------------------------------------------------
def canonical(value) -> str:
    """``value`` as canonical JSON: equal settings, equal text."""
    return json.dumps(value, sort_keys=True, default=str)


def normalised(value):
    """'2', 2 and 2.0 are one setting; '2.0000001' stays distinct."""
    if isinstance(value, str):
        try:
            figure = float(value)
        except ValueError:
            return value
        return figure if math.isfinite(figure) else value
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def task_settings(results: dict, task: str, model_args: dict) -> tuple[str, str | None]:
    """(canonical settings, data identity) of ``task`` in one results file: everything that
    determines the task's results besides the model and the lengths."""
    config = results.get("configs", {}).get(task, {})
    metadata = dict(config.get("metadata") or {})
    identity = metadata.get("data_identity")
    for key in [*LENGTH_KEYS, "config_source"]:
        metadata.pop(key, None)
    for key, value in model_args.items():  # lm-eval merges the model args into every task's metadata
        if key in metadata and normalised(metadata[key]) == normalised(value):
            del metadata[key]
    run = results.get("config") or {}
    settings = {
        "version": results.get("versions", {}).get(task),
        "metadata": {k: normalised(v) for k, v in metadata.items()},
        "num_fewshot": results.get("n-shot", {}).get(task),
        "limit": run.get("limit"),
        "gen_kwargs": run.get("gen_kwargs"),
        "seeds": [run.get(k) for k in ("random_seed", "numpy_seed", "torch_seed", "fewshot_seed")],
    }
    if isinstance(identity, dict) and identity.get("value"):
        return canonical(settings), str(identity["value"])
    return canonical(settings), identity if isinstance(identity, str) and identity else None


def method_parameters(extension: dict) -> tuple[tuple[str, object], ...]:
    """The method's own parameters as the context-extension record gives them (``options``: what
    ran, an attention method's defaults filled in), sorted by key."""
    options = extension.get("options") or {}
    return tuple(sorted(options.items())) if isinstance(options, dict) else ()


def model_name(results: dict, model_args: dict) -> str:
    """The GGUF file's stem, else the last part of a local ``pretrained`` path, else the hub name."""
    if model_args.get("gguf_file"):
        return Path(str(model_args["gguf_file"])).stem
    pretrained = str(model_args.get("pretrained") or results.get("model_name") or "model")
    return Path(pretrained).name if Path(pretrained).is_absolute() else pretrained


def results_date(results: dict, path: Path) -> datetime | None:
    """When the run ended: lm-eval's ``date``, else the time stamp in the file name."""
    stamp = results.get("date")
    if isinstance(stamp, (int, float)):
        return datetime.fromtimestamp(stamp, tz=timezone.utc)
    match = re.search(r"(\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2})", path.name)
    if match:
        return datetime.strptime(match.group(1), "%Y-%m-%dT%H-%M-%S").replace(tzinfo=timezone.utc)
    return None


def _load(path: Path) -> tuple[dict, dict]:
    """(the results JSON, its model arguments as lm-eval parses them), or a ValueError naming the file."""
    try:
        results = json.loads(path.read_text())
        if not isinstance(results.get("results"), dict):
            raise TypeError("'results' is missing or not an object")
        model_args = parse_model_args((results.get("config") or {}).get("model_args") or {})
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, TypeError) as error:
        raise ValueError(f"{str(path)!r} is not an lm-eval results file ({type(error).__name__}: {error}); "
                         "re-run the evaluation or remove the file.") from error
    return results, model_args


def _identities(config: dict, extension: dict, model_args: dict) -> tuple[dict, dict]:
    """(every model argument that may change a result, the model's identity without the method's)."""
    identity_args = {key: normalised(value) for key, value in result_args(model_args).items()}
    if config.get("model") in PLUGIN_MODELS:
        identity_args.setdefault("scaling", "none")
    # the method and its parameters are the row's, not the model's: a row's `none` baseline is found by this
    method_keys = {"scaling", "factor", "max_length", *METHOD_OPTION_NAMES, *(extension.get("options") or {})}
    model_identity = {key: value for key, value in identity_args.items() if key not in method_keys}
    model_identity.update({key: config.get(key) for key in ("model", "model_revision", "model_sha")})
    return identity_args, model_identity


def _task_results(path: Path, results: dict, model_args: dict) -> dict[str, TaskResult]:
    """Every task of a results file (not its groups: we aggregate by each suite's rule)."""
    groups = set(results.get("group_subtasks") or {})
    n_samples = results.get("n-samples") or {}
    tasks: dict[str, TaskResult] = {}
    for task, metrics in results["results"].items():
        if task in groups or not isinstance(metrics, dict):
            continue
        task_config = results.get("configs", {}).get(task, {}) or {}
        n = (n_samples.get(task) or {}).get("effective")
        result = per_length_result(task, metrics, task_config, n) or short_result(task, metrics, task_config, n)
        if result is not None:
            result.settings, result.data_identity = task_settings(results, task, model_args)
            result.samples = samples_file(path, task)
            tasks[task] = result
    return tasks


def read_results_file(path: Path) -> ResultsFile:
    """One ``results_*.json``: who ran what, with which method and settings, and each task's figures."""
    results, model_args = _load(path)
    config = results.get("config", {}) or {}
    extension = config.get("context_extension") or {}
    identity_args, model_identity = _identities(config, extension, model_args)
    factor = extension.get("factor")
    return ResultsFile(
        path=path, run_key=canonical({"model": model_identity, "args": identity_args, "extension": extension}),
        model_key=canonical(model_identity), model=model_name(results, model_args),
        method=extension.get("scaling", "none"), factor=float(factor) if factor is not None else None,
        params=method_parameters(extension), extension=extension, model_args=model_args,
        date=results_date(results, path), lm_eval_version=results.get("lm_eval_version"),
        tasks=_task_results(path, results, model_args),
    )


# -- folders into rows --------------------------------------------------------------------------
def results_files(folders) -> list[Path]:
    """Every ``results_*.json`` under ``folders``, each once; a folder without any is an error."""
    files = []
    for folder in map(Path, folders):
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


def _joins(run: Run, results: ResultsFile) -> bool:
    """A results file joins a row when it measures nothing the row has, with the same task settings."""
    for task, result in results.tasks.items():
        mine = run.tasks.get(task)
        if mine is None:
            continue
        if not mine.same_task_as(result) or result.suite is None or set(mine.values) & set(result.values):
            return False
    return True


def _add_file(run: Run, results: ResultsFile) -> None:
    run.files.append(results.path)
    if results.date:
        run.dates.append(results.date)
    if results.lm_eval_version:
        run.lm_eval_versions.add(results.lm_eval_version)
    for task, result in results.tasks.items():
        add_sample_counts(results.path, result)
        if task in run.tasks:
            run.tasks[task].values.update(result.values)
            run.tasks[task].sample_metrics.update(result.sample_metrics)
            for metric, values in result.extra.items():
                run.tasks[task].extra.setdefault(metric, {}).update(values)
        else:
            run.tasks[task] = result


def read_runs(folders: list[str | Path]) -> list[Run]:
    """The leaderboard's rows from every results file under ``folders``.

    Files are rows' parts when they share the model identity, the context extension and
    every model argument that can change a result, and measure different things (other
    tasks or other lengths of a task run with the same settings). A file that measures
    something a row already has is another run: it gets its own row, never mixed in.
    """
    files = [read_results_file(path) for path in results_files(folders)]
    files.sort(key=lambda f: (f.date or NO_DATE, str(f.path)))
    rows: list[Run] = []
    for results in files:
        if not results.tasks:
            continue
        row = next((r for r in rows if r.run_key == results.run_key and _joins(r, results)), None)
        if row is None:
            row = Run(results.model, results.method, results.factor, results.run_key, results.model_key,
                      params=results.params, extension=results.extension, model_args=results.model_args)
            rows.append(row)
        _add_file(row, results)
    if not any(r.suite is not None for row in rows for r in row.tasks.values()):
        raise ValueError("No per-length results (passkey, longppl, RULER, BABILong or a task with per-length "
                         "metrics) in " + ", ".join(map(str, folders)) + ".")
    _describe_differences(rows)
    return sorted(rows, key=lambda r: (r.model, r.model_key, r.method != "none", r.method, r.factor or 0,
                                       r.parameters, r.note, r.date or NO_DATE))


def _flat_settings(run: Run) -> dict[str, str]:
    """Every setting of a row as ``key: text`` (task settings as ``task.key``), for telling rows apart."""
    out = {f"{k}": str(v) for k, v in sorted(json.loads(run.run_key)["args"].items())}
    for key, value in json.loads(run.model_key).items():
        if key in ("model", "model_revision", "model_sha") and value:
            out[key] = str(value)
    for task, result in sorted(run.tasks.items()):
        for key, value in json.loads(result.settings).items():
            if value not in (None, {}, []):
                out[f"{task}.{key}"] = canonical(value)
        if result.data_identity:
            out[f"{task}.data"] = result.data_identity[:12]
    return out


def _difference_note(row: Run, flat: dict, others: list[tuple[Run, dict]]) -> str:
    """The settings in which ``row`` differs from rows that read alike, and ``repeat run`` if one is its twin."""
    keys = sorted({key for _, other in others for key in other} | set(flat))

    def differs(key, other_row, other) -> bool:  # a task's settings count only where both rows ran it
        task = key.partition(".")[0] if "." in key else None
        compared = task is None or (task in row.tasks and task in other_row.tasks)
        return compared and other.get(key) != flat.get(key)

    parts = [f"{key}={flat.get(key, 'unset')}" for key in keys
             if any(differs(key, other_row, other) for other_row, other in others)]
    twins = [other_row for other_row, other in others if not any(differs(key, other_row, other) for key in keys)]
    return "; ".join(parts + (["repeat run"] if twins else []))


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
            row.note = _difference_note(row, flat, others)
