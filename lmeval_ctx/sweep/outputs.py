"""A sweep's output folders: manifests, what resumes, what conflicts, where old output goes.

A point is done only when it is saved and is the same point. After lm-eval has written a
point's results (and samples), :func:`saved_outputs` checks that the files are there and
complete, then :func:`write_manifest` writes the point's ``sweep_manifest.json`` (what
determines its results, and the files it wrote), last and atomically. On a re-run,
:func:`plan_points` inspects every requested point's folder (:func:`inspect_point`): a point
whose manifest matches the request and whose files are intact is skipped; one whose manifest
differs stops the sweep before the model loads (:class:`ResumeConflict`, naming what differs),
or with ``overwrite`` is re-run; one left without a manifest, with an unreadable manifest or
with missing files is re-run. Old output is moved to ``OUTPUT.replaced/``, never mixed with the
new. docs/sweep.md describes the rules.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from lmeval_ctx.sweep.points import SweepPoint
from lmeval_ctx.sweep.request import point_request, request_differences

MANIFEST_NAME = "sweep_manifest.json"
MANIFEST_FORMAT = 1
ERROR_LOG = "error.log"


class OutputPathError(Exception):
    """The output path cannot hold the sweep's files (found before the model loads)."""


class ResumeConflict(ValueError):
    """Points already in the output folder were run with other settings than the request."""


class PointNotSaved(Exception):
    """lm-eval did not write a point's results or samples completely."""


# ---------------------------------------------------------------- the output path

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


def replaced_folder(output_path: Path, point: SweepPoint) -> Path:
    """Where a point's old output goes: ``OUTPUT.replaced/<point>-<UTC time>/``, outside OUTPUT.

    Outside, so ``lmeval-ctx report OUTPUT`` never reads old and new output together.
    """
    resolved = output_path.resolve()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return resolved.parent / f"{resolved.name}.replaced" / f"{point.name}-{stamp}"


def move_aside(folder: Path, output_path: Path, point: SweepPoint) -> Path:
    """Move a point's old output to :func:`replaced_folder`; OutputPathError when it cannot."""
    target = replaced_folder(output_path, point)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(folder), str(target))
    except OSError as error:
        raise OutputPathError(f"cannot move the old output of {folder} to {target}: {error}") from None
    return target


# ---------------------------------------------------------------- the state of a point's folder

@dataclass
class PointState:
    kind: str  # "new", "done", "differs" or "incomplete"
    detail: str | list[str] | None = None


def inspect_point(folder: Path, request: dict, log_samples: bool) -> PointState:
    """Whether ``folder`` holds this very point, saved completely."""
    if not folder.is_dir() or all(path.name == ERROR_LOG for path in folder.iterdir()):
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


@dataclass
class Plan:
    """What a sweep does with each requested point, decided before the model loads."""

    done: dict = field(default_factory=dict)  # point -> its outcome, "skipped (done)"
    pending: list = field(default_factory=list)  # points to run, in the requested order
    moves: list = field(default_factory=list)  # (point, folder, reason) of old output to move aside first


def plan_points(points: list[SweepPoint], output_path: Path, shared: dict, *, log_samples: bool, overwrite: bool,
                log=print) -> Plan:
    """Inspect every requested point's folder; ResumeConflict naming every point run with other
    settings (unless ``overwrite``), else the :class:`Plan`."""
    plan, conflicts = Plan(), []
    for point in points:
        folder = output_path / point.name
        state = inspect_point(folder, point_request(shared, point), log_samples)
        if state.kind == "done":
            log(f"[sweep] {point.name}: already done in {folder} (its manifest matches), skipped")
            plan.done[point] = {"point": point, "status": "skipped (done)", "folder": folder, "error": None}
            continue
        if state.kind == "differs":
            if not overwrite:
                conflicts.append(f"{folder}:\n    " + "\n    ".join(state.detail))
                continue
            plan.moves.append((point, folder, "was run with other settings (--overwrite): " + "; ".join(state.detail)))
        elif state.kind == "incomplete":
            plan.moves.append((point, folder, state.detail))
        plan.pending.append(point)
    if conflicts:
        replaced = output_path.resolve().parent / (output_path.resolve().name + ".replaced")
        raise ResumeConflict(
            "points in the output folder were run with other settings than this sweep asks for:\n  "
            + "\n  ".join(conflicts)
            + "\nRun with the same settings to resume, use another --output_path, or add --overwrite to re-run "
              f"these points (their old output is moved to {replaced}/).")
    return plan


def move_old_output(plan: Plan, output_path: Path, log=print) -> None:
    """Move the old output of every point the plan re-runs out of the output folder, saying why."""
    for point, folder, reason in plan.moves:
        target = move_aside(folder, output_path, point)
        log(f"[sweep] {point.name}: {reason}; old output moved to {target}; re-running")


# ---------------------------------------------------------------- a point's files and manifest

def _file_entry(folder: Path, path: Path) -> dict:
    return {"path": str(path.relative_to(folder)), "size": path.stat().st_size}


def _samples_entry(folder: Path, path: Path, task_name: str, expected: int) -> dict:
    """The manifest entry of one task's samples file, checked to hold ``expected`` samples."""
    try:
        with open(path, "rb") as handle:
            lines = sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 20), b""))
    except OSError as error:
        raise PointNotSaved(f"lm-eval did not write the samples of {task_name} ({path}): {error}") from None
    if lines != expected:
        raise PointNotSaved(f"the samples file {path} has {lines} samples, the run produced {expected}")
    return {**_file_entry(folder, path), "lines": lines}


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
        outputs["samples"][task_name] = _samples_entry(folder, path, task_name, len(samples[task_name]))
    return outputs


def point_manifest(point: SweepPoint, request: dict, *, log_samples: bool, outputs: dict,
                   context_extension: dict | None, not_compared: dict) -> dict:
    """A point's manifest: its compared ``request``, the files it wrote, and what is recorded only."""
    return {
        "format": MANIFEST_FORMAT, "point": point.name, "request": request, "log_samples": log_samples,
        "outputs": outputs, "context_extension": context_extension, "not_compared": not_compared,
        "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


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
