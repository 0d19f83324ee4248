"""``lmeval-ctx sweep``: a grid of context-extension methods over lm-eval tasks, with one load.

The weights are loaded once (``ctx-hf`` with ``scaling=none``); each method is
then applied to the loaded model (:meth:`CtxHFLM.apply_extension` rebuilds the
rotary modules or replaces the ALiBi slopes) and lm-eval's ``simple_evaluate``
runs the tasks. A point is a method with its factor and its own parameters
(``--methods "yarn,self_extend:group_size=4:neighbor_window=1024"``); each point's
results are saved in lm-eval's own format under ``OUTPUT/<point name>/``
(``yarn_x4``, ``self_extend__group_size-4__neighbor_window-1024``), so lm-eval's
tools and ``lmeval-ctx report`` read them. Every point is resolved against the
model's config, as ``ctx-hf`` will resolve it, before the weights load.

A point is done only when it is saved and is the same point. After lm-eval has
written a point's results (and samples), the sweep checks that the files are
there and complete, then writes the point's manifest (``sweep_manifest.json``:
what determines its results, and the files it wrote), last and atomically. A
re-run skips a point only when its manifest matches the request and its files
are intact; a point whose manifest differs stops the sweep before the model
loads, naming what differs (``overwrite=True`` re-runs it instead); a point left
without a manifest (interrupted), with an unreadable manifest or with missing
files is reported and re-run. Old output is moved to ``OUTPUT.replaced/``,
never mixed with the new. A failing method is reported, its traceback kept in
``error.log``, and the sweep goes on. docs/sweep.md describes the rules.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

from lmeval_ctx.common.args import FALSE_SPELLINGS, TRUE_SPELLINGS, closest_key
from lmeval_ctx.methods import ATTENTION_METHOD_OPTIONS, ATTENTION_METHODS, canonical_method, validate_factor
from lmeval_ctx.methods.catalog import MODIFIER_OPTIONS, ROPE_METHOD_OPTIONS
from lmeval_ctx.methods.rope import validate_rope_options

# model args the sweep sets per point; in --model_args they would be ambiguous
PER_POINT_ARGS = ("scaling", "factor")
# In --methods, a point's parameters follow its method after colons (commas separate the points):
# self_extend:group_size=4:neighbor_window=1024
PARAMETER_SEPARATOR = ":"
# In a point's folder name: <method>[_x<factor>]__<key>-<value>__..., keys sorted
NAME_PARAMETER_SEPARATOR, NAME_VALUE_SEPARATOR = "__", "-"
# a text parameter value must be safe in a folder name as it is (numbers and booleans are normalised)
_SAFE_TEXT = re.compile(r"[A-Za-z0-9._+]+")
# model args that place the model or size its batches without changing what it computes: recorded in the
# manifest, not compared on resume
PLACEMENT_ARGS = ("parallelize", "device_map", "max_memory_per_gpu", "max_cpu_memory", "offload_folder",
                  "batch_size", "max_batch_size", "device")
# model args naming local files whose content determines the results, besides pretrained
LOCAL_FILE_ARGS = ("tokenizer", "peft", "delta")
MANIFEST_NAME = "sweep_manifest.json"
MANIFEST_FORMAT = 1
# checkpoint files up to this size are fingerprinted by content (sha256), larger ones by size and mtime
HASHED_FILE_LIMIT = 32 * 2**20
# files in a checkpoint folder that cannot change what the model computes
_NOT_MODEL_FILES = (".md", ".pyc", ".lock")
_NOT_MODEL_PREFIXES = (".", "LICENSE", "NOTICE", "USE_POLICY")


class OutputPathError(Exception):
    """The output path cannot hold the sweep's files (found before the model loads)."""


class ResumeConflict(ValueError):
    """Points already in the output folder were run with other settings than the request."""


class PointNotSaved(Exception):
    """lm-eval did not write a point's results or samples completely."""


def format_factor(factor: float) -> str:
    """The factor as text that tells apart every two different numbers.

    Whole numbers print without a decimal point (``4``); others in Python's
    shortest round-trip form (``2.0000001``), never rounded, so two factors
    share a folder or a label only when they are the same number.
    """
    if float(factor).is_integer() and abs(factor) < 2**53:
        return str(int(factor))
    return repr(float(factor))


