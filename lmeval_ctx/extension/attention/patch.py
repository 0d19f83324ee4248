"""Install the attention-level methods and log-n scaling on a built RoPE model, and remove them,
through transformers' attention-function registry.

transformers' RoPE models call ``ALL_ATTENTION_FUNCTIONS[config._attn_implementation]``
with queries and keys already rotated at their true positions. :func:`install` registers
one named implementation (:data:`IMPLEMENTATION`, the function
:func:`lmeval_ctx.extension.attention.function.method_attention`), sets the scaled model's own
``config._attn_implementation`` to it and hangs an
:class:`~lmeval_ctx.extension.attention.kernel.AttentionSetting` on that model's attention
modules, so another model in the process keeps its attention. :func:`remove` gives the model
its own implementation back. What the function computes: :mod:`lmeval_ctx.extension.attention.kernel`.

Layers whose attention spans at most the trained length (sliding windows ``<= L``, the rule of
:func:`lmeval_ctx.extension.layers.attention_kept_layer_types`) carry no setting and keep
transformers' SDPA function, with the same mask.
"""

from __future__ import annotations

import torch

from lmeval_ctx.extension.architectures import ATTENTION_ARCHITECTURES
from lmeval_ctx.extension.attention.function import method_attention
from lmeval_ctx.extension.attention.kernel import SETTING_ATTRIBUTE, AttentionSetting
from lmeval_ctx.methods.attention import ATTENTION_METHOD_REGISTRY

IMPLEMENTATION = "lmeval_ctx_attention"


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(IMPLEMENTATION, method_attention)
    AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)  # the masks SDPA gets


def attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's attention modules: those with a ``layer_idx``, a ``config`` and a ``scaling``."""
    return [m for m in model.modules()
            if isinstance(getattr(m, "layer_idx", None), int) and hasattr(m, "config") and hasattr(m, "scaling")]


def installed(model: torch.nn.Module) -> bool:
    return any(getattr(m, SETTING_ATTRIBUTE, None) is not None for m in attention_modules(model))


def remove(model: torch.nn.Module) -> None:
    """Give the model back its own attention implementation."""
    previous = None
    for module in attention_modules(model):
        setting = module.__dict__.pop(SETTING_ATTRIBUTE, None)
        if setting is not None:
            previous = setting.previous_implementation
    if previous is not None:
        model.config._attn_implementation = previous


def install(model: torch.nn.Module, extension, engine: str = "auto") -> dict:
    """Install ``extension``'s attention-level method and/or log-n scaling on ``model``; return the record.

    ``engine``: the validated ``attention_engine`` (auto, flex or blocks; each call resolves it,
    :func:`lmeval_ctx.extension.attention.function.call_engine`).

    Layers of the types ``extension.attention_kept_layer_types`` names (those whose attention never
    reaches beyond the trained length, :func:`lmeval_ctx.extension.layers.attention_kept_layer_types`)
    keep their attention."""
    from lmeval_ctx.common.checkpoint import text_config
    from lmeval_ctx.extension.rope.rotary import rotary_modules

    cfg = text_config(model.config)
    model_type = getattr(cfg, "model_type", "unknown")
    what = extension.method if extension.method in ATTENTION_METHOD_REGISTRY else "logn=true"
    if model_type not in ATTENTION_ARCHITECTURES:  # resolve_extension refuses these first
        raise ValueError(f"{what} is implemented for {', '.join(ATTENTION_ARCHITECTURES)}; this model is {model_type}.")
    rotary = rotary_modules(model)
    if len(rotary) != 1 or not isinstance(rotary[0][1].rope_type, str):
        raise ValueError(f"{what} needs one rotary embedding shared by all layers; this {model_type} model has "
                         f"{len(rotary)} (per-layer-type RoPE is not supported by the attention-level methods).")
    inv_freq = rotary[0][1].inv_freq.detach().to("cpu", torch.float64)
    previous = model.config._attn_implementation
    if previous == IMPLEMENTATION:
        previous = next((getattr(m, SETTING_ATTRIBUTE).previous_implementation for m in attention_modules(model)
                         if getattr(m, SETTING_ATTRIBUTE, None) is not None), "sdpa")
    remove(model)
    setting = AttentionSetting(extension.method if extension.method in ATTENTION_METHOD_REGISTRY else None,
                               {k: v for k, v in extension.options.items()}, int(extension.original_max_length),
                               bool(extension.options.get("logn")), inv_freq, previous, engine)
    kept = dict(extension.attention_kept_layer_types)
    layer_types = getattr(cfg, "layer_types", None) or ()
    modules = attention_modules(model)
    for module in modules:
        if module.layer_idx < len(layer_types) and layer_types[module.layer_idx] in kept:
            continue
        module.__dict__[SETTING_ATTRIBUTE] = setting  # a plain attribute, not a submodule or buffer
    _register()
    model.config._attn_implementation = IMPLEMENTATION
    return {"attention": {"implementation": IMPLEMENTATION, "method": setting.method, "logn": setting.logn,
                          "layers": sorted(m.layer_idx for m in modules if SETTING_ATTRIBUTE in m.__dict__),
                          "rotary_dim": setting.rotary_dim, **({"kept_layer_types": kept} if kept else {})}}
