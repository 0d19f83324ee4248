"""``lmeval-ctx sweep``: a grid of context-extension methods over lm-eval tasks, with one load.

The weights are loaded once (``ctx-hf`` with ``scaling=none``); each method is
then applied to the loaded model (:meth:`CtxHFLM.apply_extension` rebuilds the
rotary modules or replaces the ALiBi slopes) and lm-eval's ``simple_evaluate``
runs the tasks. Each method's results are saved in lm-eval's own format under
``OUTPUT/<method>[_x<factor>]/``, so lm-eval's tools and ``lmeval-ctx report``
read them. A failing method (out of memory at a long length, say) is reported,
its traceback kept in ``error.log``, and the sweep goes on; a point whose
results are already there is skipped, so re-running the command resumes it.
"""

from __future__ import annotations

import json
import traceback
from dataclasses import dataclass
from pathlib import Path

from lmeval_ctx.methods import canonical_method, validate_factor

# model args the sweep sets per point; in --model_args they would be ambiguous
PER_POINT_ARGS = ("scaling", "factor")


@dataclass(frozen=True)
class SweepPoint:
    method: str
    factor: float | None

    @property
    def name(self) -> str:
        return self.method if self.factor is None else f"{self.method}_x{self.factor:g}"

    @property
    def model_args(self) -> dict:
        return {"scaling": self.method, **({"factor": self.factor} if self.factor is not None else {})}


def sweep_points(methods, factors=None) -> list[SweepPoint]:
    """The grid: ``none`` once, every other method at every factor (or its default without factors)."""
    methods = [m for m in (methods.split(",") if isinstance(methods, str) else methods) if str(m).strip()]
    if not methods:
        raise ValueError("--methods is empty: name at least one of none, pi, ntk, dynamic_ntk, yarn.")
    if isinstance(factors, str):
        factors = [f for f in factors.split(",") if f.strip()]
    factors = [validate_factor(_number(f)) for f in factors] if factors else [None]
    points: list[SweepPoint] = []
    for method in methods:
        method = canonical_method(method)
        for factor in ([None] if method == "none" else factors):
            point = SweepPoint(method, factor)
            if point not in points:
                points.append(point)
    return points


def _number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return text  # validate_factor names it


def completed_tasks(folder: Path) -> set[str]:
    """Task (and group) names with results under ``folder``."""
    done: set[str] = set()
    for path in folder.rglob("results_*.json"):
        try:
            done |= set(json.loads(path.read_text()).get("results", {}))
        except (json.JSONDecodeError, OSError):
            continue
    return done


def check_tasks(tasks: list[str]) -> None:
    """Unknown task names are an error before anything is loaded."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager()
    unknown = [task for task in tasks if not manager.match_tasks([task])]
    if unknown:
        raise ValueError(f"Unknown task(s): {', '.join(unknown)}. See `lm_eval ls tasks` (ours: passkey*, longppl*).")


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


def run_sweep(model_args: dict, points: list[SweepPoint], tasks: list[str], output_path, *, batch_size=1,
              device=None, limit=None, log_samples=False, seed=None, metadata=None, log=print) -> list[dict]:
    """Run every point of the grid; return ``{point, status, folder, error}`` per point."""
    clashes = [key for key in PER_POINT_ARGS if key in model_args]
    if clashes:
        raise ValueError(f"--model_args sets {', '.join(clashes)}: the sweep sets these per point; "
                         "use --methods and --factor instead.")
    if "pretrained" not in model_args:
        raise ValueError("--model_args needs pretrained=<model>.")
    seeds = parse_seed(seed)
    check_tasks(tasks)
    output_path = Path(output_path)
    outcomes, pending = [], []
    for point in points:
        folder = output_path / point.name
        if set(tasks) <= completed_tasks(folder):
            log(f"[sweep] {point.name}: already done in {folder}, skipped")
            outcomes.append({"point": point, "status": "skipped (done)", "folder": folder, "error": None})
        else:
            pending.append(point)
    if not pending:
        return outcomes

    import lm_eval
    from lm_eval.loggers import EvaluationTracker

    from lmeval_ctx.model_wrappers.ctx_hf import CtxHFLM

    lm = CtxHFLM(**model_args, batch_size=batch_size, device=device)
    for point in pending:
        folder = output_path / point.name
        log(f"[sweep] {point.name}: running {', '.join(tasks)}")
        try:
            lm.apply_extension(point.method, **({"factor": point.factor} if point.factor is not None else {}))
            tracker = EvaluationTracker(output_path=str(folder))
            results = lm_eval.simple_evaluate(
                model=lm, model_args={**model_args, **point.model_args}, tasks=tasks, limit=limit,
                log_samples=log_samples, evaluation_tracker=tracker, metadata=metadata,
                random_seed=seeds[0], numpy_random_seed=seeds[1], torch_random_seed=seeds[2],
                fewshot_random_seed=seeds[3],
            )
            results["config"]["model"] = "ctx-hf"
            samples = results.pop("samples", None)
            tracker.save_results_aggregated(results=results, samples=samples)
            if log_samples:
                for task_name in results["configs"]:
                    tracker.save_results_samples(task_name=task_name, samples=samples[task_name])
            (folder / "error.log").unlink(missing_ok=True)
            outcomes.append({"point": point, "status": "done", "folder": folder, "error": None,
                             "results": results["results"]})
        except Exception as error:  # noqa: BLE001 - one failing method must not stop the others
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "error.log").write_text(traceback.format_exc())
            message = f"{type(error).__name__}: {error}"
            log(f"[sweep] {point.name}: FAILED ({message}); traceback in {folder / 'error.log'}")
            outcomes.append({"point": point, "status": "failed", "folder": folder, "error": message})
        finally:
            _release_memory()
    return outcomes


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
        factor = "" if point.factor is None else f"{point.factor:g}"
        lines.append(f"| {point.method} | {factor} | {status} | {outcome['folder']} |")
    return "\n".join(lines)
