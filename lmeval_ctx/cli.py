"""``lmeval-ctx`` / ``python -m lmeval_ctx``: helper commands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lmeval-ctx",
        description="Context-extension methods and long-context tasks for lm-evaluation-harness.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "tasks-path",
        help="print the plugin's task folder (for lm_eval --include_path)",
        description="Print the folder of lmeval-ctx's task YAMLs, for lm_eval --include_path.",
    )
    sweep = commands.add_parser(
        "sweep",
        help="run several context-extension methods over lm-eval tasks, loading the model once",
        description="Load the model once with ctx-hf, apply each point (a method with its factor and parameters) "
                    "in turn and run the tasks with lm-eval; results go to OUTPUT_PATH/<point>/ (e.g. yarn_x4, "
                    "self_extend__group_size-4__neighbor_window-1024) in lm-eval's format, with a manifest of "
                    "what produced them. Re-running the same command skips the points whose manifest matches, "
                    "re-runs interrupted ones, and stops (before loading) on points run with other settings "
                    "unless --overwrite. Exit status: 0 all saved, 1 a point failed or the output path "
                    "cannot hold files, 2 a usage error or such a conflict. See docs/sweep.md.",
    )
    sweep.add_argument("--model_args", required=True, help="ctx-hf/HFLM arguments, e.g. pretrained=...,dtype=bfloat16")
    sweep.add_argument("--methods", required=True,
                       help="comma-separated points: a method (none, pi, ntk, dynamic_ntk, yarn, llama3, ntk_by_parts, "
                            "rerope, leaky_rerope, self_extend, lm_infinite, ...), optionally with its own parameters "
                            "after colons, e.g. none,yarn,self_extend:group_size=4:neighbor_window=1024,"
                            "rerope:window=4096,yarn:factor=8:beta_fast=64")
    sweep.add_argument("--factor", help="scale factor(s) for the rescaling methods, comma-separated (e.g. 2,4); "
                                        "not for none, the attention-level methods, or points giving factor=")
    sweep.add_argument("--tasks", required=True, help="comma-separated lm-eval tasks, e.g. passkey_4k,longppl_8k")
    sweep.add_argument("--output_path", required=True, help="folder for the points' folders (created)")
    sweep.add_argument("--batch_size", default="1", help="as lm_eval --batch_size (a number or auto)")
    sweep.add_argument("--device", default=None,
                       help="as lm_eval --device; default: lm_eval's (cuda:0, or the CPU when there is no GPU)")
    sweep.add_argument("--limit", type=float, default=None, help="as lm_eval --limit")
    sweep.add_argument("--log_samples", action="store_true", help="as lm_eval --log_samples")
    sweep.add_argument("--seed", default=None, help="one number, or python,numpy,torch,fewshot seeds")
    sweep.add_argument("--metadata", default=None, help="JSON passed to the tasks, as lm_eval --metadata")
    sweep.add_argument("--include_path", default=None,
                       help="as lm_eval --include_path: a folder of your own task YAMLs (comma-separated for several)")
    sweep.add_argument("--samples", default=None,
                       help='as lm_eval --samples: JSON {"task": [document indices]} (not with --limit)')
    sweep.add_argument("--gen_kwargs", default=None, help="as lm_eval --gen_kwargs, e.g. max_gen_toks=16")
    sweep.add_argument("--overwrite", action="store_true",
                       help="re-run points whose folders were run with other settings (their old output is "
                            "moved to OUTPUT_PATH.replaced/) instead of stopping")
    report = commands.add_parser(
        "report",
        help="leaderboard, plots and a page from lm-eval output folders",
        description="Read lm-eval output folders (lmeval-ctx sweep or lm_eval --output_path; with --log_samples "
                    "for intervals and heatmaps): passkey, longppl, RULER, BABILong and any other task. Write "
                    "leaderboard.md, leaderboard.csv, PNG plots and index.html. See docs/report.md.",
    )
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    report.add_argument("--output", "-o", help="folder for the report (default: RUN_DIR/report of the first one)")
    report.add_argument("--threshold", type=float, default=None,
                        help="RULER's effective-length threshold: the suite average in percent a length must "
                             "reach (default 85.6, Llama-2-7B at 4k)")
    args = parser.parse_args(argv)
    if args.command == "tasks-path":
        from lmeval_ctx.common.paths import tasks_path

        print(tasks_path())
    elif args.command == "sweep":
        return _sweep(parser, args)
    elif args.command == "report":
        from lmeval_ctx.report.write import write_report

        output = args.output or str(Path(args.run_dirs[0]) / "report")
        try:
            from lmeval_ctx.report.write import RULER_THRESHOLD

            threshold = RULER_THRESHOLD if args.threshold is None else args.threshold
            written = write_report(args.run_dirs, output, log=lambda message: print(message, file=sys.stderr),
                                   threshold=threshold)
        except ValueError as error:
            parser.exit(2, f"lmeval-ctx report: error: {error}\n")
        print(written["table"])
        print("Wrote " + ", ".join(str(path) for path in written["files"]))
    return 0


def _sweep(parser: argparse.ArgumentParser, args) -> int:
    import json

    from lmeval_ctx.sweep.run import OutputPathError, run_sweep, summary_table, sweep_points

    def fail(message: str):
        parser.exit(2, f"lmeval-ctx sweep: error: {message}\n")

    try:
        metadata = json.loads(args.metadata) if args.metadata else None
    except json.JSONDecodeError as error:
        fail(f"--metadata is not valid JSON: {error}")
    if metadata is not None and not isinstance(metadata, dict):
        fail("--metadata must be a JSON object, e.g. '{\"lengths\": [4096]}'")
    try:
        samples = json.loads(args.samples) if args.samples else None
    except json.JSONDecodeError as error:
        fail(f"--samples is not valid JSON: {error}")
    if samples is not None and not (isinstance(samples, dict) and all(
            isinstance(v, list) and all(isinstance(i, int) for i in v) for v in samples.values())):
        fail('--samples must be a JSON object of document index lists, e.g. \'{"niah_single_1": [0, 1]}\'')
    include_path = [folder for folder in (args.include_path or "").split(",") if folder]
    from lm_eval.utils import simple_parse_args_string

    model_args = simple_parse_args_string(args.model_args)
    batch_size = int(args.batch_size) if str(args.batch_size).isdigit() else args.batch_size
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        points = sweep_points(args.methods, args.factor, log=log)
        outcomes = run_sweep(model_args, points, [t for t in args.tasks.split(",") if t], args.output_path,
                             batch_size=batch_size, device=args.device, limit=limit, log_samples=args.log_samples,
                             seed=args.seed, metadata=metadata, overwrite=args.overwrite,
                             include_path=include_path, samples=samples, gen_kwargs=args.gen_kwargs, log=log)
    except OutputPathError as error:  # not a usage error: the place cannot hold files
        parser.exit(1, f"lmeval-ctx sweep: error: {error}\n")
    except ValueError as error:
        fail(str(error))
    print(summary_table(outcomes))
    return 1 if any(outcome["status"] == "failed" for outcome in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
