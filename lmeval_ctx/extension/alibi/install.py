"""Install ALiBi slope methods, and the memory-efficient ALiBi attention, on a built BLOOM, MPT or Falcon model.

What each architecture needs is its entry in :data:`lmeval_ctx.extension.architectures.ALIBI_ARCHITECTURES`.
transformers computes ALiBi slopes and causal masks in module-level functions, so a
per-model change has three parts:

1. one dispatcher per architecture replacing the function that computes the slopes
   (BLOOM ``_get_alibi_slopes``, used by both its masked path and its no-mask fast path;
   MPT ``build_mpt_alibi_tensor``; Falcon ``build_alibi_tensor``), and one replacing the
   module's ``create_causal_mask``. Each reads the running call of
   :mod:`lmeval_ctx.extension.alibi.scaling` (its slopes, its attention choice); outside a
   scaled model's forward pass there is none and they call the original functions
   unchanged, so every other model in the process is untouched;
2. a wrapper around the scaled model's own ``forward`` that runs each call inside
   :func:`lmeval_ctx.extension.alibi.scaling.running`, with the model's
   :class:`~lmeval_ctx.extension.alibi.scaling.AlibiSetting` and the call's key length;
3. unless ``attention="transformers"``, the forward of each of the model's own attention
   modules replaced by :mod:`lmeval_ctx.extension.alibi.attention`'s (set on the module instances),
   and its causal mask asked for in row blocks instead of a dense ``length x length`` tensor.

The slope maths is :mod:`lmeval_ctx.methods.alibi`. ``lm_infinite`` (LM-Infinite, Han et al.
2023, arXiv:2308.16137) keeps the slopes and is applied by the blocked attention, so it
needs ``attention`` other than ``transformers``.
"""

from __future__ import annotations

import functools
import importlib
import types
from typing import Callable

import torch

from lmeval_ctx.extension.alibi import attention as alibi_attention
from lmeval_ctx.extension.alibi.masks import row_block_mask_config
from lmeval_ctx.extension.alibi.scaling import AlibiScaling, AlibiSetting, running, running_call
from lmeval_ctx.extension.architectures import ALIBI_ARCHITECTURES, AlibiArchitecture, alibi_architecture
from lmeval_ctx.methods.catalog import ALIBI_ATTENTION_METHODS

# Attribute set on a patched base model; holds its AlibiSetting.
_SETTING_ATTR = "_lmeval_ctx_alibi"


# ----------------------------------------------------------------------------- slope dispatchers (named in the table)
def bloom_slope_dispatcher(original: Callable) -> Callable:
    def _get_alibi_slopes(num_heads: int, device: torch.device) -> torch.Tensor:
        call = running_call()
        if call is None or not call.scaled:
            return original(num_heads, device)
        return torch.tensor(call.slopes, dtype=torch.float32, device=device)

    return _get_alibi_slopes


def mpt_slope_dispatcher(original: Callable) -> Callable:
    def build_mpt_alibi_tensor(num_heads, sequence_length, alibi_bias_max=8, device=None):
        call = running_call()
        if call is None:
            return original(num_heads, sequence_length, alibi_bias_max, device)
        # MPT builds its bias for config.max_seq_len positions and slices the last key_length;
        # cover every key of this call (heads x keys: linear in the length)
        sequence_length = max(sequence_length, call.key_length)
        if not call.scaled:
            return original(num_heads, sequence_length, alibi_bias_max, device)
        distance = torch.arange(1 - sequence_length, 1, dtype=torch.int32, device=device).view(1, 1, sequence_length)
        # (heads, 1, keys), as MPT's own builder returns
        return distance * torch.tensor(call.slopes, dtype=torch.float32, device=device).view(num_heads, 1, 1)

    return build_mpt_alibi_tensor


def falcon_slope_dispatcher(original: Callable) -> Callable:
    def build_alibi_tensor(attention_mask: torch.Tensor, num_heads: int, dtype: torch.dtype) -> torch.Tensor | None:
        call = running_call()
        if call is not None and call.blocked:
            # The blocked attention forms the bias per key itself (falcon_attention_forward); FalconModel
            # would fold this one into a dense heads x queries x keys mask, and with None it folds none.
            return None
        if call is None or not call.scaled:
            return original(attention_mask, num_heads, dtype)
        batch_size, seq_length = attention_mask.shape
        slopes = torch.tensor(call.slopes, dtype=torch.float32, device=attention_mask.device)
        positions = (attention_mask.cumsum(dim=-1) - 1) * attention_mask
        return alibi_attention.falcon_alibi(slopes, positions).reshape(batch_size * num_heads, 1, seq_length).to(dtype)

    return build_alibi_tensor


def _mask_dispatcher(original: Callable) -> Callable:
    def create_causal_mask(config, *args, **kwargs):
        call = running_call()
        if call is None or not call.blocked:
            return original(config, *args, **kwargs)
        # transformers' own mask logic (offsets, padding, cache sizes), delivered in row blocks
        return original(row_block_mask_config(config), *args, **kwargs)

    return create_causal_mask


