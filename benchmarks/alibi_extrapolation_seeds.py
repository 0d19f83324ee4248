"""The ALiBi extrapolation recipe across training seeds: one training run is one draw.

Runs ``benchmarks/alibi_extrapolation.py all`` once per ``--seeds`` value (train a small BLOOM
model from scratch, then ``lmeval-ctx sweep`` and ``report`` at 1x-8x its window), each into
its own folder, and pools what they measured. Per method, factor and length:

- passkey accuracy per seed, its mean and spread (min, max, standard deviation across seeds),
  and the 95% Wilson interval of all seeds' prompts pooled;
- held-out token perplexity per seed, its mean and spread.

And, for each method against ``none`` at each length, whether the difference holds across
seeds: the method is ahead (or behind) in every seed, and the pooled intervals do not overlap.
A seed whose result file already holds an evaluation is not run again (``--rerun`` forces it),
so an interrupted run resumes.

Usage (``bash scripts/alibi_extrapolation.sh seeds --seeds 0,1,2,3,4`` sets up its venv and runs this)::

    python benchmarks/alibi_extrapolation_seeds.py --seeds 0,1,2,3,4
    python benchmarks/alibi_extrapolation_seeds.py --seeds 0,1 -- --steps 500   # extra args: per seed
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmark_support import REPO, in_repository

RECIPE = REPO / "benchmarks" / "alibi_extrapolation.py"
DEFAULT_WORK = REPO / "runs" / "alibi_extrapolation" / "seeds"  # git-ignored: weights never reach git


def wilson(correct: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval (the report's, lmeval_ctx.report.statistics)."""
    from lmeval_ctx.report.statistics import wilson_interval

    return (float("nan"), float("nan")) if n == 0 else wilson_interval(correct / n, n)


def run_seed(seed: int, work: Path, extra: list[str], rerun: bool, log=print) -> dict:
    """Train and evaluate one seed (or read its finished result); returns its result file's contents."""
    folder = work / f"seed-{seed}"
    result = folder / "result.json"
    if result.is_file() and not rerun and "evaluation" in json.loads(result.read_text()):
        log(f"[seeds] seed {seed}: finished earlier, read from {in_repository(result)}")
        return json.loads(result.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(RECIPE), "all", "--seed", str(seed), "--checkpoint", str(folder / "model"),
               "--run-dir", str(folder), "--result", str(result), "--images", str(folder / "img"), *extra]
    log("[seeds] $ " + " ".join(command))
    started = time.perf_counter()
    if subprocess.run(command, cwd=REPO).returncode != 0:
        raise RuntimeError(f"seed {seed}: {RECIPE.name} failed; its log is above, its files in {folder}")
    loaded = json.loads(result.read_text())
    loaded["seed_seconds"] = round(time.perf_counter() - started, 1)
    result.write_text(json.dumps(loaded, indent=1) + "\n")
    return loaded


def _spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def pool(per_seed: dict[int, dict]) -> list[dict]:
    """One row per sweep point (method and factor): per-length passkey and perplexity across seeds."""
    points: dict[str, dict] = {}
    for seed, result in per_seed.items():
        for row in result["evaluation"]["rows"]:
            point = points.setdefault(row["point"], {"point": row["point"], "method": row["method"],
                                                     "factor": row["factor"], "seeds": {}})
            point["seeds"][seed] = row
    pooled = []
    for point in points.values():
        if set(point["seeds"]) != set(per_seed):
            missing = sorted(set(per_seed) - set(point["seeds"]))
            raise ValueError(f"point {point['point']} is missing from seed(s) {missing}: the seeds' sweeps differ")
        lengths = list(next(iter(point["seeds"].values()))["passkey"])
        row = {key: point[key] for key in ("point", "method", "factor")}
        row["passkey"], row["token_perplexity"] = {}, {}
        for length in lengths:
            cells = [point["seeds"][seed]["passkey"][length] for seed in sorted(per_seed)]
            correct, n = sum(c["correct"] for c in cells), sum(c["n"] for c in cells)
            low, high = wilson(correct, n)
            row["passkey"][length] = {"per_seed": [c["correct"] / c["n"] for c in cells],
                                      "correct": correct, "n": n, "wilson95": [round(low, 3), round(high, 3)],
                                      **_spread([c["correct"] / c["n"] for c in cells])}
            ppls = [point["seeds"][seed]["token_perplexity"][length] for seed in sorted(per_seed)]
            row["token_perplexity"][length] = (None if any(p is None for p in ppls)
                                               else {"per_seed": ppls, **_spread(ppls)})
        pooled.append(row)
    order = ["none", "pi", "ntk", "dynamic_ntk"]
    return sorted(pooled, key=lambda r: (order.index(r["method"]) if r["method"] in order else len(order),
                                         r["factor"] or 0.0))


