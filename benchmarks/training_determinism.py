"""Which parts of the ALiBi training recipe change the trained weights from one machine to another.

``benchmarks/alibi_extrapolation.py`` is deterministic on one machine (fixed seeds, fixed data
order, ``torch.use_deterministic_algorithms``, fixed threads), yet a second machine of the same
kind trained a different model. Short trainings of the same recipe run here under settings that
stand in for another machine, and their weights are compared bit for bit:

- ``ATEN_CPU_CAPABILITY``: the vector unit torch's own kernels use (``avx512`` on this CPU;
  ``avx2`` on an older or smaller one; ``default``: no explicit vectors);
- ``MKL_ENABLE_INSTRUCTIONS``: the same for MKL's matrix products (``AVX2`` on a CPU without AVX-512);
- ``MKL_CBWR=COMPATIBLE``: MKL's conditional numerical reproducibility, the same results on any x86 CPU;
- the number of threads (a sum split over more threads is added in another order).

Each setting trains ``--steps`` steps from seed 0 in its own process and records a SHA-256 of the
saved weights and of the tokenizer, and the last loss; settings with equal hashes trained the
same model. Result: ``benchmarks/training_determinism_result.json``.

    python benchmarks/training_determinism.py --steps 60
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmark_support import REPO

RECIPE = REPO / "benchmarks" / "alibi_extrapolation.py"
REPRODUCIBLE = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"}
# name -> (environment, threads): each stands in for one difference between two machines
SETTINGS = {
    "this machine": ({}, 2),
    "this machine, again": ({}, 2),
    "1 thread": ({}, 1),
    "torch kernels AVX2": ({"ATEN_CPU_CAPABILITY": "avx2"}, 2),
    "MKL AVX2": ({"MKL_ENABLE_INSTRUCTIONS": "AVX2"}, 2),
    "reproducible mode": (REPRODUCIBLE, 2),
    "reproducible mode, AVX2 CPU": ({**REPRODUCIBLE, "MKL_ENABLE_INSTRUCTIONS": "AVX2"}, 2),
    "reproducible mode, 1 thread": (REPRODUCIBLE, 1),
}


def digest(folder: Path, pattern: str) -> str:
    sha = hashlib.sha256()
    for path in sorted(folder.glob(pattern)):
        sha.update(path.read_bytes())
    return sha.hexdigest()[:16]


def train_once(name: str, environment: dict, threads: int, steps: int, work: Path) -> dict:
    checkpoint = work / name.replace(" ", "_").replace(",", "")
    command = [sys.executable, str(RECIPE), "train", "--steps", str(steps), "--threads", str(threads),
               "--check-every", "0", "--checkpoint", str(checkpoint), "--result", str(checkpoint / "result.json")]
    started = time.perf_counter()
    completed = subprocess.run(command, cwd=REPO, env={**os.environ, **environment}, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"{name}: training failed:\n{completed.stderr[-2000:]}")
    record = json.loads((checkpoint / "training.json").read_text())
    return {"environment": environment, "threads": threads, "seconds": round(time.perf_counter() - started, 1),
            "final_loss": repr(record["final_loss"]), "weights_sha256": digest(checkpoint, "*.safetensors"),
            "tokenizer_sha256": digest(checkpoint, "tokenizer.json")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="training steps per setting")
    parser.add_argument("--result", default=str(REPO / "benchmarks" / "training_determinism_result.json"))
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be >= 1; got {args.steps}")
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        runs = {name: train_once(name, env, threads, args.steps, Path(tmp)) for name, (env, threads) in SETTINGS.items()}
    reference = runs["this machine"]["weights_sha256"]
    for run in runs.values():
        run["same_weights_as_this_machine"] = run["weights_sha256"] == reference
    result = {"steps": args.steps, "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "runs": runs}
    Path(args.result).write_text(json.dumps(result, indent=1) + "\n")
    for name, run in runs.items():
        print(f"{name:32s} loss {run['final_loss']:22s} weights {run['weights_sha256']} "
              f"tokenizer {run['tokenizer_sha256']} {run['seconds']:6.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