def _replace_module_function(module, name: str, factory: Callable) -> None:
    current = getattr(module, name)
    if getattr(current, "_lmeval_ctx_dispatcher", False):
        return
    dispatcher = factory(current)
    dispatcher._lmeval_ctx_dispatcher = True
    dispatcher.__wrapped__ = current
    setattr(module, name, dispatcher)


def _install_dispatchers(arch: AlibiArchitecture) -> None:
    module = importlib.import_module(arch.module)
    _replace_module_function(module, arch.slope_function, globals()[arch.slope_dispatcher])
    _replace_module_function(module, "create_causal_mask", _mask_dispatcher)


# ----------------------------------------------------------------------------- the model
def _attention_modules(model: torch.nn.Module, arch: AlibiArchitecture) -> list[torch.nn.Module]:
    attention_class = getattr(importlib.import_module(arch.module), arch.attention_class)
    modules = [module for module in model.modules() if isinstance(module, attention_class)]
    if not modules:
        raise ValueError(f"Found no {arch.attention_class} module in this {arch.model_type} model to install "
                         "the ALiBi attention on.")
    return modules


def _set_attention_forwards(modules: list[torch.nn.Module], arch: AlibiArchitecture, attention: str) -> None:
    """Give the attention modules the blocked forward, or take it back (``transformers``)."""
    forward = getattr(alibi_attention, arch.attention_forward)
    for module in modules:
        if attention == "transformers":
            module.__dict__.pop("forward", None)  # back to the class's own forward
        else:
            module.forward = types.MethodType(forward, module)


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


def _wrap_forward(base: torch.nn.Module) -> None:
    """Run each call of ``base`` (the model's base model) inside :func:`running`, with the setting
    on ``base`` at call time (a later install replaces the setting, not the wrapper)."""
    inner_forward = base.forward

    @functools.wraps(inner_forward)
    def forward(*args, **kwargs):
        with running(getattr(base, _SETTING_ATTR), _key_length(args, kwargs)):
            return inner_forward(*args, **kwargs)

    base.forward = forward


def _architecture(model: torch.nn.Module) -> AlibiArchitecture:
    arch = alibi_architecture(model.config)
    if arch is None:
        model_type = getattr(model.config, "model_type", None)
        raise ValueError(
            f"No ALiBi slope patch for model_type={model_type!r}"
            + (" with alibi=False (this Falcon uses RoPE)" if model_type in ALIBI_ARCHITECTURES else "")
            + f"; supported: {', '.join(ALIBI_ARCHITECTURES)}."
        )
    return arch


def install_alibi_scaling(model: torch.nn.Module, scaling: AlibiScaling, attention: str | None = "auto") -> None:
    """Make ``model`` (a BLOOM, MPT or Falcon-ALiBi causal LM) use ``scaling``'s slopes and ``attention``.

    ``attention``: the engine (:mod:`lmeval_ctx.extension.flex`): ``auto`` (default) FlexAttention
    where it runs (:mod:`lmeval_ctx.extension.alibi.flex_attention`), else a block of queries at a
    time in memory linear in the length; ``flex`` FlexAttention or an error saying why not;
    ``blocks`` (also read from the old ``blocked``) always the blocks; ``transformers``
    transformers' own attention (``heads x length x length`` tensors). See
    :mod:`lmeval_ctx.extension.alibi.attention`.

    Calling it again on the same model replaces both (a sweep re-applies methods to one
    loaded model); ``method="none"`` restores the model's own slopes.
    """
    arch = _architecture(model)
    attention = alibi_attention.validate_attention_choice(attention)
    if scaling.method in ALIBI_ATTENTION_METHODS and attention == "transformers":
        raise ValueError(
            f"scaling={scaling.method} hides keys and caps the ALiBi distance inside ctx-hf's ALiBi attention, "
            "which attention_engine='transformers' turns off (transformers' own attention adds the plain bias). "
            "Use attention_engine=auto (the default), flex or blocks.")
    modules = _attention_modules(model, arch)
    _install_dispatchers(arch)
    base = model.base_model
    already_wrapped = hasattr(base, _SETTING_ATTR)
    setattr(base, _SETTING_ATTR, AlibiSetting(scaling, attention, tuple(arch.base_slopes(model.config))))
    _set_attention_forwards(modules, arch, attention)
    if not already_wrapped:
        _wrap_forward(base)


def slopes_in_use(model: torch.nn.Module, key_length: int) -> list[float]:
    """The per-head slopes ``model`` applies at ``key_length`` keys (for logs and checks)."""
    base = _architecture(model).base_slopes(model.config)
    setting = getattr(model.base_model, _SETTING_ATTR, None)
    return base if setting is None else setting.scaling.slopes(base, key_length)
