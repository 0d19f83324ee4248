"""Translate ``ctx-hf``'s context-extension arguments into vLLM engine arguments.

vLLM reads RoPE scaling from the Hugging Face config, overridable with
``hf_overrides={"rope_parameters": {...}}`` (its ``--rope-scaling`` flag is gone),
and the window from ``max_model_len``. The same resolution and validation as
``ctx-hf`` produce the ``rope_parameters``; nothing here imports vLLM.

- ``pi``: ``rope_type: linear``; ``yarn``: ``rope_type: yarn`` with its options, an explicit
  ``attention_factor`` translated (see :func:`vllm_yarn_parameters`); ``ntk_by_parts``: YaRN
  with ``attention_factor=1`` translated the same way;
  ``dynamic_ntk``: ``rope_type: dynamic`` (``max_position_embeddings`` set to the
  original length, which vLLM reads as such); ``ntk``: the default rope type with
  ``rope_theta`` scaled by ``s^(d/(d-2))``.
- ``llama3``: ``rope_type: llama3`` with its options; ``rope_theta=``: the base override,
  written into ``rope_parameters`` (with ``scaling=none`` too).
- per-layer-type models (Gemma 3): only the layer types ``ctx-hf`` scales are
  scaled (``scale_layer_types`` as for ``ctx-hf``).
- Refused with a clear error: ALiBi models (vLLM has no slope override to carry
  NTK-ALiBi); the attention-level methods and ``logn`` (they replace transformers'
  attention function, which vLLM does not run).
"""

from __future__ import annotations

import copy
import math

from lmeval_ctx.common.checkpoint import text_config
from lmeval_ctx.extension.lifecycle import extend
from lmeval_ctx.extension.request import EXTENSION_ARGS as CTX_HF_EXTENSION_ARGS
from lmeval_ctx.extension.request import ContextExtension
from lmeval_ctx.methods.catalog import ATTENTION_METHODS


def vllm_yarn_parameters(params: dict) -> dict:
    """transformers' YaRN ``rope_parameters`` as vLLM reads them.

    transformers takes ``attention_factor`` as the whole attention scale (``0.1 ln s + 1`` when
    absent); vLLM ignores that key and multiplies its own ``0.1 ln s + 1`` by ``attn_factor``
    (default 1). So ``attention_factor = a`` becomes ``attn_factor = a / (0.1 ln s + 1)``; passed
    through untranslated, vLLM would silently keep its default temperature. Per-layer-type
    parameters (Gemma 3: ``{layer_type: params}``) are translated per layer type."""
    if params and all(isinstance(v, dict) for v in params.values()):
        return {layer_type: vllm_yarn_parameters(v) for layer_type, v in params.items()}
    if params.get("rope_type") != "yarn" or params.get("attention_factor") is None:
        return params
    factor = float(params["factor"])
    vllm_own_scale = 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0
    translated = {k: v for k, v in params.items() if k != "attention_factor"}
    translated["attn_factor"] = float(params["attention_factor"]) / vllm_own_scale
    return translated


# ctx-hf's extension arguments ctx-vllm takes; the window is vLLM's max_model_len.
EXTENSION_ARGS = tuple(name for name in CTX_HF_EXTENSION_ARGS if name != "max_length")


def vllm_engine_args(config, max_model_len: int | None = None, hf_overrides: dict | None = None,
                     **request) -> tuple[ContextExtension, dict]:
    """``(extension, {"max_model_len": ..., "hf_overrides": {...}})`` for vLLM's ``LLM(...)``.

    ``request`` takes ``ctx-hf``'s names (``scaling``, ``factor``, ...). ``hf_overrides``
    the user passed are kept; one that already sets the RoPE fields conflicts with a method.
    The method is resolved and written into a copy of ``config`` by the same life cycle as
    ``ctx-hf`` (:func:`lmeval_ctx.extension.lifecycle.extend`); the written fields become the overrides.
    """
    unknown = set(request) - set(EXTENSION_ARGS)
    if unknown:
        raise TypeError(f"Unknown context-extension argument(s): {', '.join(sorted(unknown))}.")
    edited = copy.deepcopy(config)
    ext = extend(edited, {**request, "max_length": max_model_len}).extension
    if ext.family == "alibi" and ext.method != "none":
        raise ValueError(
            f"ctx-vllm applies RoPE methods only; {ext.model_type} uses ALiBi, whose slopes vLLM cannot be told to "
            "change. Run ALiBi methods with --model ctx-hf."
        )
    if ext.attention_level:
        what = "logn=true" if ext.method not in ATTENTION_METHODS else f"scaling={ext.method}"
        raise ValueError(f"{what} changes the attention computation, which ctx-vllm cannot reach (vLLM runs its own "
                         "attention kernels). Run it with --model ctx-hf.")
    overrides = copy.deepcopy(hf_overrides) if hf_overrides else {}
    if not isinstance(overrides, dict):
        raise ValueError(f"hf_overrides must be a dict of config fields; got {type(hf_overrides).__name__}.")
    engine: dict = {}
    if ext.method != "none" or "rope_theta" in ext.options:
        clash = {"rope_parameters", "rope_scaling", "rope_theta", "max_position_embeddings"} & set(overrides)
        if clash:
            raise ValueError(f"hf_overrides sets {', '.join(sorted(clash))} while scaling={ext.method} sets the "
                             "RoPE parameters: pass one or the other.")
        cfg, original = text_config(edited), text_config(config)
        overrides["rope_parameters"] = vllm_yarn_parameters(cfg.rope_parameters)
        if cfg.max_position_embeddings != original.max_position_embeddings:
            overrides["max_position_embeddings"] = cfg.max_position_embeddings
    if overrides:
        engine["hf_overrides"] = overrides
    if ext.max_length is not None:
        engine["max_model_len"] = ext.max_length
    return ext, engine
