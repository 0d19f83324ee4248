"""lm-eval finds ctx-hf and the plugin's tasks with no flags, and start-up stays cheap."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import lmeval_ctx
from lmeval_ctx.paths import tasks_path

HEAVY = ("torch", "transformers", "lm_eval")


def run_python(code: str, *flags: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *flags, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd="/", check=True)


def test_startup_imports_only_the_hook():
    result = run_python("pass", "-X", "importtime")
    imported = [line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line]
    assert "lmeval_ctx._autoload" in imported, "lmeval_ctx.pth did not run"
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
    code = (
        "from lm_eval.tasks import TaskManager\n"
        f"tm = TaskManager(include_path={str(tmp_path)!r})\n"
        "print(tm.include_path)\n"
    )
    printed = run_python(code).stdout.strip().splitlines()[-1]
    assert str(tmp_path) in printed and str(tasks_path()) in printed


def test_autoload_can_be_switched_off():
    code = "from lm_eval.api.registry import get_model\ntry:\n get_model('ctx-hf'); print('found')\nexcept ValueError: print('absent')"
    assert run_python(code, env={"LMEVAL_CTX_NO_AUTOLOAD": "1"}).stdout.strip().endswith("absent")


def test_tasks_path_command():
    out = subprocess.run([sys.executable, "-m", "lmeval_ctx", "tasks-path"], capture_output=True, text=True,
                         check=True, cwd="/").stdout.strip()
    assert Path(out) == tasks_path() and (Path(out) / "passkey" / "passkey_1k.yaml").is_file()


def test_entry_point_is_declared():
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="lm_eval.models") if e.name == "ctx-hf"]
    assert ep.value == "lmeval_ctx.model_wrappers.ctx_hf:CtxHFLM"


@pytest.mark.skipif(os.environ.get("LMEVAL_CTX_EXPECT_WHEEL") != "1", reason="only where the wheel is installed")
def test_installed_wheel_carries_wrappers_and_tasks_and_no_generic_names():
    package = Path(lmeval_ctx.__file__).parent
    assert "site-packages" in str(package)
    assert (package / "model_wrappers" / "ctx_hf.py").is_file()
    assert (package / "tasks" / "passkey" / "_passkey_template").is_file()
    site = package.parent
    assert not (site / "tasks").exists() and not (site / "model_wrappers").exists()
    assert (site / "lmeval_ctx.pth").is_file()
