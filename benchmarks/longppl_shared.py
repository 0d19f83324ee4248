"""What does the shared pass of the long-range perplexity task save?

Scores the same documents at lengths {L/8, L/4, L/2, L} through lm-eval with
``ctx-hf``: once in one run (the shared pass: each document runs once at L),
as four separate runs (one per length), and at L alone. Rounds alternate the
three in one process; medians are reported, with the figures of both routes
compared: the largest relative difference is recorded, and figures differing by
more than TOLERANCE make the script exit with status 1 (after writing the record).

Expectation: with cost linear in length, the four separate runs cost about
1 + 1/2 + 1/4 + 1/8 = 1.875 times the longest alone (more when attention
dominates); the shared run should cost about as much as the longest alone.

    python benchmarks/longppl_shared.py [--length 2048] [--docs 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# The shared pass reads the same log-probabilities off a longer forward pass: equal up to float noise.
TOLERANCE = 1e-6


class ForwardClock:
    """Accumulates the time the model spends in forward passes."""

    def __init__(self, lm):
        self.seconds = 0.0
        call = lm._model_call

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        lm._model_call = timed


def evaluate(lm, clock: ForwardClock, folder: Path, lengths: list[int], docs: int) -> tuple[float, float, dict]:
    """(wall seconds, forward seconds, results) of one lm-eval run of longppl at ``lengths``."""
    import lm_eval

    clock.seconds = 0.0
    start = time.perf_counter()
    out = lm_eval.simple_evaluate(model=lm, tasks=["longppl"], bootstrap_iters=0,
                                  metadata={"pretrained": str(folder), "lengths": lengths, "num_docs": docs})
    return time.perf_counter() - start, clock.seconds, out["results"]["longppl"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--docs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", default=str(Path(__file__).with_name("longppl_shared_result.json")))
    args = parser.parse_args()
    logging.disable(logging.WARNING)

    from overhead import build_model  # the same model as the overhead benchmark, beside this one

    from lmeval_ctx.model_wrappers.ctx_hf import CtxHFLM

    lengths = [args.length // 8, args.length // 4, args.length // 2, args.length]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        build_model(folder, max_positions=args.length)
        lm = CtxHFLM(pretrained=str(folder), device="cpu", dtype="float32", batch_size=1)
        clock = ForwardClock(lm)
        names = ("shared run", "four separate runs", "longest alone")
        times = {name: [] for name in names}
        forward = {name: [] for name in names}
        differences = {length: 0.0 for length in lengths}  # largest relative difference over rounds
        for _ in range(args.rounds):
            elapsed, model_time, shared = evaluate(lm, clock, folder, lengths, args.docs)
            times["shared run"].append(elapsed)
            forward["shared run"].append(model_time)
            separate, total, total_forward = {}, 0.0, 0.0
            for length in lengths:
                elapsed, model_time, separate[length] = evaluate(lm, clock, folder, [length], args.docs)
                total += elapsed
                total_forward += model_time
            times["four separate runs"].append(total)
            forward["four separate runs"].append(total_forward)
            elapsed, model_time, _ = evaluate(lm, clock, folder, [args.length], args.docs)
            times["longest alone"].append(elapsed)
            forward["longest alone"].append(model_time)
            for length in lengths:
                key = f"token_perplexity@{length},none"
                gap = abs(shared[key] / separate[length][key] - 1)
                differences[length] = max(differences[length], gap if math.isfinite(gap) else math.inf)  # NaN too
    medians = {name: statistics.median(values) for name, values in times.items()}
    forward_medians = {name: statistics.median(values) for name, values in forward.items()}
    result = {
        "model": "Llama 6 layers x 512, float32, char tokenizer, ctx-hf scaling=none, batch_size 1",
        "lengths": lengths, "documents": args.docs, "rounds": args.rounds, "cpu_threads": os.cpu_count(),
        "median_wall_seconds": {name: round(value, 3) for name, value in medians.items()},
        "wall_ratio_to_longest_alone": {
            name: round(value / medians["longest alone"], 3) for name, value in medians.items()},
        "median_forward_seconds": {name: round(value, 3) for name, value in forward_medians.items()},
        "forward_ratio_to_longest_alone": {
            name: round(value / forward_medians["longest alone"], 3) for name, value in forward_medians.items()},
        "largest_relative_difference_shared_vs_separate": {
            str(length): float(f"{value:.3g}") if math.isfinite(value) else "not finite"
            for length, value in differences.items()},
        "tolerance": TOLERANCE,
        "figures_equal": max(differences.values()) <= TOLERANCE,
    }
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if not result["figures_equal"]:
        sys.exit(f"The shared run's perplexities differ from the separate runs' by more than {TOLERANCE:g} "
                 f"(relative): {result['largest_relative_difference_shared_vs_separate']}")


if __name__ == "__main__":
    main()
