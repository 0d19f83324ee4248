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
    report = commands.add_parser(
        "report",
        help="leaderboard table and plots from lm-eval output folders",
        description="Read lm-eval output folders (lmeval-ctx sweep or lm_eval --output_path, with --log_samples "
                    "for the passkey heatmaps) and write leaderboard.md, leaderboard.csv and PNG plots.",
    )
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    report.add_argument("--output", "-o", help="folder for the report (default: RUN_DIR/report of the first one)")
    args = parser.parse_args(argv)
    if args.command == "tasks-path":
        from lmeval_ctx.paths import tasks_path

        print(tasks_path())
    elif args.command == "report":
        from lmeval_ctx.report import write_report

        output = args.output or str(Path(args.run_dirs[0]) / "report")
        try:
            written = write_report(args.run_dirs, output, log=lambda message: print(message, file=sys.stderr))
        except ValueError as error:
            parser.exit(2, f"lmeval-ctx report: error: {error}\n")
        print(written["table"])
        print("Wrote " + ", ".join(str(path) for path in written["files"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