def format_value(value) -> str:
    """A parameter's value as written in point names and labels: numbers as :func:`format_factor`,
    booleans as ``true``/``false``, text as it is."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return format_factor(value)
    return str(value)


@dataclass(frozen=True)
class SweepPoint:
    """One point of the grid: a method, its factor (None: none, an attention-level method, or the
    method's default) and its own parameters (``group_size``, ``window``, ``beta_fast``, ``logn``, ...)."""

    method: str
    factor: float | None
    params: tuple[tuple[str, object], ...] = ()  # (key, value), sorted by key

    def __post_init__(self):
        # sorted once here, so equal settings given in any order are one point with one name
        object.__setattr__(self, "params", tuple(sorted(dict(self.params).items())))

    @property
    def label(self) -> str:
        """The factor as printed in folder names and tables ("" without one)."""
        return "" if self.factor is None else format_factor(self.factor)

    @property
    def parameters_text(self) -> str:
        """``group_size=4, neighbor_window=1024`` ("" without parameters)."""
        return ", ".join(f"{key}={format_value(value)}" for key, value in self.params)

    @property
    def display(self) -> str:
        """The method with its parameters, as in tables: ``self_extend (group_size=4, neighbor_window=1024)``."""
        return self.method + (f" ({self.parameters_text})" if self.params else "")

    @property
    def spec(self) -> str:
        """The point as written in --methods: ``self_extend:group_size=4:neighbor_window=1024``."""
        factor = [("factor", self.factor)] if self.factor is not None else []
        return self.method + "".join(f"{PARAMETER_SEPARATOR}{key}={format_value(value)}"
                                     for key, value in factor + list(self.params))

    @property
    def name(self) -> str:
        """The folder name (and manifest key): ``pi_x4``, ``self_extend__group_size-4__neighbor_window-1024``.

        Keys sorted and values formatted as :func:`format_value` (exact: two different numbers
        never print alike), so two points share a folder only when their settings are equal.
        """
        base = self.method if self.factor is None else f"{self.method}_x{self.label}"
        return base + "".join(f"{NAME_PARAMETER_SEPARATOR}{key}{NAME_VALUE_SEPARATOR}{format_value(value)}"
                              for key, value in self.params)

    @property
    def model_args(self) -> dict:
        return {"scaling": self.method, **({"factor": self.factor} if self.factor is not None else {}),
                **dict(self.params)}


def takes_factor(method: str) -> bool:
    """Whether ``method`` is a RoPE or ALiBi rescaling, set by a factor (not none, not attention-level)."""
    return method != "none" and method not in ATTENTION_METHODS


def point_parameters(method: str) -> frozenset[str]:
    """The parameters a point of ``method`` may set: the method's own options (read from
    ATTENTION_METHOD_OPTIONS / ROPE_METHOD_OPTIONS), the modifiers every RoPE method takes
    (``rope_theta``, ``logn``), and ``factor`` for the rescalings (then the point runs at that
    factor only, not at every ``--factor``)."""
    own = ATTENTION_METHOD_OPTIONS.get(method) or ROPE_METHOD_OPTIONS.get(method) or frozenset()
    return frozenset(own) | MODIFIER_OPTIONS | ({"factor"} if takes_factor(method) else frozenset())


def method_option_names() -> frozenset[str]:
    """Every method's own options (not the modifiers): a point sets them, never --model_args."""
    return frozenset().union(*ATTENTION_METHOD_OPTIONS.values(), *ROPE_METHOD_OPTIONS.values())


def _parameter_value(item: str, key: str, text: str):
    """``text`` as a number (integral ones as int, so ``4`` and ``4.0`` are one setting), a boolean
    (true/false/yes/no) or, failing both, text safe in a folder name."""
    try:
        number = float(text)
    except ValueError:
        number = None
    if number is not None:
        if not math.isfinite(number):
            raise ValueError(f"--methods point {item!r}: {key}={text} is not a finite number.")
        return int(number) if number.is_integer() and abs(number) < 2**53 else number
    spelled = text.lower()
    if spelled in TRUE_SPELLINGS or spelled in FALSE_SPELLINGS:
        return spelled in TRUE_SPELLINGS
    if not _SAFE_TEXT.fullmatch(text):
        raise ValueError(f"--methods point {item!r}: {key}={text!r} is neither a number nor a boolean, and "
                         "holds characters a folder name cannot carry. Give a number or true/false.")
    return text


def parse_point(item: str) -> tuple[str, dict]:
    """One --methods item, ``method[:key=value...]``: (canonical method, {key: value}).

    Keys must be parameters of the method (:func:`point_parameters`); values are checked
    here as far as they can be without the model's config (numbers > 0 for the RoPE
    options and ``rope_theta``, ``factor`` >= 1). The rest (an attention method's
    ranges against the trained length, required options) is checked by
    :func:`check_points_against_config` before the weights load.
    """
    method_text, *parts = str(item).strip().split(PARAMETER_SEPARATOR)
    method = canonical_method(method_text.strip())
    allowed = point_parameters(method)
    params: dict = {}
    for part in parts:
        key, equals, text = (piece.strip() for piece in part.partition("="))
        if not equals or not key or not text:
            raise ValueError(
                f"--methods point {item!r}: {part!r} is not key=value. Write a point as method{PARAMETER_SEPARATOR}"
                f"key=value{PARAMETER_SEPARATOR}key=value, e.g. self_extend:group_size=4:neighbor_window=1024.")
        if key not in allowed:
            close = closest_key(key, allowed)
            raise ValueError(
                f"--methods point {item!r}: {method} has no parameter {key!r}"
                + (f" (did you mean {close}?)" if close else "")
                + f". Parameters of {method}: {', '.join(sorted(allowed))}.")
        if key in params:
            raise ValueError(f"--methods point {item!r} gives {key} twice; give it once.")
        params[key] = _parameter_value(item, key, text)
    if "factor" in params:
        params["factor"] = validate_factor(params["factor"])
    table = {**ROPE_METHOD_OPTIONS, **ATTENTION_METHOD_OPTIONS}
    if method in table:
        try:
            validate_rope_options(method, {k: v for k, v in params.items() if k != "factor"}, table)
        except ValueError as error:
            raise ValueError(f"--methods point {item!r}: {error}") from None
    return method, params


def sweep_points(methods, factors=None, log=None) -> list[SweepPoint]:
    """The grid: every item of ``methods`` (``method[:key=value...]``) at every factor, except
    ``none``, the attention-level methods and points that give their own ``factor``, which run
    once (or the rescalings at their default without factors).

    Factors equal as numbers (``2`` and ``2.0``) are one point, and so are points whose
    method, factor and parameters are equal; ``log``, when given, is told so.
    """
    items = [str(m).strip() for m in (methods.split(",") if isinstance(methods, str) else methods)
             if str(m).strip()]
    if not items:
        raise ValueError("--methods is empty: name at least one of none, pi, ntk, dynamic_ntk, yarn, ... "
                         "(with parameters: self_extend:group_size=4:neighbor_window=1024).")
    if isinstance(factors, str):
        factors = [f.strip() for f in factors.split(",") if f.strip()]
    values: list[float | None] = [None]
    if factors:
        values = []
        for text in factors:
            value = validate_factor(_number(text))
            if value in values:
                if log is not None:
                    log(f"[sweep] factor {text} equals factor {format_factor(value)} as a number: one point")
                continue
            values.append(value)
    points: list[SweepPoint] = []
    for item in items:
        method, params = parse_point(item)
        own_factor = params.pop("factor", None)
        for factor in ([own_factor] if own_factor is not None else values if takes_factor(method) else [None]):
            point = SweepPoint(method, factor, tuple(params.items()))
            if point in points:
                if log is not None:
                    log(f"[sweep] {item} equals point {point.name}, given before: one point")
                continue
            points.append(point)
    return points


def check_model_args(model_args: dict, points: list[SweepPoint]) -> None:
    """ValueError for a parameter set in --model_args and by a point, or a method's own option in
    --model_args (the model loads with ``scaling=none``, which takes none of them)."""
    both = [f"{key} is set in --model_args ({key}={model_args[key]}) and in --methods point {point.spec}"
            for point in points for key, _ in point.params if key in model_args]
    if both:
        raise ValueError("; ".join(both) + ". Set it in one place: --model_args for every point, or per point "
                                           "in --methods.")
    own = sorted(set(model_args) & method_option_names())
    if own:
        raise ValueError(
            f"--model_args sets {', '.join(own)}, the option(s) of a method: the sweep loads the model with "
            "scaling=none and applies each point's method with that point's parameters. Give them per point, "
            f"e.g. --methods {points_example(own[0])}.")


def points_example(key: str) -> str:
    """A --methods item that sets ``key``, for error messages."""
    table = {**ROPE_METHOD_OPTIONS, **ATTENTION_METHOD_OPTIONS}
    method = next((name for name, keys in table.items() if key in keys), "yarn")
    return f"{method}{PARAMETER_SEPARATOR}{key}=<value>"


def check_points_against_config(model_args: dict, points: list[SweepPoint], log=print) -> None:
    """Resolve every point against the model's config as ``ctx-hf`` will, before the weights load.

    The request is what :meth:`CtxHFLM.apply_extension` will resolve: the extension arguments of
    --model_args with the point's method, factor and parameters. Every point that fails is named in
    one ValueError. A config that cannot be read here is logged and left to the load to report.
    """
    import copy

    from lmeval_ctx.common.args import parse_bool
    from lmeval_ctx.extension.request import resolve_extension
    from lmeval_ctx.extension.lifecycle import EXTENSION_ARGS, full_request
    from lmeval_ctx.common.checkpoint import from_pretrained_kwargs

    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(model_args["pretrained"]), **from_pretrained_kwargs(
            model_args.get("gguf_file") or None, str(model_args.get("revision") or "main"),
            parse_bool(model_args.get("trust_remote_code", False), "trust_remote_code"),
            str(model_args.get("subfolder") or "")))
    except Exception as error:  # noqa: BLE001 - transformers raises OSError, ValueError, ... by cause
        log(f"[sweep] could not read the config of {model_args['pretrained']} to check the points before loading "
            f"({type(error).__name__}: {error}); the load checks them")
        return
    shared = {key: model_args[key] for key in EXTENSION_ARGS if key in model_args}
    problems = []
    for point in points:
        try:
            resolve_extension(copy.deepcopy(config), **full_request({**shared, **point.model_args}))
        except (ValueError, TypeError) as error:  # TypeError: an argument ctx-hf does not take
            problems.append(f"{point.spec}: {error}")
    if problems:
        raise ValueError("point(s) that cannot run on this model (resolved against its config, before loading):\n  "
                         + "\n  ".join(problems) + "\nFix their parameters in --methods or leave them out.")


