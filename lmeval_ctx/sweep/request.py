"""What a sweep asks for, and what identifies it: the part of a point's manifest compared on resume.

A point's results are determined by the checkpoint (its files' fingerprints, not only its
name), the model arguments that may change a result (all but
:data:`~lmeval_ctx.common.model_args.RESULT_NEUTRAL_MODEL_ARGS`, which are recorded and not
compared), the tasks and their versions, the metadata, limit, seeds, and the installed versions
of lm-eval, lmeval-ctx, transformers and torch. :func:`sweep_request` gathers them; a saved
manifest is compared to it with :func:`request_differences`. lm-eval's task index, which the
task versions come from, is built here once per process.
"""

from __future__ import annotations

import copy
import hashlib
import json
from functools import lru_cache
from pathlib import Path

from lmeval_ctx.common.model_args import result_args

# model args naming local files whose content determines the results, besides pretrained
LOCAL_FILE_ARGS = ("tokenizer", "peft", "delta")
# checkpoint files up to this size are fingerprinted by content (sha256), larger ones by size and mtime
HASHED_FILE_LIMIT = 32 * 2**20
# files in a checkpoint folder that cannot change what the model computes
_NOT_MODEL_FILES = (".md", ".pyc", ".lock")
_NOT_MODEL_PREFIXES = (".", "LICENSE", "NOTICE", "USE_POLICY")
# lm-eval's default seeds (python, numpy, torch, fewshot), as its --seed
DEFAULT_SEEDS = (0, 1234, 1234, 1234)


# ---------------------------------------------------------------- the checkpoint

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


def _cached_snapshot(pretrained: str, gguf_file: str | None, revision: str) -> Path | None:
    """The folder of a hub model's snapshot in the local Hugging Face cache (None while not cached)."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        cached = try_to_load_from_cache(pretrained, gguf_file or "config.json", revision=revision)
    except HFValidationError as error:
        raise ValueError(f"--model_args pretrained={pretrained}: no such folder, and not a hub model name "
                         f"({error}). Give the path of a model folder or a name like org/model.") from None
    return Path(cached).parent if isinstance(cached, str) else None


def _checkpoint_files(folder: Path | None, gguf_file: str | None) -> dict | None:
    """The fingerprint of what loads from ``folder``: its files, or only ``gguf_file``'s."""
    if folder is None:
        return None
    if folder.is_file():
        return {folder.name: file_fingerprint(folder)}
    if gguf_file:
        gguf = Path(gguf_file) if Path(gguf_file).is_absolute() else folder / gguf_file
        return {str(gguf_file): file_fingerprint(gguf) if gguf.is_file() else None}
    return folder_fingerprint(folder)


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
        folder = _cached_snapshot(pretrained, gguf_file, identity["revision"])
        identity.update(source="hub", commit=folder.name if folder is not None else None)
    identity["files"] = _checkpoint_files(folder, gguf_file)
    for key in LOCAL_FILE_ARGS:
        value = model_args.get(key)
        local = Path(str(value)).expanduser() if isinstance(value, str) else None
        if local is not None and local.exists():
            local = local.resolve()
            identity[key] = {"path": str(local), "files": folder_fingerprint(local) if local.is_dir()
                             else {local.name: file_fingerprint(local)}}
    return identity


def package_versions() -> dict:
    """The installed versions of the packages that compute a point's results."""
    from importlib.metadata import version

    return {name: version(dist) for name, dist in
            (("lm_eval", "lm-eval"), ("lmeval_ctx", "lmeval-ctx"), ("transformers", "transformers"),
             ("torch", "torch"))}


# ---------------------------------------------------------------- lm-eval's tasks

