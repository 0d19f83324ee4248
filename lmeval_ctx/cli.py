"""``lmeval-ctx`` / ``python -m lmeval_ctx``: helper commands.

``tasks-path`` prints the plugin's task folder, ``sweep`` runs a grid of methods with one load
(:mod:`lmeval_ctx.sweep`), ``report`` writes a leaderboard, plots and a page
(:mod:`lmeval_ctx.report`). A bad argument is one line on stderr, ``lmeval-ctx COMMAND: error:
...``, and exit status 2, as argparse reports its own; the commands' own modules raise
ValueError for it. The sweep and the report are imported when run: they import lm-eval and torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lmeval_ctx.common.model_args import parse_model_args
from lmeval_ctx.common.paths import tasks_path
from lmeval_ctx.methods.catalog import method_help
from lmeval_ctx.report.results import RELATIVE_FRACTION, RULER_THRESHOLD

USAGE_ERROR, FAILED = 2, 1  # exit statuses, as argparse's own usage errors (2)

SWEEP_DESCRIPTION = (
    "Load the model once with ctx-hf, apply each point (a method with its factor and parameters) in turn and run "
    "the tasks with lm-eval; results go to OUTPUT_PATH/<point>/ (e.g. yarn_x4, "
    "self_extend__group_size-4__neighbor_window-1024) in lm-eval's format, with a manifest of what produced them. "
    "Re-running the same command skips the points whose manifest matches, re-runs interrupted ones, and stops "
    "(before loading) on points run with other settings unless --overwrite. Exit status: 0 all saved, 1 a point "
    "failed or the output path cannot hold files, 2 a usage error or such a conflict. See docs/sweep.md.")
REPORT_DESCRIPTION = (
    "Read lm-eval output folders (lmeval-ctx sweep or lm_eval --output_path; with --log_samples for intervals and "
    "heatmaps): passkey, longppl, RULER, BABILong and any other task. Write leaderboard.md, leaderboard.csv, PNG "
    "plots and index.html. See docs/report.md.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lmeval-ctx", description="Context-extension methods and long-context tasks for lm-evaluation-harness.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in (_add_tasks_path, _add_sweep, _add_report):
        add_command(commands)
    args = parser.parse_args(argv)
    return args.run(args.parser, args)


def _stop(command: argparse.ArgumentParser, status: int, error: Exception) -> None:
    """Exit with ``status`` and the error on stderr as argparse words it, without a traceback."""
    command.exit(status, f"{command.prog}: error: {error}\n")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- tasks-path

def _add_tasks_path(commands) -> None:
    command = commands.add_parser(
        "tasks-path", help="print the plugin's task folder (for lm_eval --include_path)",
        description="Print the folder of lmeval-ctx's task YAMLs, for lm_eval --include_path.")
    command.set_defaults(run=_tasks_path, parser=command)


def _tasks_path(command: argparse.ArgumentParser, args) -> int:
    print(tasks_path())
    return 0


# ---------------------------------------------------------------- sweep

def _add_sweep(commands) -> None:
    command = commands.add_parser(
        "sweep", help="run several context-extension methods over lm-eval tasks, loading the model once",
        description=SWEEP_DESCRIPTION)
    command.set_defaults(run=_sweep, parser=command)
    add = command.add_argument
    add("--model_args", required=True, help="ctx-hf/HFLM arguments, e.g. pretrained=...,dtype=bfloat16")
    add("--methods", required=True,
        help=f"comma-separated points: a method ({method_help()}), optionally with its own parameters after colons, "
             "e.g. none,yarn,self_extend:group_size=4:neighbor_window=1024,rerope:window=4096,"
             "yarn:factor=8:beta_fast=64")
    add("--factor", help="scale factor(s) for the rescaling methods, comma-separated (e.g. 2,4); not for none, the "
                         "attention-level methods, or points giving factor=")
    add("--tasks", required=True, help="comma-separated lm-eval tasks, e.g. passkey_4k,longppl_8k")
    add("--output_path", required=True, help="folder for the points' folders (created)")
    add("--batch_size", default=None, help="as lm_eval --batch_size (a number or auto); default 1. Or batch_size= "
                                           "in --model_args: give it in one place, or the same in both")
    add("--device", default=None, help="as lm_eval --device; default: lm_eval's (cuda:0, or the CPU when there is "
                                       "no GPU). Or device= in --model_args: give it in one place, or the same in both")
    add("--limit", type=float, default=None, help="as lm_eval --limit")
    add("--log_samples", action="store_true", help="as lm_eval --log_samples")
    add("--seed", default=None, help="one number, or python,numpy,torch,fewshot seeds")
    add("--metadata", default=None, help="JSON passed to the tasks, as lm_eval --metadata")
    add("--include_path", default=None,
        help="as lm_eval --include_path: a folder of your own task YAMLs (comma-separated for several)")
    add("--samples", default=None, help='as lm_eval --samples: JSON {"task": [document indices]} (not with --limit)')
    add("--gen_kwargs", default=None, help="as lm_eval --gen_kwargs, e.g. max_gen_toks=16")
    add("--overwrite", action="store_true",
        help="re-run points whose folders were run with other settings (their old output is moved to "
             "OUTPUT_PATH.replaced/) instead of stopping")


def _json_option(text: str | None, flag: str, example: str, valid) -> object:
    """A JSON flag's value (None when not given); ValueError naming the flag when it is not ``valid``."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{flag} is not valid JSON: {error}") from None
    if not valid(value):
        raise ValueError(f"{flag} must be {example}")
    return value


