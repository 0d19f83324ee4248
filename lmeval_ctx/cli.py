"""``lmeval-ctx`` / ``python -m lmeval_ctx``: helper commands."""

from __future__ import annotations

import argparse
import sys


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
    args = parser.parse_args(argv)
    if args.command == "tasks-path":
        from lmeval_ctx.paths import tasks_path

        print(tasks_path())
    return 0


if __name__ == "__main__":
    sys.exit(main())
