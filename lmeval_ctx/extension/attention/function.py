"""The transformers attention function of the attention-level methods and log-n scaling on RoPE
models, and the engine each call runs.

transformers calls :func:`method_attention` (installed by :mod:`lmeval_ctx.extension.attention.patch`)
with queries and keys already rotated at their true positions. It applies log-n scaling, sends
inputs the method leaves unchanged (and layers with no setting) to transformers' SDPA function
with the same mask, and the rest to the engine the model's ``attention_engine`` chooses
(:mod:`lmeval_ctx.extension.flex`): FlexAttention
(:func:`lmeval_ctx.extension.attention.flex_kernel.flex_method_attention`, one fused kernel) or
the block path (:func:`lmeval_ctx.extension.attention.kernel.moved_attention`). Both compute the
same attention; what it is: :mod:`lmeval_ctx.extension.attention.kernel`.
"""

from __future__ import annotations

import torch

from lmeval_ctx.extension.attention.flex_kernel import flex_declines, flex_method_attention
from lmeval_ctx.extension.attention.kernel import SETTING_ATTRIBUTE, AttentionSetting, logn_scale, moved_attention
from lmeval_ctx.extension.flex import resolve_engine, rope_prefers_blocks
from lmeval_ctx.methods.attention import ATTENTION_METHOD_REGISTRY


def _sdpa(module, query, key, value, attention_mask, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _unchanged(setting: AttentionSetting, keys: int, query_positions: torch.Tensor) -> bool:
    """The method leaves every pair of this call as it is (or there is no method: log-n alone)."""
    method = ATTENTION_METHOD_REGISTRY.get(setting.method) if setting.method else None
    if method is None or keys - 1 <= method.unchanged_up_to(setting.options, setting.original_length):
        return True
    # a real key's position is in [0, its query's]
    return (method.unchanged_below is not None
            and int(query_positions.max()) < method.unchanged_below(setting.options, setting.original_length))


def call_engine(setting: AttentionSetting, query: torch.Tensor, attention_mask) -> str:
    """``flex`` or ``blocks`` for this call: the model's ``attention_engine`` where FlexAttention runs
    here and takes the call's mask (auto: on CPU the block path, measured faster there,
    :data:`lmeval_ctx.extension.flex.ROPE_AUTO_FLEX_ON_CPU`); ``attention_engine=flex`` where it
    cannot is an error."""
    if rope_prefers_blocks(setting.engine, query.device):
        return "blocks"
    engine = resolve_engine(setting.engine, query.device)
    if engine != "flex":
        return engine
    declined = flex_declines(attention_mask)
    if declined is None:
        return "flex"
    if setting.engine == "flex":
        raise ValueError(f"attention_engine=flex cannot run this call: {declined}. "
                         "Use attention_engine=auto, which runs the block path for it.")
    return "blocks"


def method_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                     **kwargs):
    """transformers attention function (see the module docstring); returns ``(output, None)``."""
    setting: AttentionSetting | None = getattr(module, SETTING_ATTRIBUTE, None)
    if setting is None:
        return _sdpa(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    position_ids = kwargs.get("position_ids")
    if position_ids is None:
        raise ValueError(f"{type(module).__name__} was called without position_ids; the attention-level methods "
                         "need the query positions transformers passes to the attention function.")
    query_positions = position_ids.to(query.device).expand(query.shape[0], query.shape[2])
    if setting.logn:
        query = query * logn_scale(query_positions, setting.original_length)[:, None, :, None].to(query.dtype)
    if _unchanged(setting, key.shape[2], query_positions):
        return _sdpa(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    if dropout:
        raise ValueError("the attention-level methods are for evaluation; this model is in training mode with dropout.")
    if not getattr(module, "is_causal", True):
        raise ValueError(f"{type(module).__name__} is not causal; the attention-level methods are for decoders.")
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    attend = (flex_method_attention if call_engine(setting, query, attention_mask) == "flex"
              else moved_attention)
    output = attend(setting, query, key, value, attention_mask, query_positions, scaling)
    return output.to(query.dtype).transpose(1, 2).contiguous(), None