def _sweep_arguments(args) -> dict:
    """The sweep's command-line arguments as :func:`lmeval_ctx.sweep.run.run_sweep` takes them."""
    metadata = _json_option(args.metadata, "--metadata", "a JSON object, e.g. '{\"lengths\": [4096]}'",
                            lambda value: isinstance(value, dict))
    samples = _json_option(
        args.samples, "--samples", 'a JSON object of document index lists, e.g. \'{"niah_single_1": [0, 1]}\'',
        lambda value: isinstance(value, dict) and all(
            isinstance(v, list) and all(isinstance(i, int) for i in v) for v in value.values()))
    if args.limit is not None and not 0 < args.limit < float("inf"):
        raise ValueError(f"--limit {args.limit:g}: give a count of documents >= 1 or a fraction between 0 and 1.")
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    return {"batch_size": args.batch_size, "device": args.device, "limit": limit, "log_samples": args.log_samples,
            "seed": args.seed, "metadata": metadata, "overwrite": args.overwrite, "samples": samples,
            "include_path": [folder for folder in (args.include_path or "").split(",") if folder],
            "gen_kwargs": args.gen_kwargs}


def _sweep(command: argparse.ArgumentParser, args) -> int:
    from lmeval_ctx.sweep.outputs import OutputPathError
    from lmeval_ctx.sweep.points import sweep_points
    from lmeval_ctx.sweep.run import run_sweep, summary_table

    try:
        points = sweep_points(args.methods, args.factor, log=_log)
        outcomes = run_sweep(parse_model_args(args.model_args), points, [t for t in args.tasks.split(",") if t],
                             args.output_path, **_sweep_arguments(args), log=_log)
    except OutputPathError as error:  # not a usage error: the place cannot hold files
        _stop(command, FAILED, error)
    except ValueError as error:  # a bad argument, or points run with other settings (ResumeConflict)
        _stop(command, USAGE_ERROR, error)
    print(summary_table(outcomes))
    return FAILED if any(outcome["status"] == "failed" for outcome in outcomes) else 0


# ---------------------------------------------------------------- report

def _add_report(commands) -> None:
    command = commands.add_parser("report", help="leaderboard, plots and a page from lm-eval output folders",
                                  description=REPORT_DESCRIPTION)
    command.set_defaults(run=_report, parser=command)
    command.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    command.add_argument("--output", "-o", help="folder for the report (default: RUN_DIR/report of the first one)")
    command.add_argument("--threshold", type=float, default=RULER_THRESHOLD,
                         help="RULER's effective-length threshold: the suite average in percent a length must "
                              f"reach (default {RULER_THRESHOLD}, Llama-2-7B at 4k)")
    command.add_argument("--relative-fraction", type=float, default=RELATIVE_FRACTION,
                         help="relative effective length (NoLiMa): the share of a row's own score at its shortest "
                              f"length a longer length must keep (default {RELATIVE_FRACTION})")


def _report(command: argparse.ArgumentParser, args) -> int:
    from lmeval_ctx.report.write import write_report

    output = args.output or str(Path(args.run_dirs[0]) / "report")
    try:
        written = write_report(args.run_dirs, output, log=_log, threshold=args.threshold,
                               fraction=args.relative_fraction)
    except ValueError as error:
        _stop(command, USAGE_ERROR, error)
    print(written["table"])
    print("Wrote " + ", ".join(str(path) for path in written["files"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
