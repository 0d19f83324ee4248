"""The start-up hook adds the plugin's task folder to TaskManager however its arguments are passed."""

import inspect
import types

import pytest

from lmeval_ctx.plugin import add_task_folder
from lmeval_ctx.common.paths import tasks_path


class RecordingTaskManager:
    """Takes lm-eval's TaskManager arguments (checked below) and records them."""

    def __init__(self, verbosity=None, include_path=None, include_defaults=True, metadata=None) -> None:
        self.received = dict(verbosity=verbosity, include_path=include_path, include_defaults=include_defaults,
                             metadata=metadata)


@pytest.fixture
def manager():
    module = types.SimpleNamespace(TaskManager=type("TaskManager", (RecordingTaskManager,), {}))
    add_task_folder(module)
    return module.TaskManager


def test_the_stand_in_has_lm_evals_signature():
    from lm_eval.tasks.manager import TaskManager

    real = inspect.signature(inspect.unwrap(TaskManager.__init__))
    ours = inspect.signature(RecordingTaskManager.__init__)
    assert [(p.name, p.kind, p.default) for p in ours.parameters.values()] == [
        (p.name, p.kind, p.default) for p in real.parameters.values()]


@pytest.mark.parametrize("call", [
    lambda tm, path: tm(None, path),                          # positional, as lm-eval's signature allows
    lambda tm, path: tm(include_path=path),
    lambda tm, path: tm("INFO", [path], True, {"x": 1}),
    lambda tm, path: tm(verbosity=None, include_path=(path,), metadata={"x": 1}),
], ids=["positional", "keyword", "all-positional-list", "keyword-tuple"])
def test_include_path_given_any_way_is_kept_after_ours(manager, tmp_path, call):
    received = call(manager, str(tmp_path)).received
    assert received["include_path"] == [str(tasks_path()), str(tmp_path)]


def test_other_arguments_pass_through_unchanged(manager, tmp_path):
    received = manager("DEBUG", str(tmp_path), False, {"lengths": [4]}).received
    assert received == {"verbosity": "DEBUG", "include_path": [str(tasks_path()), str(tmp_path)],
                        "include_defaults": False, "metadata": {"lengths": [4]}}


def test_no_include_path_gives_ours_alone(manager):
    assert manager().received["include_path"] == [str(tasks_path())]


def test_our_folder_is_not_added_twice(manager):
    assert manager(None, str(tasks_path())).received["include_path"] == [str(tasks_path())]


def test_include_path_given_twice_is_lm_evals_own_error(manager, tmp_path):
    with pytest.raises(TypeError, match="multiple values for argument 'include_path'"):
        manager(None, str(tmp_path), include_path=str(tmp_path))


def test_hook_is_installed_once(manager):
    wrapped = manager.__init__
    add_task_folder(types.SimpleNamespace(TaskManager=manager))
    assert manager.__init__ is wrapped
