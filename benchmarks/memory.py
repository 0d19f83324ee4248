"""Peak memory of one forward pass at long windows: ctx-hf against plain transformers.

For each family (a Llama-like RoPE model with SDPA attention; BLOOM, whose ALiBi
bias and eager attention scores are full ``length x length x heads`` tensors) and
each length (4k, 8k, 16k), a fresh process loads a small local model and runs one
forward pass over ``length`` tokens, either through ``ctx-hf`` (the model lm-eval
calls, with a method applied) or as plain transformers with the same settings.
Reported: the growth of peak resident memory during the forward pass (MiB).

Target: ctx-hf adds nothing beyond noise.

    python benchmarks/memory.py [--lengths 4096,8192,16384]
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
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

FAMILIES = {
    # name: (config builder, ctx-hf arguments, equivalent plain-transformers config changes)
    "llama (RoPE, SDPA)": ("llama", {"scaling": "yarn", "factor": 4}),
    "bloom (ALiBi, eager)": ("bloom", {"scaling": "ntk", "factor": 4, "original_max_length": 4096}),
}


def build(kind: str, folder: Path) -> None:
    import torch
    import transformers
    from tiny_models import VOCAB_SIZE, char_tokenizer

    common = dict(vocab_size=VOCAB_SIZE, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    if kind == "llama":
        config = transformers.LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=4,
                                          max_position_embeddings=4096, **common)
    else:
        config = transformers.BloomConfig(hidden_size=64, n_layer=2, n_head=2, **common)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(folder: str, kind: str, variant: str, length: int) -> dict:
    """In this (fresh) process: load, then one forward pass; the growth of peak RSS."""
    import torch
    import transformers

    _, extension = FAMILIES[next(name for name, (k, _) in FAMILIES.items() if k == kind)]
    if variant == "ctx-hf":
        from lmeval_ctx.model_wrappers.ctx_hf import CtxHFLM

        lm = CtxHFLM(pretrained=folder, device="cpu", dtype="float32", max_length=length, **extension)
        model = lm.model
    else:
        config = transformers.AutoConfig.from_pretrained(folder)
        if kind == "llama":  # the same scaling, written by hand
            config.rope_parameters = {"rope_type": "yarn", "rope_theta": config.rope_parameters["rope_theta"],
                                      "factor": 4.0, "original_max_position_embeddings": 4096}
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, config=config, dtype=torch.float32)
    model.eval()
    ids = torch.randint(4, 90, (1, length), generator=torch.Generator().manual_seed(0))
    before = peak_mib()
    with torch.no_grad():
        model(ids)
    return {"forward_peak_growth_mib": round(peak_mib() - before, 1), "attention": model.config._attn_implementation}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="4096,8192,16384")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per measurement (median)")
    parser.add_argument("--output", default=str(Path(__file__).with_name("memory_result.json")))
    parser.add_argument("--measure", nargs=4, metavar=("FOLDER", "KIND", "VARIANT", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        folder, kind, variant, length = args.measure
        print(json.dumps(measure(folder, kind, variant, int(length))))
        return
    lengths = [int(n) for n in args.lengths.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for family, (kind, extension) in FAMILIES.items():
            folder = Path(tmp) / kind
            build(kind, folder)
            for length in lengths:
                row = {"family": family, "length": length, "ctx-hf arguments": extension}
                for variant in ("transformers", "ctx-hf"):
                    growths = []
                    for _ in range(args.repeats):
                        done = subprocess.run([sys.executable, __file__, "--measure", str(folder), kind, variant,
                                               str(length)], capture_output=True, text=True, check=True)
                        result = json.loads(done.stdout.strip().splitlines()[-1])
                        growths.append(result["forward_peak_growth_mib"])
                        row["attention"] = result["attention"]
                    row[variant] = statistics.median(growths)
                    row[f"{variant} runs"] = growths
                row["ctx-hf / transformers"] = round(row["ctx-hf"] / row["transformers"], 3)
                rows.append(row)
                print(json.dumps(row), flush=True)
    Path(args.output).write_text(json.dumps({"rows": rows, "note": "peak RSS growth (MiB) during one forward "
                                             "pass, batch 1, float32, CPU; median of fresh processes"}, indent=2) + "\n")


if __name__ == "__main__":
    main()
