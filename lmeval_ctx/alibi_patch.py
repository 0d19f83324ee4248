"""Install ALiBi slope methods on a built BLOOM, MPT or Falcon model.

transformers computes ALiBi slopes in module-level functions, so a per-model
change needs two parts:

1. one dispatcher per architecture, replacing the function that computes the
   slopes (BLOOM ``_get_alibi_slopes``, used by both its masked path and its
   no-mask fast path; MPT ``build_mpt_alibi_tensor``; Falcon ``build_alibi_tensor``).
   Outside a scaled model's forward pass the dispatcher calls the original
   function unchanged, so every other model in the process is untouched;
2. a wrapper around the scaled model's own ``forward`` that, for the duration of
   the call, publishes its slope method and the current key length through a
   context variable.

The slope maths is :mod:`lmeval_ctx.methods.alibi`.
"""

from __future__ import annotations

import contextvars
import functools
import importlib
from dataclasses import dataclass
from typing import Callable

import torch

from lmeval_ctx.methods.alibi import ALIBI_METHODS, alibi_slopes, mpt_alibi_slopes


@dataclass(frozen=True)
class AlibiScaling:
    """A slope method bound to its factor and the model's trained length."""

    method: str
    factor: float
    original_length: int

    def slopes(self, base: list[float], current_length: int) -> list[float]:
        return ALIBI_METHODS[self.method](base, self.factor, self.original_length, current_length)


@dataclass(frozen=True)
class _ActiveCall:
    scaling: AlibiScaling
    key_length: int  # keys visible to the last query: cached + new tokens


_ACTIVE: contextvars.ContextVar[_ActiveCall | None] = contextvars.ContextVar("lmeval_ctx_alibi", default=None)

# Attribute set on a patched base model; holds its AlibiScaling.
_SCALING_ATTR = "_lmeval_ctx_alibi_scaling"


def _bloom_dispatcher(original: Callable) -> Callable:
    def _get_alibi_slopes(num_heads: int, device: torch.device) -> torch.Tensor:
        active = _ACTIVE.get()
        if active is None:
            return original(num_heads, device)
        slopes = active.scaling.slopes(alibi_slopes(num_heads), active.key_length)
        return torch.tensor(slopes, dtype=torch.float32, device=device)

    return _get_alibi_slopes


def _mpt_dispatcher(original: Callable) -> Callable:
    def build_mpt_alibi_tensor(num_heads, sequence_length, alibi_bias_max=8, device=None):
        active = _ACTIVE.get()
        if active is None:
            return original(num_heads, sequence_length, alibi_bias_max, device)
        slopes = active.scaling.slopes(mpt_alibi_slopes(num_heads, alibi_bias_max), active.key_length)
        distance = torch.arange(1 - sequence_length, 1, dtype=torch.int32, device=device).view(1, 1, sequence_length)
        # (heads, 1, keys), as MPT's own builder returns
        return distance * torch.tensor(slopes, dtype=torch.float32, device=device).view(num_heads, 1, 1)

    return build_mpt_alibi_tensor


def _falcon_dispatcher(original: Callable) -> Callable:
    def build_alibi_tensor(attention_mask: torch.Tensor, num_heads: int, dtype: torch.dtype) -> torch.Tensor:
        active = _ACTIVE.get()
        if active is None:
            return original(attention_mask, num_heads, dtype)
        batch_size, seq_length = attention_mask.shape
        slopes = active.scaling.slopes(alibi_slopes(num_heads), active.key_length)
        slopes = torch.tensor(slopes, dtype=torch.float32, device=attention_mask.device)
        positions = ((attention_mask.cumsum(dim=-1) - 1) * attention_mask)[:, None, :]
        # Falcon multiplies bfloat16 slopes; keep that rounding so scaling=none-like slopes match it exactly.
        alibi = slopes[..., None].bfloat16() * positions  # (batch, heads, keys)
        return alibi.reshape(batch_size * num_heads, 1, seq_length).to(dtype)

    return build_alibi_tensor


# model_type -> (module, function holding the slopes, dispatcher factory)
_ARCHITECTURES: dict[str, tuple[str, str, Callable]] = {
    "bloom": ("transformers.models.bloom.modeling_bloom", "_get_alibi_slopes", _bloom_dispatcher),
    "mpt": ("transformers.models.mpt.modeling_mpt", "build_mpt_alibi_tensor", _mpt_dispatcher),
    "falcon": ("transformers.models.falcon.modeling_falcon", "build_alibi_tensor", _falcon_dispatcher),
}


def _install_dispatcher(model_type: str) -> None:
    module_name, function_name, factory = _ARCHITECTURES[model_type]
    module = importlib.import_module(module_name)
    current = getattr(module, function_name)
    if getattr(current, "_lmeval_ctx_dispatcher", False):
        return
    dispatcher = factory(current)
    dispatcher._lmeval_ctx_dispatcher = True
    dispatcher.__wrapped__ = current
    setattr(module, function_name, dispatcher)


def _key_length(args: tuple, kwargs: dict) -> int:
    """Keys the last query attends to: the 2-D mask's width, else new tokens + cached ones."""
    mask = kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        return int(mask.shape[-1])
    tokens = kwargs.get("input_ids", args[0] if args else None)
    if tokens is None:
        tokens = kwargs.get("inputs_embeds")
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    cached = cache.get_seq_length() if cache is not None and hasattr(cache, "get_seq_length") else 0
    return int(tokens.shape[1]) + int(cached)


def has_alibi_scaling(model: torch.nn.Module) -> bool:
    """Has :func:`install_alibi_scaling` been called on ``model``?"""
    return hasattr(model.base_model, _SCALING_ATTR)


def install_alibi_scaling(model: torch.nn.Module, scaling: AlibiScaling) -> None:
    """Make ``model`` (a BLOOM, MPT or Falcon-ALiBi causal LM) use ``scaling``'s slopes.

    Calling it again on the same model replaces the method (a sweep re-applies
    methods to one loaded model); ``method="none"`` restores the model's own slopes.
    """
    model_type = model.config.model_type
    if model_type not in _ARCHITECTURES:
        raise ValueError(f"No ALiBi slope patch for model_type={model_type!r}; supported: {', '.join(_ARCHITECTURES)}.")
    _install_dispatcher(model_type)
    base = model.base_model
    already_wrapped = hasattr(base, _SCALING_ATTR)
    setattr(base, _SCALING_ATTR, scaling)
    if already_wrapped:
        return
    inner_forward = base.forward

    @functools.wraps(inner_forward)
    def forward(*args, **kwargs):
        token = _ACTIVE.set(_ActiveCall(getattr(base, _SCALING_ATTR), _key_length(args, kwargs)))
        try:
            return inner_forward(*args, **kwargs)
        finally:
            _ACTIVE.reset(token)

    base.forward = forward


def slopes_in_use(model: torch.nn.Module, key_length: int) -> list[float]:
    """The per-head slopes ``model`` applies at ``key_length`` keys (for logs and checks)."""
    model_type = model.config.model_type
    num_heads = model.config.num_attention_heads if model_type != "mpt" else model.config.n_heads
    if model_type == "mpt":
        base = mpt_alibi_slopes(num_heads, model.config.attn_config.alibi_bias_max)
    else:
        base = alibi_slopes(num_heads)
    scaling = getattr(model.base_model, _SCALING_ATTR, None)
    return base if scaling is None else scaling.slopes(base, key_length)
