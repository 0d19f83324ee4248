"""A RoPE model's ``rope_parameters``: reading what the checkpoint ships, writing a resolved method in.

transformers 5 keeps RoPE under ``config.rope_parameters``: one dict shared by every layer, or
(Gemma 3 style) one dict per layer type (:func:`lmeval_ctx.extension.layers.rope_layer_types`).
The rotary modules read it when the model is built, so a method is written here before
``from_pretrained`` builds the model (or before the rotary modules are rebuilt,
:mod:`lmeval_ctx.extension.rope.rotary`). The methods' own maths is in :mod:`lmeval_ctx.methods.rope`.
"""

from __future__ import annotations

import copy

from lmeval_ctx.common.checkpoint import text_config
from lmeval_ctx.extension.layers import rope_layer_types
from lmeval_ctx.methods.rope import ROPE_METHODS, attention_method_rope_parameters, base_rope_parameters

# RoPE types a checkpoint may ship whose frequencies change with the input length:
# transformers' dynamic NTK, and Phi-3's longrope (long factors past the original length).
LENGTH_DEPENDENT_ROPE_TYPES = ("dynamic", "longrope")
# RoPE types that are a layout of the base frequencies rather than a scaling, which the methods
# here cannot be written over (Gemma 4's ``proportional``: a share of the dimensions unrotated).
UNSCALABLE_ROPE_TYPES = ("proportional",)


# -- reading the shipped parameters -----------------------------------------------------------

def rope_type(params: dict | None) -> str | None:
    """The ``rope_type`` of one ``rope_parameters`` entry (``type``: transformers 4's key); None for no RoPE."""
    if params is None:
        return None
    return params.get("rope_type", params.get("type", "default"))


def rope_entries(rope_parameters: dict, *, per_layer_type: bool) -> dict[str | None, dict | None]:
    """``{layer_type: params}`` for per-layer-type parameters, ``{None: params}`` for one shared entry."""
    return dict(rope_parameters) if per_layer_type else {None: rope_parameters}


def shipped_scalings(entries: dict[str | None, dict | None]) -> dict[str | None, dict]:
    """The entries that already carry a scaling ({layer_type or None: params})."""
    return {layer: dict(params) for layer, params in entries.items()
            if params is not None and rope_type(params) not in ("default", None)}


def length_dependent_entries(rope_parameters: dict | None, per_layer_type: bool, method: str,
                             scaled_layer_types: tuple[str, ...]) -> bool:
    """True when a shipped dynamic or longrope entry stays in place once ``method`` is written in
    (with ``scaling=none``, or on a layer type the method keeps)."""
    entries = rope_entries(rope_parameters or {}, per_layer_type=per_layer_type)
    if method != "none":  # the method replaces the entries it scales
        entries = {t: p for t, p in entries.items() if t is not None and t not in scaled_layer_types}
    return any(rope_type(params) in LENGTH_DEPENDENT_ROPE_TYPES for params in entries.values())


def layer_type_config(cfg, layer_type: str | None):
    """The config as one layer type sees it: transformers' ``per_layer_config[type]`` where the
    config differs by layer (Gemma 4's larger head dimension in full-attention layers), else ``cfg``."""
    if layer_type is None:
        return cfg
    try:
        return cfg.per_layer_config[layer_type]
    except (AttributeError, ValueError):  # no per-layer overrides: every type reads the global config
        return cfg


def rotary_dim(cfg, params: dict, layer_type: str | None = None) -> int:
    """Dimensions rotated per head in ``layer_type`` (None: every layer): ``head_dim * partial_rotary_factor``.

    The head dimension and the factor are read as transformers' RoPE functions read them for
    that layer type: the type's own config and ``rope_parameters`` entry.
    """
    layer_cfg = layer_type_config(cfg, layer_type)
    head_dim = getattr(layer_cfg, "head_dim", None) or layer_cfg.hidden_size // layer_cfg.num_attention_heads
    partial = params.get("partial_rotary_factor", getattr(layer_cfg, "partial_rotary_factor", None) or 1.0)
    return int(head_dim * partial)


# -- writing a resolved method ----------------------------------------------------------------

def scaled_rope_parameters(config, ext) -> dict:
    """The ``rope_parameters`` that ``ext`` (a resolved :class:`lmeval_ctx.extension.request.ContextExtension`)
    writes into ``config`` (the config is not changed).

    Per-layer-type parameters: each scaled type from its own base parameters and rotary
    dimension (static NTK's new base differs per type); kept types are copied unchanged.
    """
    cfg = text_config(config)
    current = copy.deepcopy(cfg.rope_parameters)
    theta = ext.options.get("rope_theta")
    if ext.method == "none" and theta is None:
        return current
    method = ROPE_METHODS.get(ext.method, attention_method_rope_parameters)

    def scale(params: dict, layer_type: str | None) -> dict:
        if theta is not None:  # the base override comes first: a method scales the overridden base
            params = {**params, "rope_theta": theta}
        if ext.method == "none":
            return params
        base = base_rope_parameters(params)
        return method(base, ext.factor, ext.original_max_length, rotary_dim(cfg, base, layer_type), ext.options)

    if rope_layer_types(cfg):
        return {layer: scale(params, layer) if layer in ext.scaled_layer_types else params
                for layer, params in current.items()}
    return scale(current, None)


def write_rope_parameters(config, ext) -> dict:
    """Write ``ext``'s RoPE into ``config``; return the ``rope_parameters`` now in it.

    Dynamic NTK also sets ``max_position_embeddings`` to the original length, which
    transformers' dynamic RoPE reads as such.
    """
    cfg = text_config(config)
    if ext.method != "none" or "rope_theta" in ext.options:
        cfg.rope_parameters = scaled_rope_parameters(config, ext)
        if ext.method == "dynamic_ntk" and getattr(cfg, "max_position_embeddings", None) != ext.original_max_length:
            cfg.max_position_embeddings = ext.original_max_length
    return copy.deepcopy(cfg.rope_parameters)
