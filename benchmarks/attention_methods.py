"""Peak memory and wall time of one forward pass with each attention-level method.

A Llama-like model (hidden 256, 4 heads, 2 layers, trained length 2048, random float32
weights, batch 1, CPU) is built in a fresh process per measurement; the method is applied by
``lmeval_ctx.lifecycle.extend`` exactly as ``ctx-hf`` applies it. Memory: the growth of peak
resident memory during one forward pass over the resident memory just before it. Wall time:
the median of ``--repeats`` passes after one warm-up, as a ratio to ``none`` (transformers'
SDPA) at the middle length, all measured in one run of this script.

Targets (issue 12): memory growth at most 2.2x per doubling of the length for every method;
wall time at most 2.5x ``none``'s.

    python benchmarks/attention_methods.py --lengths 2048,4096,8192 --repeats 1

Settings valid up to 8k on the 2k-trained model: rerope window 512; leaky_rerope window 512,
leak 6; self_extend group 8, neighbour window 512; lm_infinite with the paper's defaults (at
2048, inside its local window, it is plain attention); logn with no method.
Results: benchmarks/attention_methods_result.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TRAINED = 2048
REQUESTS = {
    "none": {},
    "rerope": {"scaling": "rerope", "window": 512},
    "leaky_rerope": {"scaling": "leaky_rerope", "window": 512, "leak": 6},
    "self_extend": {"scaling": "self_extend", "group_size": 8, "neighbor_window": 512},
    "lm_infinite": {"scaling": "lm_infinite"},
    "logn": {"logn": True},
}


def resident_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(method: str, length: int, repeats: int) -> dict:
    """In this process: build, apply ``method``, one forward pass (memory), then ``repeats`` timed ones."""
    import torch
    import transformers

    from lmeval_ctx.lifecycle import extend

    config = transformers.LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=4,
                                      max_position_embeddings=TRAINED, vocab_size=1000)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    extend(model.config, {**REQUESTS[method], "max_length": length}, model=model)
    ids = torch.randint(4, 1000, (1, length), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = resident_mib()
        model(ids, logits_to_keep=1)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(ids, logits_to_keep=1)
            times.append(time.perf_counter() - start)
    return {"growth_mib": round(peak - before, 1), "seconds": round(statistics.median(times), 3) if times else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", default="2048,4096,8192")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--methods", default=",".join(REQUESTS))
    parser.add_argument("--output", default=str(Path(__file__).with_name("attention_methods_result.json")))
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "LENGTH", "REPEATS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], int(args.child[1]), int(args.child[2]))))
        return
    lengths = [int(n) for n in args.lengths.split(",")]
    middle = lengths[len(lengths) // 2]
    rows = {}
    for method in args.methods.split(","):
        rows[method] = {}
        for length in lengths:
            repeats = args.repeats if length == middle else 0
            out = subprocess.run([sys.executable, __file__, "--child", method, str(length), str(repeats)],
                                 capture_output=True, text=True, check=True)
            rows[method][length] = json.loads(out.stdout.strip().splitlines()[-1])
            print(method, length, rows[method][length], flush=True)
    summary = {}
    for method, by_length in rows.items():
        growth = [by_length[n]["growth_mib"] for n in lengths]
        per_doubling = [round(b / a, 2) for a, b in zip(growth, growth[1:])]
        summary[method] = {
            "growth_mib": dict(zip(map(str, lengths), growth)),
            "growth_ratio_per_doubling": per_doubling,
            "growth_target_met": all(r <= 2.2 for r in per_doubling),
            f"seconds_at_{middle}": by_length[middle]["seconds"],
            f"time_ratio_to_none_at_{middle}": (round(by_length[middle]["seconds"] / rows["none"][middle]["seconds"], 2)
                                                if "none" in rows else None),
        }
    result = {"model": f"llama hidden 256, 4 heads, 2 layers, trained {TRAINED}, float32, batch 1, CPU",
              "requests": {m: REQUESTS[m] for m in rows}, "lengths": lengths, "repeats": args.repeats,
              "cpu_count": os.cpu_count(), "load_average_at_end": os.getloadavg(), "methods": summary}
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