def _number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return text  # validate_factor names it


@lru_cache(maxsize=4)
def _task_manager(include_path: tuple[str, ...] = ()):
    """lm-eval's task index (plugin tasks and ``include_path`` included), built once per process:
    it takes seconds."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(include_path) or None)


def point_task_manager(metadata: dict, include_path: tuple[str, ...] = ()):
    """The TaskManager ``simple_evaluate`` would build for one point, sharing the process's task index.

    ``simple_evaluate`` builds a TaskManager with the model args and metadata whenever it is
    given none, and indexing every task YAML costs seconds of CPU per point. The index does
    not depend on the metadata (tasks are built from fresh copies of their configs), so each
    point gets a copy of the indexed manager with its own factory. None (let lm-eval build
    one) if lm-eval's TaskManager no longer has that layout.
    """
    import copy

    try:
        from lm_eval.tasks._factory import TaskFactory
    except ImportError:
        return None
    base = _task_manager(include_path)
    if not hasattr(base, "_factory"):
        return None
    manager = copy.copy(base)
    manager.metadata = metadata
    manager._factory = TaskFactory(meta=metadata)
    return manager


def check_tasks(tasks: list[str], include_path: tuple[str, ...] = ()) -> None:
    """Unknown task names are an error before anything is loaded."""
    manager = _task_manager(include_path)
    unknown = [task for task in tasks if not manager.match_tasks([task])]
    if unknown:
        raise ValueError(f"Unknown task(s): {', '.join(unknown)}. See `lm_eval ls tasks` (ours: passkey*, longppl*).")


def task_versions(tasks: list[str], include_path: tuple[str, ...] = ()) -> dict:
    """``{task: version}`` for every task, group or tag the names match (lm-eval's ``metadata.version``)."""
    manager = _task_manager(include_path)
    versions = {}
    for task in tasks:
        for name in manager.match_tasks([task]):
            entry = manager.task_index.get(name)
            config = (entry.cfg if entry is not None else None) or {}
            metadata = config.get("metadata") if isinstance(config.get("metadata"), dict) else {}
            versions[name] = metadata.get("version")
    return dict(sorted(versions.items()))


def parse_seed(seed) -> list[int]:
    """lm-eval's --seed: one number for all four seeds, or python,numpy,torch,fewshot."""
    if seed is None:
        return [0, 1234, 1234, 1234]
    parts = [int(part) for part in str(seed).split(",")]
    if len(parts) == 1:
        return parts * 4
    if len(parts) != 4:
        raise ValueError(f"--seed {seed!r}: give one number or four (python,numpy,torch,fewshot).")
    return parts


def lm_eval_default_device() -> str:
    """The device ``lm_eval`` uses without ``--device`` (its EvaluatorConfig's default, ``cuda:0``).

    HFLM falls back to the CPU when that device does not exist, so the sweep runs where
    ``lm_eval`` runs.
    """
    from lm_eval.config.evaluate_config import EvaluatorConfig

    return next(field.default for field in dataclasses.fields(EvaluatorConfig) if field.name == "device")


# ---------------------------------------------------------------- what determines a point's results

def file_fingerprint(path: Path) -> dict:
    """sha256 of a file up to HASHED_FILE_LIMIT bytes; size and mtime (ns) of a larger one."""
    stat = path.stat()
    if stat.st_size <= HASHED_FILE_LIMIT:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return {"sha256": digest.hexdigest()}
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def folder_fingerprint(folder: Path) -> dict:
    """The fingerprints of a checkpoint folder's top-level files (config, weights, tokenizer, code).

    Left out: hidden files, documentation, licences and lock files, which cannot change
    what the model computes.
    """
    files = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith(_NOT_MODEL_PREFIXES) or path.name.endswith(_NOT_MODEL_FILES):
            continue
        files[path.name] = file_fingerprint(path)
    return files


def model_identity(model_args: dict) -> dict:
    """What identifies the checkpoint ``model_args`` load, read without loading it.

    A local folder: its resolved path and :func:`folder_fingerprint` (with ``gguf_file``,
    only that file's fingerprint). A hub name: the name, the revision, and the commit and
    files of the snapshot in the local Hugging Face cache (None while it is not cached).
    Local ``tokenizer``/``peft``/``delta`` paths are fingerprinted the same way.
    """
    pretrained = str(model_args["pretrained"])
    gguf_file = model_args.get("gguf_file")
    identity: dict = {"pretrained": pretrained, "revision": str(model_args.get("revision", "main")),
                      "gguf_file": gguf_file}
    path = Path(pretrained).expanduser()
    if path.exists():
        folder = path.resolve()
        identity.update(pretrained=str(folder), source="local", commit=None)
    else:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(pretrained, gguf_file or "config.json", revision=identity["revision"])
        folder = Path(cached).parent if isinstance(cached, str) else None
        identity.update(source="hub", commit=folder.name if folder is not None else None)
    if folder is None:
        identity["files"] = None
    elif folder.is_file():
        identity["files"] = {folder.name: file_fingerprint(folder)}
    elif gguf_file:
        gguf = Path(gguf_file) if Path(gguf_file).is_absolute() else folder / gguf_file
        identity["files"] = {str(gguf_file): file_fingerprint(gguf) if gguf.is_file() else None}
    else:
        identity["files"] = folder_fingerprint(folder)
    for key in LOCAL_FILE_ARGS:
        value = model_args.get(key)
        local = Path(str(value)).expanduser() if isinstance(value, str) else None
        if local is not None and local.exists():
            local = local.resolve()
            identity[key] = {"path": str(local), "files": folder_fingerprint(local) if local.is_dir()
                             else {local.name: file_fingerprint(local)}}
    return identity


def package_versions() -> dict:
    from importlib.metadata import version

    return {name: version(dist) for name, dist in
            (("lm_eval", "lm-eval"), ("lmeval_ctx", "lmeval-ctx"), ("transformers", "transformers"),
             ("torch", "torch"))}


def _plain(value):
    """``value`` as JSON would give it back, so a request compares equal to its saved manifest."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def sweep_request(model_args: dict, tasks: list[str], *, limit, seeds, metadata, include_path=(),
                  samples=None, gen_kwargs=None) -> dict:
    """The part of every point's manifest that is compared on resume (the method is added per point).

    ``include_path``, ``samples`` and ``gen_kwargs`` enter it only when given, so a sweep without
    them compares equal to manifests written before they existed.
    """
    compared_args = {key: value for key, value in model_args.items()
                     if key not in PLACEMENT_ARGS and key != "pretrained"}
    passed = {"include_path": list(include_path) or None, "samples": samples, "gen_kwargs": gen_kwargs}
    return _plain({
        **{key: value for key, value in passed.items() if value is not None},
        "model": model_identity(model_args),
        "model_args": compared_args,
        "tasks": task_versions(tasks, tuple(include_path)),
        "metadata": metadata or {},
        "limit": limit,
        "seed": seeds,
        "versions": package_versions(),
    })


def _flatten(value, prefix=""):
    if isinstance(value, dict) and value:
        items = {}
        for key, inner in value.items():
            items.update(_flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return items
    return {prefix: value}


def request_differences(saved: dict, requested: dict) -> list[str]:
    """``"key: <saved> there, <requested> now"`` for every field that differs."""
    saved, requested = _flatten(saved), _flatten(requested)
    missing = object()
    lines = []
    for key in sorted(set(saved) | set(requested)):
        before, now = saved.get(key, missing), requested.get(key, missing)
        if before != now:
            shown = ["(not set)" if side is missing else json.dumps(side) for side in (before, now)]
            lines.append(f"{key}: {shown[0]} there, {shown[1]} now")
    return lines


# ---------------------------------------------------------------- the state of a point's folder

@dataclass
class PointState:
    kind: str  # "new", "done", "differs" or "incomplete"
    detail: str | list[str] | None = None


def inspect_point(folder: Path, request: dict, log_samples: bool) -> PointState:
    """Whether ``folder`` holds this very point, saved completely."""
    if not folder.is_dir() or all(path.name == "error.log" for path in folder.iterdir()):
        return PointState("new")
    manifest_path = folder / MANIFEST_NAME
    if not manifest_path.is_file():
        return PointState("incomplete", f"it has output but no {MANIFEST_NAME} (the run was interrupted before "
                                        "it was saved, or it was written by an lmeval-ctx without manifests)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"format {manifest.get('format')!r}, expected {MANIFEST_FORMAT}")
        saved_request, outputs = manifest["request"], manifest["outputs"]
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as error:
        return PointState("incomplete", f"its manifest {manifest_path} is unreadable ({type(error).__name__}: {error})")
    problem = _outputs_problem(folder, outputs, log_samples)
    if problem:
        return PointState("incomplete", problem)
    differences = request_differences(saved_request, request)
    return PointState("differs", differences) if differences else PointState("done")


def _outputs_problem(folder: Path, outputs: dict, log_samples: bool) -> str | None:
    """What is wrong with the files a manifest lists, or None when they are all there, unchanged."""
    try:
        listed = [outputs["results"]] + list((outputs.get("samples") or {}).values())
        for entry in listed:
            path = folder / entry["path"]
            if not path.is_file():
                return f"{path} is missing"
            size = path.stat().st_size
            if size != entry["size"]:
                return f"{path} has {size} bytes, its manifest says {entry['size']} (truncated or changed)"
        results_path = folder / outputs["results"]["path"]
        json.loads(results_path.read_text(encoding="utf-8"))
    except (KeyError, TypeError, AttributeError) as error:
        return f"its manifest does not list its files ({type(error).__name__}: {error})"
    except (OSError, ValueError) as error:
        return f"its results file is unreadable ({type(error).__name__}: {error})"
    if log_samples and not outputs.get("samples"):
        return "it was run without --log_samples and this sweep asks for samples"
    unlisted = sorted(str(path) for path in folder.rglob("results_*.json") if path != results_path)
    if unlisted:
        return f"it holds results its manifest does not list: {', '.join(unlisted)}"
    return None


def check_output_path(output_path: Path, points: list[SweepPoint]) -> None:
    """The output folder (and every point's folder in it) can hold files: else OutputPathError, before any load."""
    if output_path.exists() and not output_path.is_dir():
        raise OutputPathError(f"--output_path {output_path} is a file, not a folder. Name a folder.")
    try:
        output_path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputPathError(f"--output_path {output_path} cannot be created: {error}. Name a folder you can "
                              "write to.") from None
    for folder in [output_path] + [output_path / point.name for point in points]:
        if folder.exists() and not folder.is_dir():
            raise OutputPathError(f"{folder} is a file, where the sweep writes the folder of point {folder.name}. "
                                  "Move it away or use another --output_path.")
        if folder.is_dir():
            problem = _write_problem(folder)
            if problem:
                raise OutputPathError(f"cannot write in {folder}: {problem}. Use a folder you can write to.")


def _write_problem(folder: Path) -> str | None:
    """Why a file cannot be created in ``folder`` (tried for real), or None."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=".lmeval-ctx-write-test-", dir=folder)
        os.close(handle)
        os.unlink(name)
    except OSError as error:
        return f"{type(error).__name__}: {error}"
    return None


def replaced_folder(output_path: Path, point: SweepPoint) -> Path:
    """Where a point's old output goes: ``OUTPUT.replaced/<point>-<UTC time>/``, outside OUTPUT.

    Outside, so ``lmeval-ctx report OUTPUT`` never reads old and new output together.
    """
    resolved = output_path.resolve()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return resolved.parent / f"{resolved.name}.replaced" / f"{point.name}-{stamp}"


def _move_aside(folder: Path, output_path: Path, point: SweepPoint) -> Path:
    target = replaced_folder(output_path, point)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(folder), str(target))
    except OSError as error:
        raise OutputPathError(f"cannot move the old output of {folder} to {target}: {error}") from None
    return target


# ---------------------------------------------------------------- running

def run_sweep(model_args: dict, points: list[SweepPoint], tasks: list[str], output_path, *, batch_size=1,
              device=None, limit=None, log_samples=False, seed=None, metadata=None, overwrite=False,
              include_path=None, samples=None, gen_kwargs=None, log=print) -> list[dict]:
    """Run every point of the grid; return ``{point, status, folder, error}`` per point.

    ``device=None`` is lm_eval's default device. ``overwrite`` re-runs points whose manifest
    differs from the request (their old output moved aside) instead of raising ResumeConflict.
    ``include_path`` (task folders), ``samples`` (``{task: [document indices]}``) and
    ``gen_kwargs`` (``"key=value,..."``) mean what they mean to ``lm_eval``.
    """
    clashes = [key for key in PER_POINT_ARGS if key in model_args]
    if clashes:
        raise ValueError(f"--model_args sets {', '.join(clashes)}: the sweep sets these per point; "
                         "use --methods and --factor instead.")
    if "pretrained" not in model_args:
        raise ValueError("--model_args needs pretrained=<model>.")
    check_model_args(model_args, points)
    seeds = parse_seed(seed)
    if limit is not None and samples is not None:
        raise ValueError("--limit and --samples cannot be combined (as in lm_eval): keep one of them.")
    chosen_samples = samples  # lm_eval's --samples; the name samples is taken by each point's logged samples
    include_path = tuple(str(Path(folder).resolve()) for folder in (include_path or ()))
    missing = [folder for folder in include_path if not Path(folder).is_dir()]
    if missing:
        raise ValueError(f"--include_path {', '.join(missing)}: no such folder.")
    check_tasks(tasks, include_path)
    output_path = Path(output_path)
    check_output_path(output_path, points)
    shared = sweep_request(model_args, tasks, limit=limit, seeds=seeds, metadata=metadata,
                           include_path=include_path, samples=samples, gen_kwargs=gen_kwargs)

    outcomes, pending, conflicts, moves = {}, [], [], []
    for point in points:
        folder = output_path / point.name
        request = {**shared, "method": _plain(point.model_args)}
        state = inspect_point(folder, request, log_samples)
        if state.kind == "done":
            log(f"[sweep] {point.name}: already done in {folder} (its manifest matches), skipped")
            outcomes[point] = {"point": point, "status": "skipped (done)", "folder": folder, "error": None}
            continue
        if state.kind == "differs":
            if not overwrite:
                conflicts.append(f"{folder}:\n    " + "\n    ".join(state.detail))
                continue
            moves.append((point, folder, "was run with other settings (--overwrite): " + "; ".join(state.detail)))
        elif state.kind == "incomplete":
            moves.append((point, folder, state.detail))
        pending.append(point)
    if conflicts:
        raise ResumeConflict(
            "points in the output folder were run with other settings than this sweep asks for:\n  "
            + "\n  ".join(conflicts)
            + "\nRun with the same settings to resume, use another --output_path, or add --overwrite to re-run "
              "these points (their old output is moved to "
            + f"{output_path.resolve().parent / (output_path.resolve().name + '.replaced')}/).")
    if pending:
        check_points_against_config(model_args, pending, log)
    for point, folder, reason in moves:
        target = _move_aside(folder, output_path, point)
        log(f"[sweep] {point.name}: {reason}; old output moved to {target}; re-running")
    if not pending:
        return [outcomes[point] for point in points]

    import lm_eval
    from lm_eval.loggers import EvaluationTracker

    from lmeval_ctx.model_wrappers.ctx_hf import CtxHFLM

    device = device or lm_eval_default_device()
    lm = CtxHFLM(**model_args, batch_size=batch_size, device=device)
    not_compared = {"batch_size": batch_size, "device": str(lm.device),
                    **{key: model_args[key] for key in PLACEMENT_ARGS if key in model_args}}
    for point in pending:
        folder = output_path / point.name
        log(f"[sweep] {point.name}: running {', '.join(tasks)}")
        try:
            lm.apply_extension(**point.model_args)
            tracker = EvaluationTracker(output_path=str(folder))
            point_args = {**model_args, **point.model_args}
            results = lm_eval.simple_evaluate(
                model=lm, model_args=point_args, tasks=tasks, limit=limit, samples=chosen_samples,
                gen_kwargs=gen_kwargs, log_samples=log_samples, evaluation_tracker=tracker, metadata=metadata,
                task_manager=point_task_manager(point_args | (metadata or {}), include_path),
                random_seed=seeds[0], numpy_random_seed=seeds[1], torch_random_seed=seeds[2],
                fewshot_random_seed=seeds[3],
            )
            results["config"]["model"] = "ctx-hf"
            samples = results.pop("samples", None)
            tracker.save_results_aggregated(results=results, samples=samples)
            if log_samples:
                for task_name in results["configs"]:
                    tracker.save_results_samples(task_name=task_name, samples=samples[task_name])
            outputs = saved_outputs(folder, results, samples if log_samples else None)
            # identity again: a hub model is in the local cache only now that it has loaded
            request = {**shared, "model": _plain(model_identity(model_args)), "method": _plain(point.model_args)}
            write_manifest(folder, {
                "format": MANIFEST_FORMAT, "point": point.name, "request": request, "log_samples": log_samples,
                "outputs": outputs, "context_extension": results["config"].get("context_extension"),
                "not_compared": _plain(not_compared),
                "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            })
            (folder / "error.log").unlink(missing_ok=True)
            outcomes[point] = {"point": point, "status": "done", "folder": folder, "error": None,
                               "results": results["results"]}
        except Exception as error:  # noqa: BLE001 - one failing method must not stop the others
            message = f"{type(error).__name__}: {error}"
            try:
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "error.log").write_text(traceback.format_exc())
                where = f"traceback in {folder / 'error.log'}"
            except OSError as log_error:
                where = f"its traceback could not be written to {folder} either ({log_error})"
            log(f"[sweep] {point.name}: FAILED ({message}); {where}")
            outcomes[point] = {"point": point, "status": "failed", "folder": folder, "error": message}
        finally:
            _release_memory()
    return [outcomes[point] for point in points]


def saved_outputs(folder: Path, results: dict, samples: dict | None) -> dict:
    """The results (and samples) files lm-eval wrote under ``folder``, checked complete; else PointNotSaved.

    lm-eval's EvaluationTracker logs a failed write as a warning and carries on, so the
    files are looked for: one results file that reads back, and per task a samples file
    with one line per sample.
    """
    found = sorted(folder.rglob("results_*.json"))
    if len(found) != 1:
        problem = _write_problem(folder) or "no error on a test write"
        raise PointNotSaved(f"lm-eval did not write the results file under {folder} ({problem}); "
                            f"found {len(found)} results files")
    results_path = found[0]
    try:
        json.loads(results_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise PointNotSaved(f"the results file {results_path} does not read back: {error}") from None
    outputs = {"results": _file_entry(folder, results_path), "samples": {}}
    if samples is None:
        return outputs
    date_id = results_path.stem[len("results_"):]
    for task_name in results["configs"]:
        path = results_path.parent / f"samples_{task_name}_{date_id}.jsonl"
        expected = len(samples[task_name])
        try:
            with open(path, "rb") as handle:
                lines = sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 20), b""))
        except OSError as error:
            raise PointNotSaved(f"lm-eval did not write the samples of {task_name} ({path}): {error}") from None
        if lines != expected:
            raise PointNotSaved(f"the samples file {path} has {lines} samples, the run produced {expected}")
        outputs["samples"][task_name] = {**_file_entry(folder, path), "lines": lines}
    return outputs


def _file_entry(folder: Path, path: Path) -> dict:
    return {"path": str(path.relative_to(folder)), "size": path.stat().st_size}


def write_manifest(folder: Path, manifest: dict) -> Path:
    """Write ``folder/sweep_manifest.json`` atomically (a temporary file, flushed, then renamed over)."""
    path = folder / MANIFEST_NAME
    text = json.dumps(manifest, indent=2, sort_keys=True, default=str)
    handle, temporary = tempfile.mkstemp(prefix=f".{MANIFEST_NAME}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _release_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def summary_table(outcomes: list[dict]) -> str:
    lines = ["| method | factor | status | folder |", "|---|---|---|---|"]
    for outcome in outcomes:
        point = outcome["point"]
        status = outcome["status"] + (f": {outcome['error']}" if outcome["error"] else "")
        lines.append(f"| {point.display} | {point.label} | {status} | {outcome['folder']} |")
    return "\n".join(lines)
