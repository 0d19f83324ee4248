"""Everything the repository's commands need comes with it: no path outside a fresh clone.

A development machine has folders a user's clone lacks (``../shared/`` beside the
repository, the developer's home or work folder); a script, benchmark, doc command or
result file naming one works there and nowhere else. Every file git would commit is
searched (tracked and new, not ignored), except ``tests/`` and ``.ci/``, which run on
the development machines.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SKIPPED_FOLDERS = ("tests/", ".ci/")
# ../shared (the developers' data folder beside the repository) and absolute paths into a
# home or work folder; a path is only matched where it starts (not inside a URL or a word)
OUTSIDE = re.compile(r"(?<![\w.])\.\./shared\b|(?<![\w.~/])/(?:work|root|home|Users|mnt|scratch)/")


def repository_files(root: Path) -> list[str]:
    """The files git would commit from ``root``: tracked, and new ones not ignored."""
    listed = subprocess.run(["git", "-C", str(root), "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                            capture_output=True, check=True).stdout.decode()
    return sorted({name for name in listed.split("\0") if name})


def paths_outside(root: Path) -> list[str]:
    """``file:line: text`` for each line of a committed text file that names a path outside the repository."""
    found = []
    for name in repository_files(root):
        path = root / name
        if name.startswith(SKIPPED_FOLDERS) or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data:  # images, compressed data
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            if OUTSIDE.search(line):
                found.append(f"{name}:{number}: {line.strip()[:160]}")
    return found


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(),
                    reason="needs git and a git checkout to list the repository's files")
def test_no_command_or_file_names_a_path_outside_the_repository():
    found = paths_outside(REPO)
    assert not found, ("These lines name a path a fresh clone lacks; ship what they need in the repository "
                       "(e.g. benchmarks/data/) and name it relative to the repository:\n" + "\n".join(found))


@pytest.mark.parametrize("line, outside", [
    ('python x.py --data ../shared/data/austen-novels.jsonl', True),
    ('--data "${DATA:-../shared/data/austen-novels.jsonl}"', True),
    ("DATA=../../shared/novels.jsonl", True),
    ('CORPUS = "/work/shared/data/austen-novels.jsonl"', True),
    ('"report_dir": "/home/me/runs/report",', True),
    ("cd /root/lmeval-ctx && make", True),
    ("python x.py --data benchmarks/data/austen-novels.jsonl.gz", False),
    ("see https://example.org/home/page and lmeval_ctx/work/", False),
])
def test_the_pattern_finds_paths_outside_and_only_those(line, outside):
    assert bool(OUTSIDE.search(line)) is outside