def against_none(rows: list[dict]) -> list[dict]:
    """Each method's passkey accuracy against ``none`` per length: does the difference hold across seeds?"""
    none = next((r for r in rows if r["method"] == "none"), None)
    if none is None:
        raise ValueError("no 'none' point among the seeds' sweeps: nothing to compare the methods with")
    verdicts = []
    for row in rows:
        if row is none:
            continue
        for length, cell in row["passkey"].items():
            base = none["passkey"][length]
            pairs = list(zip(cell["per_seed"], base["per_seed"]))
            ahead, behind = sum(a > b for a, b in pairs), sum(a < b for a, b in pairs)
            disjoint = cell["wilson95"][0] > base["wilson95"][1] or cell["wilson95"][1] < base["wilson95"][0]
            direction = "ahead" if ahead == len(pairs) else "behind" if behind == len(pairs) else "mixed"
            verdicts.append({"point": row["point"], "length": int(length), "seeds_ahead": ahead,
                             "seeds_behind": behind, "pooled_intervals_disjoint": disjoint,
                             "holds": direction != "mixed" and disjoint,
                             "direction": direction})
    return verdicts


def markdown_table(rows: list[dict]) -> str:
    """Passkey mean accuracy [min-max across seeds] (pooled Wilson interval), perplexity mean ± std."""
    lengths = list(rows[0]["passkey"])
    head = ["method", "factor"] + [f"passkey@{n}" for n in lengths] + [f"ppl@{n}" for n in lengths]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["method"], "" if row["factor"] is None else f"{row['factor']:g}"]
        for n in lengths:
            p = row["passkey"][n]
            cells.append(f"{p['mean']:.2f} [{p['min']:.2f}-{p['max']:.2f}] ({p['wilson95'][0]:.2f}, "
                         f"{p['wilson95'][1]:.2f})")
        for n in lengths:
            ppl = row["token_perplexity"][n]
            cells.append("" if ppl is None else f"{ppl['mean']:.1f} ± {ppl['std']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> dict:
    """What the figures depend on beyond the recipe: the CPU's vector unit and the math libraries."""
    import platform

    import torch

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").is_file() else ""
    return {"cpu": model, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "mkl": torch.backends.mkl.is_available(), "torch": torch.__version__}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2,3,4", help="training seeds, comma-separated (at least 2)")
    parser.add_argument("--work", default=str(DEFAULT_WORK), help="one folder per seed goes here")
    parser.add_argument("--result", default=str(REPO / "benchmarks" / "alibi_extrapolation_seeds_result.json"))
    parser.add_argument("--rerun", action="store_true", help="run seeds again even when their results exist")
    parser.add_argument("extra", nargs="*", help="after --: arguments for alibi_extrapolation.py, every seed")
    args = parser.parse_args(argv)
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds {args.seeds!r}: give whole numbers, e.g. 0,1,2,3,4")
    if len(args.seeds) < 2 or len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds {args.seeds}: give at least two distinct seeds (one training run is one draw)")
    if any(a in ("--seed", "--checkpoint", "--run-dir", "--result", "--images") for a in args.extra):
        parser.error("--seed, --checkpoint, --run-dir, --result and --images are set per seed; remove them")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    per_seed = {seed: run_seed(seed, Path(args.work), args.extra, args.rerun) for seed in args.seeds}
    rows = pool(per_seed)
    first = per_seed[args.seeds[0]]
    result = {"seeds": args.seeds, "recipe_args": args.extra, "machine": machine(),
              "lengths": first["evaluation"]["lengths"],
              "passkey_samples_per_length_per_seed": first["evaluation"]["passkey_samples_per_length"],
              "training": {seed: {k: r["training"].get(k) for k in ("final_loss", "mean_loss_last_50",
                                                                       "train_seconds", "software")}
                           for seed, r in per_seed.items()},
              "seed_seconds": {seed: r.get("seed_seconds") for seed, r in per_seed.items()},
              "total_seconds": round(time.perf_counter() - started, 1),
              "rows": rows, "against_none": against_none(rows)}
    Path(args.result).write_text(json.dumps(result, indent=1) + "\n")
    print(markdown_table(rows))
    held = [v for v in result["against_none"] if v["holds"]]
    print(f"\n{len(held)} of {len(result['against_none'])} method-length differences from none hold across "
          f"{len(args.seeds)} seeds:")
    for v in held:
        print(f"  {v['point']} @ {v['length']}: {v['direction']} in every seed, pooled intervals disjoint")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
