"""GPU check of ctx-hf's ALiBi attention: blocked (and flash-attn, when installed) against transformers.

For BLOOM, MPT and Falcon-ALiBi (small random models with 16 heads, built here), in
float32 and bfloat16, at a few lengths: the max abs logit difference between the
blocked attention and transformers' own (BLOOM, MPT: eager; Falcon: SDPA over a dense
mask), and the peak CUDA memory of one forward pass of each. With flash-attn installed,
``alibi_attention=auto`` (flash-attn's ALiBi kernel in bfloat16) is checked too.
transformers' attention is skipped where its ``heads x L x L`` scores would not fit.

Needs only torch, transformers and this repository's ``lmeval_ctx`` (no lm-eval):

    PYTHONPATH=. python benchmarks/alibi_attention_gpu_check.py [--lengths 1024,4096,16384]

Expected: float32 differences around 1e-5 or below; bfloat16 ones of the order of
bfloat16's resolution (1e-2) as both sides round, larger for BLOOM at long lengths, whose
eager path rounds ``slope x absolute position`` to bfloat16 (the blocked path shifts the
bias to small values first); the blocked peak memory growing about linearly with the
length, transformers' quadratically.
"""

from __future__ import annotations

import argparse
import json

import torch
import transformers

from lmeval_ctx.extension.alibi.install import install_alibi_scaling
from lmeval_ctx.extension.alibi.scaling import AlibiScaling

HEADS = 16
TRAINED = 1024


def config(kind: str):
    common = dict(vocab_size=1000, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    if kind == "bloom":
        return transformers.BloomConfig(hidden_size=1024, n_layer=2, n_head=HEADS, **common)
    if kind == "mpt":
        return transformers.MptConfig(d_model=1024, n_layers=2, n_heads=HEADS, max_seq_len=TRAINED, **common)
    return transformers.FalconConfig(hidden_size=1024, num_hidden_layers=2, num_attention_heads=HEADS, alibi=True,
                                     new_decoder_architecture=False, multi_query=False,
                                     max_position_embeddings=TRAINED, **common)


def build(kind: str, dtype: torch.dtype, attention: str, state=None):
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config(kind)).to(dtype=dtype, device="cuda").eval()
    if state is not None:
        model.load_state_dict(state)
    install_alibi_scaling(model, AlibiScaling("ntk", 4.0, TRAINED), attention=attention)
    return model


@torch.no_grad()
def forward(model, ids):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    logits = model(ids, attention_mask=torch.ones_like(ids)).logits.float()
    torch.cuda.synchronize()
    return logits, (torch.cuda.max_memory_allocated() - before) / 2**20


def transformers_fits(length: int) -> bool:
    free, _ = torch.cuda.mem_get_info()
    return 5 * HEADS * length * length * 4 < 0.8 * free  # eager keeps a few float32-sized score tensors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="1024,4096,16384")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("No CUDA device: this check is for a GPU machine.")
    try:
        import flash_attn  # noqa: F401

        variants = ("blocked", "auto")
    except ImportError:
        variants = ("blocked",)
    print(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                      "transformers": transformers.__version__, "flash_attn": len(variants) > 1}))
    for kind in ("bloom", "mpt", "falcon"):
        for dtype in (torch.float32, torch.bfloat16):
            reference = build(kind, dtype, "transformers")
            state = reference.state_dict()
            ours = {variant: build(kind, dtype, variant, state) for variant in variants}
            for length in (int(n) for n in args.lengths.split(",")):
                ids = torch.randint(4, 1000, (1, length), device="cuda")
                row = {"model": kind, "dtype": str(dtype).replace("torch.", ""), "length": length}
                expected = None
                if transformers_fits(length):
                    expected, row["transformers peak MiB"] = forward(reference, ids)
                else:
                    row["transformers"] = "skipped: its scores would not fit"
                for variant, model in ours.items():
                    if variant == "auto" and dtype == torch.float32:
                        continue  # flash-attn runs half precision only; auto is the blocked path here
                    logits, row[f"{variant} peak MiB"] = forward(model, ids)
                    if expected is not None:
                        row[f"{variant} max abs diff"] = float((logits - expected).abs().max())
                    del logits
                del expected
                torch.cuda.empty_cache()
                print(json.dumps(row), flush=True)
            del reference, ours
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
