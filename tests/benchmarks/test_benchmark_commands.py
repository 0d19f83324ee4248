"""The benchmarks start from a clone: they import the package (not tests/) and find their data in the repository."""

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCHMARKS = sorted((REPO / "benchmarks").glob("*.py"))
COMMANDS = [path for path in BENCHMARKS if path.name != "benchmark_support.py"]


def imports_and_path_changes(path: Path) -> tuple[set[str], list[str]]:
    """(the top-level names of the modules ``path`` imports, its calls that change ``sys.path``), anywhere in it."""
    names, path_changes = set(), []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and ast.unparse(node.func).startswith("sys.path."):
            path_changes.append(ast.unparse(node))
    return names, path_changes


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda path: path.name)
def test_a_benchmark_imports_nothing_from_tests(path):
    # before: memory.py, overhead.py and longppl_shared.py put tests/ on sys.path for tiny_models
    test_modules = {module.stem for module in (REPO / "tests").rglob("*.py")}
    imported, path_changes = imports_and_path_changes(path)
    assert not imported & test_modules
    assert not [change for change in path_changes if "tests" in change]


@pytest.mark.parametrize("path", COMMANDS, ids=lambda path: path.name)
def test_each_benchmark_shows_its_options_from_any_folder(path, tmp_path):
    done = subprocess.run([sys.executable, str(path), "--help"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage:")


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("python3") is None, reason="needs bash and python3")
def test_the_alibi_script_shows_its_options_without_setting_anything_up(tmp_path):
    venv = tmp_path / "venv"
    done = subprocess.run(["bash", str(REPO / "scripts" / "alibi_extrapolation.sh"), "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "VENV": str(venv)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--data DATA" in done.stdout and not venv.exists()


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda path: path.name)
def test_what_a_benchmark_imports_from_the_package_exists(path):
    # a benchmark imports most of the package inside functions, which --help never reaches:
    # a module moved or a name renamed would break it only when it runs for minutes
    import importlib
    import importlib.util

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "lmeval_ctx":
            module = importlib.import_module(node.module)
            # a name is an attribute or a submodule (``from package import module``), imported or not yet
            missing = [alias.name for alias in node.names if not hasattr(module, alias.name)
                       and not (hasattr(module, "__path__")
                                and importlib.util.find_spec(f"{node.module}.{alias.name}"))]
            assert not missing, f"{path.name}: {node.module} has no {missing}"
