"""``lmeval-ctx sweep``: a grid of context-extension methods over lm-eval tasks, with one load.

The weights are loaded once (``ctx-hf`` with ``scaling=none``); each point (a method with its
factor and its own parameters, :mod:`.points`) is then applied to the loaded model
(:meth:`CtxHFLM.apply_extension` rebuilds the rotary modules or replaces the ALiBi slopes) and
lm-eval's ``simple_evaluate`` runs the tasks. Each point's results are saved in lm-eval's own
format under ``OUTPUT/<point name>/``, so lm-eval's tools and ``lmeval-ctx report`` read them,
with a manifest of what produced them (:mod:`.request`, :mod:`.outputs`). Every setting is
checked before the weights load; a re-run resumes (:func:`.outputs.plan_points`). A failing
point is reported, its traceback kept in ``error.log``, and the sweep goes on. docs/sweep.md
describes the rules.
"""

from __future__ import annotations

import dataclasses
import gc
import re
import traceback
from dataclasses import dataclass
from pathlib import Path

import lm_eval
import torch
from lm_eval.loggers import EvaluationTracker

from lmeval_ctx.common.model_args import neutral_args
from lmeval_ctx.model_wrappers.ctx_hf import CtxHFLM
from lmeval_ctx.sweep.outputs import (
    ERROR_LOG,
    check_output_path,
    move_old_output,
    plan_points,
    point_manifest,
    saved_outputs,
    write_manifest,
)
from lmeval_ctx.sweep.points import SweepPoint, check_model_args, check_points_against_config
from lmeval_ctx.sweep.request import (
    include_folders,
    model_identity,
    parse_seed,
    plain,
    point_request,
    point_task_manager,
    sweep_request,
    task_versions,
)

# the name lm-eval knows CtxHFLM by, written into every results file as lm_eval --model ctx-hf would
MODEL_NAME = "ctx-hf"
# lm_eval's --batch_size forms: a whole number, auto, or auto:N (N re-detections over the run)
_BATCH_SIZE = re.compile(r"[1-9][0-9]*|auto(:[0-9]*\.?[0-9]+)?")
# the model args a flag can give too: one source each (load_settings)
LOAD_ARGS = ("batch_size", "device")


@dataclass(frozen=True)
class Evaluation:
    """What lm-eval's ``simple_evaluate`` is given for every point (the same for all of them)."""

    tasks: list[str]
    limit: float | None
    samples: dict | None  # lm_eval's --samples: {task: [document indices]}
    gen_kwargs: str | None
    log_samples: bool
    metadata: dict | None
    include_path: tuple[str, ...]  # resolved folders
    seeds: list[int]  # python, numpy, torch, fewshot


# ---------------------------------------------------------------- loading

def lm_eval_default(name: str):
    """What ``lm_eval`` uses without ``--<name>`` (its EvaluatorConfig's default): ``batch_size`` 1,
    ``device`` ``cuda:0``, which HFLM turns into the CPU when there is no GPU, so the sweep runs
    where ``lm_eval`` runs."""
    from lm_eval.config.evaluate_config import EvaluatorConfig

    return next(field.default for field in dataclasses.fields(EvaluatorConfig) if field.name == name)


def _one_source(name: str, flag_value, model_args: dict):
    """The value of ``--<name>`` or ``--model_args <name>=``, whichever is given; ValueError naming both
    when both are given and differ; None when neither is."""
    given = model_args.get(name)
    if flag_value is not None and given is not None and str(flag_value) != str(given):
        raise ValueError(f"--{name} {flag_value} and --model_args {name}={given} differ: give the {name} once, "
                         f"either as --{name} or in --model_args.")
    return flag_value if flag_value is not None else given


