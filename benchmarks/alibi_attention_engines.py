"""ALiBi attention engines on CPU: FlexAttention, the block path and transformers' dense attention.

A tiny random BLOOM (16 heads, hidden 256, head size 16, 2 layers, float32, batch 1) with
``scaling=ntk,factor=4,original_max_length=4096`` installed, one forward pass per engine and
length, each in a fresh process:

- ``flex``: FlexAttention (lmeval_ctx/extension/alibi/flex_attention.py), compiled first by a
  warm-up pass at the shortest length of the same padded bucket (its compile time is recorded);
- ``blocks``: the block path (``blocked_alibi_attention``);
- ``dense``: transformers' own attention (eager: ``heads x L x L`` scores and bias), skipped where
  its scores alone would pass ``--dense-limit-gib``.

Time: wall seconds of the timed pass (median of ``--repeats``); memory: peak resident memory
during the timed pass minus the resident memory just before it (sampled every 2 ms).
``torch.set_num_threads`` is ``--threads``. Figures go to ``alibi_attention_engines_result.json``;
``--table`` prints the docs table from that file (docs/alibi_attention.md).

    python benchmarks/alibi_attention_engines.py --lengths 4096,8192,16384,32768 --threads 1
    python benchmarks/alibi_attention_engines.py --table
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

RESULT = Path(__file__).with_name("alibi_attention_engines_result.json")
ENGINES = ("flex", "blocks", "dense")
HEADS, HIDDEN, LAYERS = 16, 256, 2


def resident_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakSampler:
    """The largest resident memory seen while active (a thread sampling every 2 ms)."""

    def __enter__(self):
        self.before = self.peak = resident_mib()
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, resident_mib())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, resident_mib())


def measure(engine: str, length: int, repeats: int, threads: int) -> dict:
    """In this (fresh) process: the model, a warm-up pass, then the timed passes."""
    import torch
    import transformers

    from lmeval_ctx.extension.alibi.flex_attention import MIN_BUCKET
    from lmeval_ctx.extension.alibi.install import install_alibi_scaling
    from lmeval_ctx.extension.alibi.scaling import AlibiScaling
    from lmeval_ctx.extension.flex import padded_length

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = transformers.BloomConfig(hidden_size=HIDDEN, n_head=HEADS, n_layer=LAYERS, vocab_size=100)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    install_alibi_scaling(model, AlibiScaling("ntk", 4.0, 4096),
                          attention={"dense": "transformers"}.get(engine, engine))
    ids = torch.randint(4, 100, (1, length), generator=torch.Generator().manual_seed(0))
    # flex: a shorter length of the same bucket (the bucket below is at most 3/4 of it), so the timed pass compiles nothing
    warm = padded_length(length, MIN_BUCKET) * 3 // 4 + 1 if engine == "flex" else 256
    with torch.no_grad():
        start = time.perf_counter()
        model(ids[:, :warm])
        warm_seconds = time.perf_counter() - start
        seconds, peaks = [], []
        for _ in range(repeats):
            with PeakSampler() as sampler:
                start = time.perf_counter()
                model(ids)
                seconds.append(round(time.perf_counter() - start, 3))
            peaks.append(round(sampler.peak - sampler.before, 1))
    return {"engine": engine, "length": length, "seconds": statistics.median(seconds), "all_seconds": seconds,
            "peak_growth_mib": max(peaks), "warmup_tokens": warm, "warmup_seconds": round(warm_seconds, 2)}


def dense_fits(length: int, limit_gib: float) -> bool:
    """Eager attention holds at least two float32 ``heads x L x L`` tensors (scores, weights)."""
    return 2 * HEADS * length * length * 4 / 2**30 <= limit_gib


def run_all(lengths: list[int], repeats: int, threads: int, limit_gib: float) -> dict:
    """Every engine at every length, each in a fresh process; the result file is rewritten after
    each row, so a run stopped early keeps what it measured."""
    import torch

    result = {"model": f"random BLOOM, {HEADS} heads, hidden {HIDDEN}, {LAYERS} layers, float32, batch 1",
              "scaling": "ntk, factor 4, original_max_length 4096", "threads": threads, "repeats": repeats,
              "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
              "cores_on_machine": os.cpu_count(), "rows": [], "skipped": []}
    rows, skipped = result["rows"], result["skipped"]
    for length in lengths:
        for engine in ENGINES:
            if engine == "dense" and not dense_fits(length, limit_gib):
                skipped.append({"engine": engine, "length": length,
                                "why": f"2 x {HEADS} x L x L float32 > {limit_gib} GiB"})
                continue
            out = subprocess.run([sys.executable, __file__, "--one", engine, str(length), "--repeats", str(repeats),
                                  "--threads", str(threads)], capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(rows[-1], file=sys.stderr, flush=True)
            RESULT.write_text(json.dumps(result, indent=1) + "\n")
    return result


def table(result: dict) -> str:
    """The docs table: seconds and peak growth per engine and length, FlexAttention / blocks."""
    by = {(row["engine"], row["length"]): row for row in result["rows"]}
    lengths = sorted({row["length"] for row in result["rows"]} | {row["length"] for row in result["skipped"]})
    cell = lambda row: "not run" if row is None else f"{row['seconds']:.2f} s, {row['peak_growth_mib']:.0f} MiB"  # noqa: E731
    lines = ["| tokens | FlexAttention | block path | dense (transformers, eager) | time flex / blocks "
             "| flex warm-up pass (compiles; tokens) |", "|---|---|---|---|---|---|"]
    for length in lengths:
        flex, blocks, dense = (by.get((engine, length)) for engine in ENGINES)
        ratio = f"{flex['seconds'] / blocks['seconds']:.2f}" if flex and blocks else "-"
        warm = f"{flex['warmup_seconds']:.0f} s; {flex['warmup_tokens']}" if flex else "-"
        lines.append(f"| {length} | {cell(flex)} | {cell(blocks)} | {cell(dense)} | {ratio} | {warm} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", default="4096,8192,16384,32768")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dense-limit-gib", type=float, default=10.0)
    parser.add_argument("--one", nargs=2, metavar=("ENGINE", "LENGTH"), help="internal: one measurement")
    parser.add_argument("--table", action="store_true", help="print the docs table from the result file")
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(RESULT.read_text())))
    elif args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.repeats, args.threads)))
    else:
        result = run_all([int(x) for x in args.lengths.split(",")], args.repeats, args.threads, args.dense_limit_gib)
        print(table(result))


if __name__ == "__main__":
    main()
