"""The plugin's one table (models, task package, shipped folders) agrees with every route that
registers the plugin, and the start-up hook adds the task folder to TaskManager however its
arguments are passed."""

import ast
import importlib
import importlib.util
import inspect
import sys
import types
from pathlib import Path

import pytest

import lmeval_ctx
from lmeval_ctx import plugin
from lmeval_ctx.common.paths import tasks_path
from lmeval_ctx.plugin import MODELS, SHIPPED_FOLDERS, TASK_PACKAGES, add_task_folder, register_models

ROOT = Path(__file__).resolve().parents[1]


def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


# -- the table and the routes that read it --------------------------------------------------
def test_pyproject_entry_points_are_the_table():
    entry_points = pyproject()["project"]["entry-points"]
    assert entry_points["lm_eval.models"] == MODELS
    assert entry_points["lm_eval.tasks"] == TASK_PACKAGES


def test_the_wheel_ships_the_table_s_folders_inside_the_package():
    force_include = pyproject()["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    assert force_include == {**{folder: f"lmeval_ctx/{folder}" for folder in SHIPPED_FOLDERS},
                             "lmeval_ctx.pth": "lmeval_ctx.pth"}
    # the models and the task package live in those folders
    homes = {target.split(":")[0].split(".")[1] for target in MODELS.values()}
    homes |= {package.split(".")[1] for package in TASK_PACKAGES.values()}
    assert homes <= set(SHIPPED_FOLDERS)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_model_target_is_the_class_lm_eval_upgrades_the_placeholder_to(name):
    """lm-eval replaces a lazy placeholder by the class only when the string is exactly
    ``module:name`` of the class the module registers (otherwise: 'already registered')."""
    module_name, class_name = MODELS[name].split(":")
    model_class = getattr(importlib.import_module(module_name), class_name)
    assert f"{model_class.__module__}:{model_class.__name__}" == MODELS[name]


def registered_names(path: Path) -> dict[str, str]:
    """``{name: class}`` of the ``@register_model(name)`` decorators in a file, read with ast."""
    found = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ClassDef):
            for decorator in node.decorator_list:
                if isinstance(decorator, ast.Call) and getattr(decorator.func, "id", None) == "register_model":
                    found.update({arg.value: node.name for arg in decorator.args})
    return found


def test_the_model_classes_register_themselves_under_the_table_s_names():
    declared = {}
    for path in sorted((ROOT / "model_wrappers").glob("*.py")):
        declared.update({name: f"lmeval_ctx.model_wrappers.{path.stem}:{cls}"
                         for name, cls in registered_names(path).items()})
    assert declared == MODELS


def test_the_hook_registers_the_table_s_models(monkeypatch):
    recorded = {}

    class RecordingRegistry(dict):
        def register(self, name, target):
            recorded[name] = target

    monkeypatch.setitem(sys.modules, "lm_eval.api.registry", types.SimpleNamespace(model_registry=RecordingRegistry()))
    monkeypatch.setattr(plugin, "MODELS", {**MODELS, "ctx-new": "lmeval_ctx.model_wrappers.ctx_new:CtxNew"})
    register_models()
    assert recorded == plugin.MODELS


@pytest.mark.parametrize("folder", SHIPPED_FOLDERS)
def test_a_checkout_s_shipped_folders_import_under_the_package(folder):
    spec = importlib.util.find_spec(f"lmeval_ctx.{folder}")
    installed = Path(lmeval_ctx.__file__).parent / folder
    expected = installed if installed.is_dir() else ROOT / folder
    assert Path(list(spec.submodule_search_locations)[0]) == expected


def test_the_task_package_is_the_task_folder():
    (package,) = TASK_PACKAGES.values()
    spec = importlib.util.find_spec(package)
    assert Path(list(spec.submodule_search_locations)[0]) == tasks_path()


# -- the task folder in TaskManager ---------------------------------------------------------


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
