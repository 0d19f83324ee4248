"""Peak memory and wall time of one forward pass with each attention-level method.

A Llama-like model (hidden 256, 4 heads, 2 layers, trained length 2048, random float32
weights, batch 1, CPU) is built; the method is applied by ``lmeval_ctx.extension.lifecycle.extend``
exactly as ``ctx-hf`` applies it.

- Memory: in a fresh process per method and length, the growth of peak resident memory
  during one forward pass over the resident memory just before it; ``--memory-repeats``
  rounds over all methods and lengths, the median per method and length. The children run
  with a fixed glibc mmap threshold (``MALLOC_MMAP_THRESHOLD_=65536``), so the peak is that
  of the live tensors: with glibc's dynamic threshold identical runs differed by 15-130 MiB,
  as much as the growth at 4k (``--default-malloc`` measures that way).
- Wall time: in one process holding one model per method, one warm-up pass each, then
  ``--repeats`` rounds that run every method once in turn (so a change of the machine's load
  falls on all methods alike); the median per method, as a ratio to ``none`` (transformers'
  SDPA) at ``--time-length``.

Targets (issue 12): memory growth at most 2.2x per doubling of the length from 4k to 16k for
every method; wall time at 8k at most 2.5x ``none``'s.

    python benchmarks/attention_methods.py --lengths 4096,8192,16384 --time-length 8192 --repeats 3 --memory-repeats 3

Settings valid up to 16k on the 2k-trained model: rerope window 512; leaky_rerope window 512,
leak 11; self_extend group 16, neighbour window 512 (reach (2048 - 512) * 16 + 512 = 25088);
lm_infinite and dual_chunk with their papers' defaults; logn with no method.
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
    "leaky_rerope": {"scaling": "leaky_rerope", "window": 512, "leak": 11},
    "self_extend": {"scaling": "self_extend", "group_size": 16, "neighbor_window": 512},
    "lm_infinite": {"scaling": "lm_infinite"},
    "dual_chunk": {"scaling": "dual_chunk"},
    "logn": {"logn": True},
}


def resident_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def build(method: str, length: int):
    """The model with ``method`` applied for inputs of ``length`` tokens."""
    import torch
    import transformers

    from lmeval_ctx.extension.lifecycle import extend

    config = transformers.LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=4,
                                      max_position_embeddings=TRAINED, vocab_size=1000)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    extend(model.config, {**REQUESTS[method], "max_length": length}, model=model)
    return model


def inputs(length: int):
    import torch

    return torch.randint(4, 1000, (1, length), generator=torch.Generator().manual_seed(0))


def measure_memory(method: str, length: int) -> dict:
    """In this (fresh) process: build, apply ``method``, one forward pass; its peak memory growth."""
    import torch

    model, ids = build(method, length), inputs(length)
    with torch.no_grad():
        before = resident_mib()
        model(ids, logits_to_keep=1)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"growth_mib": round(peak - before, 1)}


def measure_times(methods: list[str], length: int, repeats: int) -> dict:
    """Median seconds of one forward pass per method, the methods alternating round by round."""
    import torch

    models, ids = {method: build(method, length) for method in methods}, inputs(length)
    times: dict[str, list[float]] = {method: [] for method in methods}
    with torch.no_grad():
        for method in methods:  # warm-up
            models[method](ids, logits_to_keep=1)
        for _ in range(repeats):
            for method in methods:
                start = time.perf_counter()
                models[method](ids, logits_to_keep=1)
                times[method].append(time.perf_counter() - start)
    return {method: {"seconds": [round(t, 3) for t in spent], "median_seconds": round(statistics.median(spent), 3)}
            for method, spent in times.items()}


# glibc's malloc raises its mmap threshold as large blocks are freed, after which freed tensors
# stay in the heap and later ones reuse or extend it: a fresh process's peak then varies by 15-130
# MiB between identical runs. A fixed threshold maps and unmaps every block of 64 KiB or more, so
# the peak is that of the live tensors (identical runs agree to 0.2 MiB).
MEMORY_CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def child(command: list[str], env: dict | None = None) -> dict:
    out = subprocess.run([sys.executable, __file__, *command], capture_output=True, text=True,
                         env={**os.environ, **(env or {})})
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", default="4096,8192,16384", help="memory: one fresh process per method and length")
    parser.add_argument("--time-length", type=int, default=8192, help="wall time: the length of the timed passes")
    parser.add_argument("--repeats", type=int, default=3, help="wall time: rounds over all methods")
    parser.add_argument("--memory-repeats", type=int, default=3,
                        help="memory: fresh processes per method and length (the median is the figure)")
    parser.add_argument("--default-malloc", action="store_true",
                        help="memory: keep glibc's dynamic mmap threshold (noisier peaks; see MEMORY_CHILD_ENV)")
    parser.add_argument("--methods", default=",".join(REQUESTS))
    parser.add_argument("--output", default=str(Path(__file__).with_name("attention_methods_result.json")))
    parser.add_argument("--memory-child", nargs=2, metavar=("METHOD", "LENGTH"), help=argparse.SUPPRESS)
    parser.add_argument("--time-child", nargs=3, metavar=("METHODS", "LENGTH", "REPEATS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        print(json.dumps(measure_memory(args.memory_child[0], int(args.memory_child[1]))))
        return
    if args.time_child:
        print(json.dumps(measure_times(args.time_child[0].split(","), int(args.time_child[1]), int(args.time_child[2]))))
        return
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in REQUESTS]
    if unknown:
        parser.error(f"--methods: unknown {', '.join(unknown)}; known: {', '.join(REQUESTS)}")
    if "none" not in methods:
        parser.error("--methods must include none: wall times are ratios to it")
    lengths = [int(n) for n in args.lengths.split(",")]
    started = time.perf_counter()
    memory = {method: {} for method in methods}
    samples = {method: {length: [] for length in lengths} for method in methods}
    for _ in range(args.memory_repeats):  # rounds over every method and length, each a fresh process
        for method in methods:
            for length in lengths:
                samples[method][length].append(
                    child(["--memory-child", method, str(length)], env=None if args.default_malloc
                          else MEMORY_CHILD_ENV)["growth_mib"])
                print(method, length, samples[method][length][-1], "MiB", flush=True)
    for method in methods:
        for length in lengths:
            memory[method][length] = statistics.median(samples[method][length])
    times = child(["--time-child", ",".join(methods), str(args.time_length), str(args.repeats)])
    print(json.dumps(times), flush=True)
    summary = {}
    for method in methods:
        growth = [memory[method][n] for n in lengths]
        per_doubling = [round(b / a, 2) for a, b in zip(growth, growth[1:])]
        ratio = round(times[method]["median_seconds"] / times["none"]["median_seconds"], 2)
        summary[method] = {
            "growth_mib": dict(zip(map(str, lengths), growth)),
            "growth_mib_samples": {str(n): samples[method][n] for n in lengths},
            "growth_ratio_per_doubling": per_doubling,
            "growth_target_met": all(r <= 2.2 for r in per_doubling),
            f"seconds_at_{args.time_length}": times[method]["seconds"],
            f"median_seconds_at_{args.time_length}": times[method]["median_seconds"],
            f"time_ratio_to_none_at_{args.time_length}": ratio,
            "time_target_met": ratio <= 2.5,
        }
    result = {"command": "python benchmarks/attention_methods.py " + " ".join(sys.argv[1:]),
              "model": f"llama hidden 256, 4 heads, 2 layers, trained {TRAINED}, float32, batch 1, CPU",
              "requests": {m: REQUESTS[m] for m in methods}, "lengths": lengths, "time_length": args.time_length,
              "repeats": args.repeats, "memory_repeats": args.memory_repeats,
              "memory_child_env": {} if args.default_malloc else MEMORY_CHILD_ENV, "cpu_count": os.cpu_count(),
              "load_average_at_end": os.getloadavg(),
              "wall_seconds": round(time.perf_counter() - started, 1), "methods": summary}
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
