"""Where the plugin's files are, installed or in a source checkout."""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent.parent  # lmeval_ctx/

# The embedded example corpus: excerpts of six public-domain novels (see its README).
SHIPPED_CORPUS = _PACKAGE_DIR / "data" / "austen_excerpts.jsonl"


def tasks_path() -> Path:
    """The folder of task YAMLs to give lm-eval (``--include_path``)."""
    for candidate in (_PACKAGE_DIR / "tasks", _PACKAGE_DIR.parent / "tasks"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"lmeval-ctx's task folder is missing (looked in {_PACKAGE_DIR / 'tasks'} and "
        f"{_PACKAGE_DIR.parent / 'tasks'}); reinstall the package."
    )
