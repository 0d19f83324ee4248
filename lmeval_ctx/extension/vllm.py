"""Translate ``ctx-hf``'s context-extension arguments into vLLM engine arguments.

vLLM reads RoPE scaling from the Hugging Face config, overridable with
``hf_overrides={"rope_parameters": {...}}`` (its ``--rope-scaling`` flag is gone),
and the window from ``max_model_len``. The same resolution and validation as
``ctx-hf`` produce the ``rope_parameters``; nothing here imports vLLM.

- ``pi``: ``rope_type: linear``; ``yarn``: ``rope_type: yarn`` with its options, ``attention_factor``
  included (vLLM 0.32 reads it as transformers does, the whole attention scale:
  ``YaRNScalingRotaryEmbedding``); ``ntk_by_parts``: YaRN with ``attention_factor=1``;
  ``ntk``: the default rope type with ``rope_theta`` scaled by ``s^(d/(d-2))``;
  ``dynamic_ntk`` is refused (vLLM's ``dynamic`` is one base for every length, see
  :func:`vllm_engine_args`).
- ``llama3``: ``rope_type: llama3`` with its options; ``rope_theta=``: the base override,
  written into ``rope_parameters`` (with ``scaling=none`` too); ``longrope``: its factor lists,
  with transformers' attention scale as vLLM's ``short_mscale``/``long_mscale``
  (:func:`vllm_longrope_parameters`).
- per-layer-type models (Gemma 3): only the layer types ``ctx-hf`` scales are
  scaled (``scale_layer_types`` as for ``ctx-hf``).
- ALiBi models (BLOOM, Falcon-ALiBi): ``pi`` and ``ntk`` slopes, carried into vLLM by
  :mod:`lmeval_ctx.extension.vllm_alibi`.
- The window: ``max_model_len`` (the window + 1, see :func:`vllm_engine_args`), and the config's ``model_max_length`` set to it so vLLM accepts a
  window above the trained length for every rope type (see :func:`vllm_engine_args`).
- Refused with a clear error: the attention-level methods and ``logn`` (they replace
  transformers' attention function, which vLLM does not run).
"""

from __future__ import annotations

import copy
import math

from lmeval_ctx.common.checkpoint import text_config
from lmeval_ctx.common.logs import plugin_logger
from lmeval_ctx.extension.lifecycle import extend
from lmeval_ctx.extension.request import EXTENSION_ARGS as CTX_HF_EXTENSION_ARGS
from lmeval_ctx.extension.request import ContextExtension
from lmeval_ctx.extension.vllm_alibi import SLOPES_FIELD, alibi_overrides
from lmeval_ctx.extension.window import lm_eval_window
from lmeval_ctx.methods.catalog import ATTENTION_METHODS

logger = plugin_logger(__name__)


def _parameter_sets(params: dict) -> list[dict]:
    """The RoPE parameter dicts in ``rope_parameters``: one per layer type (Gemma 3:
    ``{layer_type: params}``), or the one dict."""
    nested = params and all(isinstance(v, dict) for v in params.values())
    return list(params.values()) if nested else [params]


