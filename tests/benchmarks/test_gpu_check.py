"""The prepared GPU check (scripts/gpu_check.sh, benchmarks/gpu_check.py) in its CPU dry run, so that it cannot rot.

The dry run is the GPU run on tiny lengths on the CPU: every method of the catalog on each model
family, bfloat16 against float32, the CPU cross-check, the results file. It runs through the shell
script in a fresh process without lm-eval importable, as on the GPU machine (torch and transformers only).
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmeval_ctx.methods.catalog import METHODS

REPO = Path(__file__).resolve().parents[2]


def _load_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """The script's dry run, lm-eval hidden (a ``lm_eval`` that fails on import), one thread."""
    folder = tmp_path_factory.mktemp("gpu_check")
    (folder / "hide").mkdir()
    (folder / "hide" / "lm_eval.py").write_text("raise ImportError('lm-eval is not on the GPU machine')\n")
    env = {**os.environ, "OUT": str(folder), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(folder / "hide"),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--dry-run"], env=env, cwd=folder,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((folder / "gpu_check_result.json").read_text()), done.stdout


def test_the_dry_run_checks_every_method_on_every_family(dry_run):
    result, stdout = dry_run
    assert result["passed"] and result["complete"] and result["dry_run"] and "PASSED" in stdout
    assert result["lengths"] == [256, 512] and result["failures"] == []
    families = {"llama": "rope", "bloom": "alibi", "mpt": "alibi", "falcon": "alibi"}
    assert [m["model"] for m in result["models"]] == list(families)
    for model in result["models"]:
        expected = [name for name, method in METHODS.items() if families[model["model"]] in method.families]
        for length in (256, 512):
            rows = [row for row in model["rows"] if row["length"] == length]
            assert [row["method"] for row in rows] == expected, model["model"]
            assert not any("error" in row for row in rows)
            for row in rows:
                assert 0 < row["mean_abs"] < result["tolerances"]["mean_abs"]  # bfloat16 differs, within tolerance
                assert row["time_vs_none"] > 0 and row["bfloat16_seconds"] > 0
                if METHODS[row["method"]].kind == "attention" or model["family"] == "alibi":
                    assert row["attention_engine"]["engine"] == "blocks"  # the engine the record names
        assert [row["method"] for row in model["cpu_check"]] == expected
        assert all(row["relative"] <= result["tolerances"]["cpu_relative"] for row in model["cpu_check"])
        assert model["not_run"] == [] and model["no_host_sync_in_slices"].startswith("not checked")


def test_a_case_outside_its_tolerance_fails():
    check = _load_check()
    row = {"mean_abs": 0.01, "growth": 1.2, "relative": 1e-6}
    assert check.verdict(row, "device") == [] and check.verdict(row, "cpu") == []
    assert check.verdict({**row, "growth": 5.6}, "device") == ["growth 5.60 > 1.5"]  # BLOOM before issue 21
    assert check.verdict({**row, "mean_abs": 0.3}, "device") == ["mean_abs 0.3000 > 0.05"]
    assert check.verdict({**row, "relative": 1e-3}, "cpu") == ["float32 device vs CPU 1.00e-03 > 0.0001"]


def test_compare_measures_growth_along_the_positions():
    check = _load_check()
    full = torch.zeros(2048, dtype=torch.float64)
    growing = full + torch.linspace(0.01, 0.1, 2048, dtype=torch.float64)
    figures = check.compare(growing, full)
    first, last = float(growing[:512].mean()), float(growing[-512:].mean())
    assert figures["first_mean_abs"] == pytest.approx(first) and figures["last_mean_abs"] == pytest.approx(last)
    assert figures["growth"] == pytest.approx(last / first) and figures["growth"] > 1.5
    assert figures["mean_abs"] == pytest.approx(float(growing.mean()))


def test_a_machine_without_cuda_is_refused_outside_the_dry_run(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine runs the check itself")
    with pytest.raises(SystemExit, match="No CUDA device"):
        _load_check().main(["--output", str(tmp_path / "out.json")])
