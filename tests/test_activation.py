"""lm-eval finds ctx-hf and the plugin's tasks with no flags, and start-up stays cheap."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import lmeval_ctx
from lmeval_ctx.common.paths import tasks_path
from lmeval_ctx.plugin import MODELS, TASK_PACKAGES

HEAVY = ("torch", "transformers", "lm_eval")


def run_python(code: str, *flags: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *flags, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd="/", check=True)


def test_startup_imports_only_the_hook():
    result = run_python("pass", "-X", "importtime")
    imported = [line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line]
    assert "lmeval_ctx.plugin" in imported, "lmeval_ctx.pth did not run"
    heavy = [m for m in imported if m.split(".")[0] in HEAVY]
    assert heavy == [], f"start-up imported {heavy}"


def test_model_and_tasks_resolve_in_a_fresh_interpreter():
    code = (
        "import json, sys\n"
        "from lm_eval.api.registry import get_model\n"
        "from lm_eval.tasks import TaskManager\n"
        "cls = get_model('ctx-hf'); hf = get_model('hf')\n"
        "tm = TaskManager()\n"
        "print(json.dumps({'cls': cls.__module__ + ':' + cls.__name__, 'hf': hf.__name__,"
        " 'tasks': sorted(t for t in tm.all_tasks if t.startswith('passkey_'))}))\n"
    )
    out = json.loads(run_python(code).stdout.strip().splitlines()[-1])
    assert out["cls"] == "lmeval_ctx.model_wrappers.ctx_hf:CtxHFLM"
    assert out["hf"] == "HFLM"
    assert {"passkey_1k", "passkey_8k", "passkey_128k"} <= set(out["tasks"])


def test_user_include_path_is_kept_and_ours_added(tmp_path):
    # given by position, as lm-eval's signature allows (tests/test_plugin.py covers the other forms)
    code = (
        "from lm_eval.tasks import TaskManager\n"
        "import json\n"
        f"tm = TaskManager(None, {str(tmp_path)!r})\n"
        "print(json.dumps([str(p) for p in tm.include_path]))\n"
    )
    printed = run_python(code).stdout.strip().splitlines()[-1]
    assert json.loads(printed) == [str(tasks_path()), str(tmp_path)]


def test_autoload_can_be_switched_off():
    code = "from lm_eval.api.registry import get_model\ntry:\n get_model('ctx-hf'); print('found')\nexcept ValueError: print('absent')"
    assert run_python(code, env={"LMEVAL_CTX_NO_AUTOLOAD": "1"}).stdout.strip().endswith("absent")


def test_tasks_path_command():
    out = subprocess.run([sys.executable, "-m", "lmeval_ctx", "tasks-path"], capture_output=True, text=True,
                         check=True, cwd="/").stdout.strip()
    assert Path(out) == tasks_path() and (Path(out) / "passkey" / "passkey_1k.yaml").is_file()


def test_installed_distribution_declares_both_plugin_entry_points():
    # The installed metadata: the wheel's in CI, the editable install's in a checkout.
    from importlib.metadata import distribution

    from lmeval_ctx.model_wrappers.ctx_hf import CtxHFLM

    declared = {(ep.group, ep.name): ep for ep in distribution("lmeval-ctx").entry_points}
    models = {name: ep.value for (group, name), ep in declared.items() if group == "lm_eval.models"}
    assert models == MODELS
    assert declared[("lm_eval.models", "ctx-hf")].load() is CtxHFLM
    (tasks,) = [ep for (group, _), ep in declared.items() if group == "lm_eval.tasks"]
    assert {tasks.name: tasks.value} == TASK_PACKAGES
    # resolved as lm-eval's discovery does: the value names a package, its folder holds the YAMLs
    spec = importlib.util.find_spec(tasks.value)
    folder = Path(list(spec.submodule_search_locations)[0])
    assert folder == tasks_path()
    assert {"passkey_1k.yaml", "longppl_1k.yaml"} <= {p.name for p in folder.rglob("*.yaml")}


@pytest.mark.skipif(os.environ.get("LMEVAL_CTX_EXPECT_WHEEL") != "1", reason="only where the wheel is installed")
def test_installed_wheel_carries_wrappers_and_tasks_and_no_generic_names():
    package = Path(lmeval_ctx.__file__).parent
    assert "site-packages" in str(package)
    assert (package / "model_wrappers" / "ctx_hf.py").is_file()
    assert (package / "tasks" / "passkey" / "_passkey_template").is_file()
    site = package.parent
    assert not (site / "tasks").exists() and not (site / "model_wrappers").exists()
    assert (site / "lmeval_ctx.pth").is_file()
