"""Does ctx-hf cost anything over lm-eval's plain hf model?

Times the same loglikelihood requests through ``hf``, ``ctx-hf`` with
``scaling=none`` and ``ctx-hf`` with ``scaling=yarn`` on one model, alternating
the three in one process (median of several rounds), and measures each
variant's peak resident memory in a fresh process.

Target: wall-time ratio <= 1.02 and no extra copy of the weights.

    python benchmarks/overhead.py [--rounds 11] [--tokens 1000] [--requests 12]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmark_support import VOCAB_SIZE, char_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")

VARIANTS = {
    "hf": ("hf", {}),
    "ctx-hf none": ("ctx-hf", {"scaling": "none"}),
    "ctx-hf yarn": ("ctx-hf", {"scaling": "yarn", "factor": 2}),
}


def build_model(folder: Path, max_positions: int = 1024) -> None:
    import torch
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=VOCAB_SIZE, hidden_size=512, intermediate_size=1536, num_hidden_layers=6,
        num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=max_positions,
        bos_token_id=1, eos_token_id=2, pad_token_id=3)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)


def make_lm(name: str, folder: Path):
    from lm_eval.api.registry import get_model

    model, extra = VARIANTS[name]
    max_length = {"max_length": 1024} if model == "hf" else {}
    return get_model(model)(pretrained=str(folder), device="cpu", dtype="float32", batch_size=1, **max_length,
                            **extra)


def requests(tokens: int, count: int):
    import random

    from lm_eval.api.instance import Instance

    rng = random.Random(0)
    text = lambda n: "".join(rng.choice("abcdefghij klmnopqrstuvwxyz.") for _ in range(n))  # noqa: E731
    return [Instance("loglikelihood", {}, (text(tokens - 20), text(20)), i) for i in range(count)]


def timing(folder: Path, rounds: int, tokens: int, count: int) -> dict:
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    lms = {name: make_lm(name, folder) for name in VARIANTS}
    reqs = requests(tokens, count)
    for lm in lms.values():  # warm-up
        lm.loglikelihood(reqs[:2], disable_tqdm=True)
    times = {name: [] for name in VARIANTS}
    for r in range(rounds):
        order = list(VARIANTS) if r % 2 == 0 else list(reversed(VARIANTS))
        for name in order:
            start = time.perf_counter()
            lms[name].loglikelihood(reqs, disable_tqdm=True)
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    # paired per round: both variants ran back to back, so machine drift cancels
    paired = {n: statistics.median(t / h for t, h in zip(times[n], times["hf"])) for n in VARIANTS}
    return {"median_s": medians, "ratio_of_medians": {n: medians[n] / medians["hf"] for n in VARIANTS},
            "median_paired_ratio": paired}


def memory(folder: Path, name: str, tokens: int, count: int) -> dict:
    """In a fresh process (libraries imported first): memory the model load and the scoring add."""
    code = (
        "import sys, json, resource, psutil; sys.argv = ['x']\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "import overhead, lm_eval.models.huggingface, lmeval_ctx.model_wrappers.ctx_hf\n"
        "rss = lambda: psutil.Process().memory_info().rss / 2**20\n"
        "before = rss()\n"
        f"lm = overhead.make_lm({name!r}, overhead.Path({str(folder)!r}))\n"
        "loaded = rss()\n"
        f"lm.loglikelihood(overhead.requests({tokens}, {count}), disable_tqdm=True)\n"
        "params = sum(p.numel() * p.element_size() for p in lm.model.parameters()) / 2**20\n"
        "print(json.dumps({'weights_mib': params, 'rss_added_by_load_mib': loaded - before,"
        " 'rss_after_scoring_mib': rss() - before,"
        " 'peak_rss_process_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=12)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        build_model(folder)
        report = timing(folder, args.rounds, args.tokens, args.requests)
        report["memory"] = {name: memory(folder, name, args.tokens, args.requests) for name in VARIANTS}
    report["setup"] = {"rounds": args.rounds, "tokens_per_request": args.tokens, "requests": args.requests,
                       "model": "Llama 6x512, float32, CPU"}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
