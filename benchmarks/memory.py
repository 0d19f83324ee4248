"""Peak memory and wall time of one forward pass at long windows: ctx-hf against transformers.

Two suites, each run on small models built locally (random weights, float32, CPU, batch 1),
every memory figure measured in a fresh process (the growth of peak resident memory
during one forward pass, after loading):

- ``alibi``: BLOOM, MPT and Falcon-ALiBi with 16 heads (hidden 256, 2 layers), at 4k to
  64k tokens, through ``ctx-hf`` (NTK-ALiBi, factor 4) with its memory-efficient ALiBi
  attention (``alibi_attention=auto``) against the same ``ctx-hf`` model with
  ``alibi_attention=transformers`` (BLOOM, MPT: eager; Falcon: SDPA over a dense
  ``heads x L x L`` float mask). transformers' attention runs only where its estimated
  growth fits the memory limit (see ``--limit-gib``); the others are recorded as skipped.
  Wall time: at the shortest length, both attentions on one loaded model pair, passes
  alternated in one process; reported as the ratio of medians.
  Targets: growth at most 2.2x per doubling of length; at 16k at most 1/8 of
  transformers' (extrapolated at x4 per doubling from its longest measured length where
  it cannot run); wall time at 4k at most 1.1x transformers'.
- ``rope``: a Llama-like RoPE model (SDPA) through ``ctx-hf`` with YaRN against plain
  transformers with the same scaling written by hand, at 4k to 16k. Target: ctx-hf adds
  nothing beyond noise.

    python benchmarks/memory.py --suite alibi --lengths 4096,8192,16384 --repeats 2
    python benchmarks/memory.py --suite rope

The attention's work grows as L^2 whatever its memory does: on 2 CPU cores shared with
other jobs (load ~12) the recorded alibi run (4k-16k) took 18 minutes, a 16k pass about
1-2 minutes per model; 32k and 64k (the default lengths) take about 4x and 16x that.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmark_support import VOCAB_SIZE, char_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ALIBI_KINDS = ("bloom", "mpt", "falcon")
ALIBI_LENGTHS = "4096,8192,16384,32768,65536"
ALIBI_TRAINED = 4096
ALIBI_HEADS = 16
# ctx-hf arguments of the alibi suite (BLOOM's config records no trained length)
ALIBI_ARGS = {"scaling": "ntk", "factor": 4, "original_max_length": ALIBI_TRAINED}
# Growth of transformers' ALiBi attention, in score tensors (heads x L x L float32) held at
# once at its peak: measured 4.6 on BLOOM (2 heads, 16k: 9.3 GiB); 5 keeps a margin.
SCORE_TENSORS_AT_PEAK = 5
ROPE_ARGS = {"scaling": "yarn", "factor": 4}


def build(kind: str, folder: Path) -> None:
    import torch
    import transformers

    common = dict(vocab_size=VOCAB_SIZE, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    if kind == "llama":
        config = transformers.LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=4,
                                          max_position_embeddings=4096, **common)
    elif kind == "bloom":
        config = transformers.BloomConfig(hidden_size=256, n_layer=2, n_head=ALIBI_HEADS, **common)
    elif kind == "mpt":
        config = transformers.MptConfig(d_model=256, n_layers=2, n_heads=ALIBI_HEADS, max_seq_len=ALIBI_TRAINED,
                                        **common)
    elif kind == "falcon":
        config = transformers.FalconConfig(hidden_size=256, num_hidden_layers=2, num_attention_heads=ALIBI_HEADS,
                                           alibi=True, new_decoder_architecture=False, multi_query=False,
                                           max_position_embeddings=ALIBI_TRAINED, **common)
    else:
        raise ValueError(f"unknown model kind {kind!r}")
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load(folder: str, kind: str, variant: str, length: int):
    """The model one variant runs: ctx-hf (its attention choice) or plain transformers (rope suite)."""
    import torch
    import transformers

    if kind != "llama":
        from lmeval_ctx.model_wrappers.ctx_hf import CtxHFLM

        attention = "transformers" if variant == "transformers" else "auto"
        lm = CtxHFLM(pretrained=folder, device="cpu", dtype="float32", max_length=length,
                     alibi_attention=attention, **ALIBI_ARGS)
        return lm.model
    if variant == "ctx-hf":
        from lmeval_ctx.model_wrappers.ctx_hf import CtxHFLM

        return CtxHFLM(pretrained=folder, device="cpu", dtype="float32", max_length=length, **ROPE_ARGS).model
    config = transformers.AutoConfig.from_pretrained(folder)
    config.rope_parameters = {"rope_type": "yarn", "rope_theta": config.rope_parameters["rope_theta"],
                              "factor": 4.0, "original_max_position_embeddings": 4096}
    return transformers.AutoModelForCausalLM.from_pretrained(folder, config=config, dtype=torch.float32)


def token_ids(length: int):
    import torch

    return torch.randint(4, 90, (1, length), generator=torch.Generator().manual_seed(0))


def measure_memory(folder: str, kind: str, variant: str, length: int) -> dict:
    """In this (fresh) process: load, then one forward pass; the growth of peak RSS."""
    import torch

    model = load(folder, kind, variant, length).eval()
    ids = token_ids(length)
    before = peak_mib()
    start = time.perf_counter()
    with torch.no_grad():
        model(ids)
    attention = model.config._attn_implementation
    if kind != "llama" and variant == "ctx-hf":
        attention = "ctx-hf blocked (alibi_attention=auto)"
    return {"forward_peak_growth_mib": round(peak_mib() - before, 1), "seconds": round(time.perf_counter() - start, 2),
            "attention": attention}


def measure_time(folder: str, kind: str, length: int, repeats: int) -> dict:
    """Both attentions in this process, passes alternated; medians and their ratio."""
    import torch

    models = {variant: load(folder, kind, variant, length).eval() for variant in ("transformers", "ctx-hf")}
    ids = token_ids(length)
    seconds: dict[str, list[float]] = {variant: [] for variant in models}
    with torch.no_grad():
        for _ in range(repeats):
            for variant, model in models.items():
                start = time.perf_counter()
                model(ids)
                seconds[variant].append(round(time.perf_counter() - start, 3))
    medians = {variant: statistics.median(values) for variant, values in seconds.items()}
    return {"seconds": seconds, "ctx-hf / transformers": round(medians["ctx-hf"] / medians["transformers"], 3)}


def run(*args) -> dict:
    done = subprocess.run([sys.executable, __file__, *map(str, args)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def transformers_fits(length: int, limit_gib: float) -> bool:
    estimate = SCORE_TENSORS_AT_PEAK * ALIBI_HEADS * length * length * 4
    return estimate <= limit_gib * 2**30


def alibi_suite(folder_root: Path, lengths: list[int], limit_gib: float, repeats: int) -> dict:
    rows, timing = [], []
    for kind in ALIBI_KINDS:
        folder = folder_root / kind
        build(kind, folder)
        timing.append({"model": kind, "length": lengths[0], **run("--time", folder, kind, lengths[0], repeats)})
        print(json.dumps(timing[-1]), flush=True)
        for length in lengths:
            row = {"model": kind, "length": length}
            for variant in ("ctx-hf", "transformers"):
                if variant == "transformers" and not transformers_fits(length, limit_gib):
                    row[variant] = None
                    estimate_gib = SCORE_TENSORS_AT_PEAK * ALIBI_HEADS * length * length * 4 / 2**30
                    row["transformers skipped"] = (
                        f"estimated {SCORE_TENSORS_AT_PEAK} x {ALIBI_HEADS} heads x L^2 float32 = "
                        f"{estimate_gib:.0f} GiB > {limit_gib} GiB")
                    continue
                result = run("--measure", folder, kind, variant, length)
                row[variant] = result["forward_peak_growth_mib"]
                row[f"{variant} seconds"] = result["seconds"]
                row[f"{variant} attention"] = result["attention"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    return {"rows": rows, "timing": timing, "checks": alibi_checks(rows, timing)}


def alibi_checks(rows: list[dict], timing: list[dict]) -> dict:
    """The targets, computed from the figures."""
    checks = {}
    for kind in ALIBI_KINDS:
        mine = [r for r in rows if r["model"] == kind]
        growth = {r["length"]: r["ctx-hf"] for r in mine}
        lengths = sorted(growth)
        ratios = [round(growth[b] / growth[a], 3) for a, b in zip(lengths, lengths[1:]) if 2 * a == b and growth[a] > 0]
        measured = {r["length"]: r["transformers"] for r in mine if r["transformers"] is not None}
        entry = {"growth per doubling": ratios, "max growth per doubling": max(ratios) if ratios else None,
                 "target per doubling <= 2.2": bool(ratios) and max(ratios) <= 2.2}
        if 16384 in growth and measured:
            if 16384 in measured:
                reference, how = measured[16384], "measured"
            else:
                longest = max(measured)
                doublings = (16384 // longest).bit_length() - 1
                reference = measured[longest] * 4 ** doublings
                how = f"extrapolated from {longest} tokens at x4 per doubling"
            entry["transformers at 16k (MiB)"] = round(reference, 1)
            entry["transformers at 16k"] = how
            entry["ctx-hf / transformers at 16k"] = round(growth[16384] / reference, 4)
            entry["target at 16k <= 1/8"] = growth[16384] / reference <= 1 / 8
        time_row = next(t for t in timing if t["model"] == kind)
        entry[f"wall time ratio at {time_row['length']}"] = time_row["ctx-hf / transformers"]
        entry["target wall time <= 1.1"] = time_row["ctx-hf / transformers"] <= 1.1
        checks[kind] = entry
    return checks


def rope_suite(folder_root: Path, lengths: list[int], repeats: int) -> dict:
    rows = []
    folder = folder_root / "llama"
    build("llama", folder)
    for length in lengths:
        row = {"model": "llama (RoPE, SDPA)", "length": length, "ctx-hf arguments": ROPE_ARGS}
        for variant in ("transformers", "ctx-hf"):
            growths = [run("--measure", folder, "llama", variant, length)["forward_peak_growth_mib"]
                       for _ in range(repeats)]
            row[variant] = statistics.median(growths)
            row[f"{variant} runs"] = growths
        row["ctx-hf / transformers"] = round(row["ctx-hf"] / row["transformers"], 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return {"rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", choices=("alibi", "rope"), required=False, default="alibi")
    parser.add_argument("--lengths",
                        help=f"comma-separated; default {ALIBI_LENGTHS} (alibi), 4096,8192,16384 (rope)")
    parser.add_argument("--limit-gib", type=float, default=12.0,
                        help="run transformers' ALiBi attention only where its estimated growth fits")
    parser.add_argument("--repeats", type=int, default=3,
                        help="rope: fresh processes per figure (median); alibi: timed passes per attention")
    parser.add_argument("--output", default=str(Path(__file__).with_name("memory_result.json")))
    parser.add_argument("--measure", nargs=4, metavar=("FOLDER", "KIND", "VARIANT", "LENGTH"), help=argparse.SUPPRESS)
    parser.add_argument("--time", nargs=4, metavar=("FOLDER", "KIND", "LENGTH", "REPEATS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        folder, kind, variant, length = args.measure
        print(json.dumps(measure_memory(folder, kind, variant, int(length))))
        return
    if args.time:
        folder, kind, length, repeats = args.time
        print(json.dumps(measure_time(folder, kind, int(length), int(repeats))))
        return
    default_lengths = ALIBI_LENGTHS if args.suite == "alibi" else "4096,8192,16384"
    lengths = [int(n) for n in (args.lengths or default_lengths).split(",")]
    output = Path(args.output)
    results = json.loads(output.read_text()) if output.exists() else {}
    started = time.time()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        if args.suite == "alibi":
            suite = alibi_suite(Path(tmp), lengths, args.limit_gib, args.repeats)
        else:
            suite = rope_suite(Path(tmp), lengths, args.repeats)
    suite["run"] = {
        "command": "python benchmarks/memory.py " + " ".join(sys.argv[1:]),
        "minutes": round((time.time() - started) / 60, 1),
        "load average (1, 5, 15 min) before / after": [list(load_before), list(os.getloadavg())],
        "cpus": os.cpu_count(),
        "note": "peak RSS growth (MiB) during one forward pass after loading, batch 1, float32, CPU; "
                "each memory figure from a fresh process",
    }
    results[args.suite] = suite
    output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
