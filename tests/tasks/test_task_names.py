"""No task, group or tag of ours shares a name with one lm-eval ships (issue #23).

lm-eval indexes its own task folder first and the include paths after it, and a later folder's
entry replaces an earlier one's of the same name with nothing but a log line
("Task 'passkey' from ... overrides existing task from lm_eval/tasks/libra/passkey.yaml"). A clash
would silently change what another benchmark measures: LIBRA's group ran our passkey task.
"""

import logging
from pathlib import Path

import lm_eval.tasks
import pytest
from lm_eval.tasks import TaskManager
from lm_eval.tasks._index import Kind, TaskIndex

from lmeval_ctx.common.paths import tasks_path  # importing the package installs the plugin's hook
from lmeval_ctx.taskdata.names import LONGPPL_TASK, OLD_PASSKEY_TASK, PASSKEY_TASK, task_family

LM_EVAL_TASKS = Path(lm_eval.tasks.__file__).parent
OUR_TAGS = {"passkey_suite", "longppl_suite"}


@pytest.fixture(scope="module")
def lm_evals_own():
    """lm-eval's own index: its task folder alone, read as TaskManager reads it before any include path."""
    return TaskIndex.build([LM_EVAL_TASKS])


@pytest.fixture(scope="module")
def ours():
    """Every task, group and tag our task folder registers, read by lm-eval's own indexer."""
    return TaskIndex.build([tasks_path()])


@pytest.fixture(scope="module")
def with_the_plugin():
    """A TaskManager as ``lm_eval`` builds one with the plugin installed, and the warnings logged meanwhile."""
    logger = logging.getLogger("lm_eval.tasks._index")
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        manager = TaskManager()
    finally:
        logger.removeHandler(handler)
    return manager, [record.getMessage() for record in records]


def test_the_indexes_compared_are_the_real_ones(lm_evals_own, ours):
    """A comparison of two empty or wrong indexes would pass whatever the names."""
    assert lm_evals_own["passkey"].yaml_path == LM_EVAL_TASKS / "libra" / "passkey.yaml"
    assert len(lm_evals_own) > 1000 and "niah_single_1" in lm_evals_own
    fixed = {f"{family}_{k}k" for family in ("passkey", "longppl") for k in (1, 2, 4, 8, 16, 32, 64, 128)}
    assert set(ours) == {PASSKEY_TASK, LONGPPL_TASK, *fixed, *OUR_TAGS}


def test_no_name_of_ours_is_one_lm_eval_ships(lm_evals_own, ours):
    clashes = {name: str(lm_evals_own[name].yaml_path or f"tag of {sorted(lm_evals_own[name].tags)[:3]}")
               for name in sorted(set(ours) & set(lm_evals_own))}
    assert clashes == {}, f"our tasks/ registers names lm-eval ships (rename ours): {clashes}"


def test_every_task_of_ours_is_one_the_report_recognises(ours):
    """names.py and the YAMLs agree: each task is "passkey" or "longppl" by exact name; the tags are tags."""
    for name, entry in ours.items():
        if entry.kind is Kind.TAG:
            assert name in OUR_TAGS
        else:
            assert task_family(name) == name.split("_")[0], name
    assert OLD_PASSKEY_TASK not in ours  # LIBRA's name, kept only to read older output folders


def test_with_the_plugin_every_name_lm_eval_ships_resolves_to_lm_evals_own(lm_evals_own, with_the_plugin):
    manager, warnings = with_the_plugin
    assert manager.task_index[PASSKEY_TASK].yaml_path == tasks_path() / "passkey" / "passkey_custom.yaml"
    assert [message for message in warnings if "overrides existing task" in message] == []
    changed = sorted(name for name, entry in lm_evals_own.items()
                     if (manager.task_index[name].kind, manager.task_index[name].yaml_path, manager.task_index[name].tags)
                     != (entry.kind, entry.yaml_path, entry.tags))
    assert changed == []


def test_libra_passkey_is_libras(with_the_plugin):
    """LIBRA (Churin et al. 2024, arXiv:2408.02439): its group and tag run its own passkey task."""
    manager, _ = with_the_plugin
    index = manager.task_index
    assert index["passkey"].yaml_path == LM_EVAL_TASKS / "libra" / "passkey.yaml"
    assert index["passkey"].cfg["dataset_path"] == "ai-forever/LIBRA"
    assert "passkey" in index["libra_simple_information_retrieval"].cfg["task"]
    assert "passkey" in index["libra"].tags