def load_settings(model_args: dict, batch_size=None, device=None) -> tuple:
    """The batch size and device the model loads with: ``--batch_size``/``--device`` or the same keys
    in ``--model_args`` (one source for each; equal values in both are accepted), else lm_eval's
    defaults (:func:`lm_eval_default`)."""
    batch_size = _one_source("batch_size", batch_size, model_args)
    if batch_size is None:
        batch_size = lm_eval_default("batch_size")
    if not _BATCH_SIZE.fullmatch(str(batch_size)):
        raise ValueError(f"batch_size={batch_size!r} is not a batch size: give a whole number >= 1, auto, or "
                         "auto:N, as lm_eval --batch_size.")
    batch_size = int(batch_size) if str(batch_size).isdigit() else batch_size
    return batch_size, _one_source("device", device, model_args) or lm_eval_default("device")


def load_model(model_args: dict, batch_size, device) -> CtxHFLM:
    """The model, loaded once with ``scaling=none``; ``batch_size`` and ``device`` from :func:`load_settings`,
    never twice (``model_args`` may hold them too)."""
    arguments = {key: value for key, value in model_args.items() if key not in LOAD_ARGS}
    return CtxHFLM(**arguments, batch_size=batch_size, device=device)


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- one point

def _evaluate(lm: CtxHFLM, point: SweepPoint, folder: Path, model_args: dict, evaluation: Evaluation):
    """Apply the point to the model and run the tasks; lm-eval's tracker saves them under ``folder``.
    Returns (results, samples)."""
    lm.apply_extension(**point.model_args)
    tracker = EvaluationTracker(output_path=str(folder))
    point_args = {**model_args, **point.model_args}
    seeds = evaluation.seeds
    results = lm_eval.simple_evaluate(
        model=lm, model_args=point_args, tasks=evaluation.tasks, limit=evaluation.limit, samples=evaluation.samples,
        gen_kwargs=evaluation.gen_kwargs, log_samples=evaluation.log_samples, evaluation_tracker=tracker,
        metadata=evaluation.metadata,
        task_manager=point_task_manager(point_args | (evaluation.metadata or {}), evaluation.include_path),
        random_seed=seeds[0], numpy_random_seed=seeds[1], torch_random_seed=seeds[2], fewshot_random_seed=seeds[3],
    )
    results["config"]["model"] = MODEL_NAME
    samples = results.pop("samples", None)
    tracker.save_results_aggregated(results=results, samples=samples)
    if evaluation.log_samples:
        for task_name in results["configs"]:
            tracker.save_results_samples(task_name=task_name, samples=samples[task_name])
    return results, samples


def _failure(point: SweepPoint, folder: Path, error: Exception, trace: str, log) -> dict:
    """A failed point's outcome; its traceback goes to ``folder/error.log``."""
    message = f"{type(error).__name__}: {error}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ERROR_LOG).write_text(trace)
        where = f"traceback in {folder / ERROR_LOG}"
    except OSError as log_error:
        where = f"its traceback could not be written to {folder} either ({log_error})"
    log(f"[sweep] {point.name}: FAILED ({message}); {where}")
    return {"point": point, "status": "failed", "folder": folder, "error": message}


def run_point(lm: CtxHFLM, point: SweepPoint, folder: Path, model_args: dict, evaluation: Evaluation, *,
              shared: dict, not_compared: dict, log=print) -> dict:
    """Run one point and save it (results, samples, then its manifest); its outcome, failed or done."""
    log(f"[sweep] {point.name}: running {', '.join(evaluation.tasks)}")
    try:
        results, samples = _evaluate(lm, point, folder, model_args, evaluation)
        outputs = saved_outputs(folder, results, samples if evaluation.log_samples else None)
        write_manifest(folder, point_manifest(
            point, point_request(shared, point), log_samples=evaluation.log_samples, outputs=outputs,
            context_extension=results["config"].get("context_extension"), not_compared=not_compared))
        (folder / ERROR_LOG).unlink(missing_ok=True)
        return {"point": point, "status": "done", "folder": folder, "error": None, "results": results["results"]}
    except Exception as error:  # noqa: BLE001 - one failing method must not stop the others
        return _failure(point, folder, error, traceback.format_exc(), log)
    finally:
        _release_memory()


