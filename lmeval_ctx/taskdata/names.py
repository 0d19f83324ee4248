"""The names of the plugin's tasks, read by the task helpers' messages and by the report.

None of them may be a name lm-eval itself ships (``tests/tasks/test_task_names.py`` checks
every task, group and tag in ``tasks/`` against lm-eval's index): lm-eval lets a later task
folder replace an earlier one's task of the same name, so a clash would silently change what
another benchmark measures. That is why the configurable passkey task is ``passkey_custom``:
``passkey`` is LIBRA's (Churin et al. 2024, arXiv:2408.02439), in lm-eval's ``libra`` group.
"""

from __future__ import annotations

import re

PASSKEY_TASK = "passkey_custom"  # passkey retrieval at the lengths given in --metadata
LONGPPL_TASK = "longppl"  # long-range perplexity at the lengths given in --metadata
# The configurable passkey task's name in lmeval-ctx 0.1.0, still read from older output folders.
# LIBRA's task of that name reports no per-length metric, so the report never takes it for ours.
OLD_PASSKEY_TASK = "passkey"
_FIXED_LENGTH_TASK = re.compile(r"(passkey|longppl)_\d+k")


def task_family(task: str) -> str | None:
    """``"passkey"`` or ``"longppl"`` for a task of ours (``passkey_4k``, ``passkey_custom``, ``longppl``), else None."""
    if task in (PASSKEY_TASK, OLD_PASSKEY_TASK):
        return "passkey"
    if task == LONGPPL_TASK:
        return "longppl"
    match = _FIXED_LENGTH_TASK.fullmatch(task)
    return match.group(1) if match else None