@lru_cache(maxsize=4)
def _task_manager(include_path: tuple[str, ...] = ()):
    """lm-eval's task index (plugin tasks and ``include_path`` included), built once per process:
    it takes seconds."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(include_path) or None)


def task_versions(tasks: list[str], include_path: tuple[str, ...] = ()) -> dict:
    """``{task: version}`` for every task, group or tag the names match (lm-eval's ``metadata.version``);
    ValueError for a name that matches none, before anything is loaded."""
    if not tasks:
        raise ValueError("--tasks is empty: name at least one lm-eval task, e.g. --tasks passkey_4k,longppl_8k.")
    manager = _task_manager(include_path)
    unknown = [task for task in tasks if not manager.match_tasks([task])]
    if unknown:
        raise ValueError(f"Unknown task(s): {', '.join(unknown)}. See `lm_eval ls tasks` (ours: passkey*, longppl*).")
    versions = {}
    for task in tasks:
        for name in manager.match_tasks([task]):
            entry = manager.task_index.get(name)
            config = (entry.cfg if entry is not None else None) or {}
            metadata = config.get("metadata") if isinstance(config.get("metadata"), dict) else {}
            versions[name] = metadata.get("version")
    return dict(sorted(versions.items()))


def point_task_manager(metadata: dict, include_path: tuple[str, ...] = ()):
    """The TaskManager ``simple_evaluate`` would build for one point, sharing the process's task index.

    ``simple_evaluate`` builds a TaskManager with the model args and metadata whenever it is
    given none, and indexing every task YAML costs seconds of CPU per point. The index does
    not depend on the metadata (tasks are built from fresh copies of their configs), so each
    point gets a copy of the indexed manager with its own factory. None (let lm-eval build
    one) if lm-eval's TaskManager no longer has that layout.
    """
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


def include_folders(include_path) -> tuple[str, ...]:
    """``--include_path`` folders, resolved; ValueError naming those that do not exist."""
    folders = tuple(str(Path(folder).resolve()) for folder in (include_path or ()))
    missing = [folder for folder in folders if not Path(folder).is_dir()]
    if missing:
        raise ValueError(f"--include_path {', '.join(missing)}: no such folder.")
    return folders


def parse_seed(seed) -> list[int]:
    """lm-eval's --seed: one number for all four seeds, or python,numpy,torch,fewshot."""
    if seed is None:
        return list(DEFAULT_SEEDS)
    try:
        parts = [int(part) for part in str(seed).split(",")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        return parts * 4
    if len(parts) != 4:
        raise ValueError(f"--seed {seed!r}: give one whole number or four, comma-separated "
                         "(python,numpy,torch,fewshot), e.g. --seed 0 or --seed 0,1234,1234,1234.")
    return parts


# ---------------------------------------------------------------- the request

def plain(value):
    """``value`` as JSON would give it back, so a request compares equal to its saved manifest."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def compared_model_args(model_args: dict) -> dict:
    """The model args a resumed point must match: every one that may change a result, except
    ``pretrained`` (compared through :func:`model_identity`). Placement and batching args
    (:data:`~lmeval_ctx.common.model_args.RESULT_NEUTRAL_MODEL_ARGS`) are left out: the manifest
    records them under ``not_compared``."""
    return {key: value for key, value in result_args(model_args).items() if key != "pretrained"}


def sweep_request(model_args: dict, tasks: dict, *, limit, seeds, metadata, include_path=(),
                  samples=None, gen_kwargs=None) -> dict:
    """The part of every point's manifest that is compared on resume (the method is added per point).

    ``tasks`` is :func:`task_versions`. ``include_path``, ``samples`` and ``gen_kwargs`` enter it
    only when given, so a sweep without them compares equal to manifests written before they existed.
    """
    passed = {"include_path": list(include_path) or None, "samples": samples, "gen_kwargs": gen_kwargs}
    return plain({
        **{key: value for key, value in passed.items() if value is not None},
        "model": model_identity(model_args),
        "model_args": compared_model_args(model_args),
        "tasks": tasks,
        "metadata": metadata or {},
        "limit": limit,
        "seed": seeds,
        "versions": package_versions(),
    })


def point_request(shared: dict, point) -> dict:
    """One point's compared request: the sweep's (:func:`sweep_request`) with the point's method."""
    return {**shared, "method": plain(point.model_args)}


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