def vllm_longrope_parameters(params: dict, max_position_embeddings: int) -> dict:
    """transformers' LongRoPE ``rope_parameters`` (Ding et al. 2024, arXiv:2402.13753) as vLLM reads them.

    transformers scales attention by ``attention_factor``, by default ``sqrt(1 + ln s / ln L)``
    with ``s`` the ``factor`` (else ``max_position_embeddings / L``); vLLM ignores both keys and
    derives its scale from ``max_position_embeddings / L``, a field ctx-vllm may raise to cover the
    window (vllm/model_executor/layers/rotary_embedding/phi3_long_rope_scaled_rope.py). So the
    scale transformers uses goes to vLLM as ``short_mscale`` and ``long_mscale``, which it takes as
    given. Per-layer-type parameters are translated per layer type.

    One difference remains (:func:`_warn_longrope_factors`): vLLM's choice of the long factors."""
    if params and all(isinstance(v, dict) for v in params.values()):
        return {layer_type: vllm_longrope_parameters(v, max_position_embeddings) for layer_type, v in params.items()}
    if params.get("rope_type") != "longrope":
        return params
    original = params["original_max_position_embeddings"]
    factor = params.get("factor") or max_position_embeddings / original
    scale = params.get("attention_factor")
    if scale is None:
        scale = math.sqrt(1 + math.log(factor) / math.log(original)) if factor > 1 else 1.0
    translated = {k: v for k, v in params.items() if k != "attention_factor"}
    translated.setdefault("short_mscale", float(scale))
    translated.setdefault("long_mscale", float(scale))
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
    cfg = text_config(edited)
    if ext.family == "rope" and ext.method == "dynamic_ntk":
        # vllm/model_executor/layers/rotary_embedding/dynamic_ntk_scaling_rope.py: one base for every
        # length, base * (s * max_position / max_trained - (s - 1))^(d/(d-2)), which is the unscaled
        # base when both are the trained length, and a cos/sin table of max_position rows only
        raise ValueError(
            "scaling=dynamic_ntk is not possible in ctx-vllm: vLLM's 'dynamic' rotary embedding computes one base "
            "for every length (the unscaled one at the trained length) and a table of the trained length's "
            "positions, not transformers' per-length dynamic NTK. Use scaling=ntk (a fixed NTK base) or run "
            "dynamic_ntk with --model ctx-hf.")
    if ext.attention_level:
        what = "logn=true" if ext.method not in ATTENTION_METHODS else f"scaling={ext.method}"
        raise ValueError(f"{what} changes the attention computation, which ctx-vllm cannot reach (vLLM runs its own "
                         "attention kernels). Run it with --model ctx-hf.")
    overrides = copy.deepcopy(hf_overrides) if hf_overrides else {}
    if not isinstance(overrides, dict):
        raise ValueError(f"hf_overrides must be a dict of config fields; got {type(hf_overrides).__name__}.")
    engine: dict = {}
    if ext.family == "alibi" and ext.method != "none":
        _refuse_clash(overrides, {"architectures", SLOPES_FIELD}, ext.method)
        overrides.update(alibi_overrides(ext, config))
    elif ext.method != "none" or "rope_theta" in ext.options:
        _refuse_clash(overrides, {"rope_parameters", "rope_scaling", "rope_theta", "max_position_embeddings"},
                      ext.method)
        overrides["rope_parameters"] = vllm_longrope_parameters(cfg.rope_parameters,
                                                                cfg.max_position_embeddings)
    # the window: max_length or the method's, else lm-eval's rule on the config as for ctx-hf (not vLLM's
    # own derived length, which is the same L but gets no extra position). A window of L tokens is scored
    # as L + 1 (lm-eval conditions the first on a prefix token; the last is only a target, as ctx-hf
    # counts it), and vLLM runs every prompt token, the last too: without the extra position lm-eval's
    # vLLM model cuts the conditioning token off a full window and fails reading its log-probabilities
    window = ext.max_length if ext.max_length is not None else lm_eval_window(cfg)
    engine["max_model_len"] = window + 1
    # vLLM refuses a max_model_len above the length it derives from the config (the trained
    # length, times the factor for some rope types only, capped by the tokenizer's) unless the
    # config's model_max_length allows it: state the window there rather than setting
    # VLLM_ALLOW_LONG_MAX_MODEL_LEN for the whole process (vllm/config/model.py,
    # _get_and_verify_max_len). model_max_length is read for nothing else.
    overrides.setdefault("model_max_length", engine["max_model_len"])
    _cover_the_window(overrides, cfg, engine["max_model_len"])
    _warn_longrope_factors(cfg, engine["max_model_len"])
    if overrides:
        engine["hf_overrides"] = overrides
    return ext, engine


# vLLM's rotary embeddings whose cos/sin table has max_position_embeddings rows (default, llama3, and
# longrope, whose scale is then passed explicitly: vllm_longrope_parameters) or that many times the
# factor (linear): a longer window needs a longer table, which changes no frequency
_TABLE_SIZED_BY_MAX_POSITION = {"default", "llama3", "linear", "longrope"}


def _cover_the_window(overrides: dict, cfg, positions: int) -> None:
    """``max_position_embeddings`` raised to ``positions`` where vLLM sizes its rotary table by it.

    vLLM looks each position up in a table of ``max_position_embeddings`` rows (vllm/model_executor/
    layers/rotary_embedding/base.py), so without this a window past the trained length fails there
    (ntk, rope_theta, llama3, none with a longer max_length). YaRN's table is sized by its original
    length times the factor: left alone. LongRoPE's scale would follow the field, so it is passed as
    ``short_mscale``/``long_mscale`` (:func:`vllm_longrope_parameters`)."""
    params = overrides.get("rope_parameters", getattr(cfg, "rope_parameters", None)) or {}
    types = {each.get("rope_type", "default") for each in _parameter_sets(params)}
    trained = getattr(cfg, "max_position_embeddings", None)
    if trained is not None and trained < positions and types <= _TABLE_SIZED_BY_MAX_POSITION:
        overrides.setdefault("max_position_embeddings", positions)


def _warn_longrope_factors(cfg, max_model_len: int) -> None:
    """Log that vLLM and ctx-hf choose LongRoPE's factors differently, where they do.

    Once its window ``max_model_len`` exceeds the trained length ``L``, vLLM applies the long factors
    to every input, so that a sequence crossing ``L`` keeps a valid KV cache
    (phi3_long_rope_scaled_rope.py, ``use_long_rope``); transformers, and so ``ctx-hf``, uses the short
    factors for an input of at most ``L`` tokens. Longer inputs get the long factors in both. A shipped ``longrope`` (Phi-3) and ``scaling=longrope`` alike."""
    for each in _parameter_sets(getattr(cfg, "rope_parameters", None) or {}):
        original = each.get("original_max_position_embeddings")
        if each.get("rope_type") == "longrope" and original and max_model_len > original:
            logger.warning("LongRoPE through vLLM: with a window (%d) above the trained %d tokens vLLM applies the "
                           "long factors to every input; transformers (and ctx-hf) use the short factors for inputs "
                           "of at most %d tokens, so only longer inputs score as in ctx-hf.", max_model_len, original,
                           original)
            return


def _refuse_clash(overrides: dict, fields: set, method: str) -> None:
    clash = fields & set(overrides)
    if clash:
        raise ValueError(f"hf_overrides sets {', '.join(sorted(clash))} while scaling={method} sets them: pass one "
                         "or the other.")