# ---------------------------------------------------------------- the sweep

def _run_pending(model_args: dict, points: list[SweepPoint], output_path: Path, evaluation: Evaluation, *,
                 shared: dict, batch_size, device, log) -> dict:
    """Load the model once and run ``points`` in turn: ``{point: outcome}``."""
    lm = load_model(model_args, batch_size, device)
    # identity again: a hub model is in the local cache only now that it has loaded
    shared = {**shared, "model": plain(model_identity(model_args))}
    # recorded, not compared on resume: they place the model and size its batches
    not_compared = plain({**neutral_args(model_args), "batch_size": batch_size, "device": str(lm.device)})
    return {point: run_point(lm, point, output_path / point.name, model_args, evaluation, shared=shared,
                             not_compared=not_compared, log=log) for point in points}


def run_sweep(model_args: dict, points: list[SweepPoint], tasks: list[str], output_path, *, batch_size=None,
              device=None, limit=None, log_samples=False, seed=None, metadata=None, overwrite=False,
              include_path=None, samples=None, gen_kwargs=None, log=print) -> list[dict]:
    """Run every point of the grid; return ``{point, status, folder, error}`` per point.

    ``batch_size`` and ``device`` may instead be given in ``model_args``, not differently in both
    (:func:`load_settings`); without either, lm_eval's defaults. ``overwrite`` re-runs points whose
    manifest differs from the request (their old output moved aside) instead of raising
    ResumeConflict. ``include_path`` (task folders), ``samples`` (``{task: [document indices]}``) and
    ``gen_kwargs`` (``"key=value,..."``) mean what they mean to ``lm_eval``. Every argument is checked
    before the weights load (ValueError; OutputPathError for an output path that cannot hold files).
    """
    check_model_args(model_args, points)
    if not str(model_args.get("pretrained") or "").strip():
        raise ValueError("--model_args needs pretrained=<model>: a model folder or a hub name.")
    batch_size, device = load_settings(model_args, batch_size, device)
    seeds = parse_seed(seed)
    if limit is not None and samples is not None:
        raise ValueError("--limit and --samples cannot be combined (as in lm_eval): keep one of them.")
    evaluation = Evaluation(tasks=list(tasks), limit=limit, samples=samples, gen_kwargs=gen_kwargs,
                            log_samples=log_samples, metadata=metadata, include_path=include_folders(include_path),
                            seeds=seeds)
    versions = task_versions(evaluation.tasks, evaluation.include_path)
    output_path = Path(output_path)
    check_output_path(output_path, points)
    shared = sweep_request(model_args, versions, limit=limit, seeds=seeds, metadata=metadata,
                           include_path=evaluation.include_path, samples=samples, gen_kwargs=gen_kwargs)
    plan = plan_points(points, output_path, shared, log_samples=log_samples, overwrite=overwrite, log=log)
    if plan.pending:
        check_points_against_config(model_args, plan.pending, log)
    move_old_output(plan, output_path, log)
    outcomes = dict(plan.done)
    if plan.pending:
        outcomes.update(_run_pending(model_args, plan.pending, output_path, evaluation, shared=shared,
                                     batch_size=batch_size, device=device, log=log))
    return [outcomes[point] for point in points]


def summary_table(outcomes: list[dict]) -> str:
    """The outcomes as a markdown table: method (with its parameters), factor, status, folder."""
    lines = ["| method | factor | status | folder |", "|---|---|---|---|"]
    for outcome in outcomes:
        point = outcome["point"]
        status = outcome["status"] + (f": {outcome['error']}" if outcome["error"] else "")
        lines.append(f"| {point.display} | {point.label} | {status} | {outcome['folder']} |")
    return "\n".join(lines)
