"""Resolve a context-extension request against a model config, and write it in.

``resolve_extension`` turns the user's arguments (``scaling``, ``factor``,
``original_max_length``, ``max_length``, YaRN options) and a transformers config
into a validated :class:`ContextExtension`. ``apply_to_config`` writes RoPE
methods into ``config.rope_parameters`` (and MPT's ``max_seq_len``) before the
model is built; ALiBi slopes are installed on the built model by
:mod:`lmeval_ctx.alibi_patch`.

This module reads configs only; it imports no model classes.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

from lmeval_ctx.methods import LENGTH_DEPENDENT_METHODS, canonical_method, validate_factor
from lmeval_ctx.methods.rope import ROPE_METHODS, base_rope_parameters, validate_rope_options

# Architectures whose attention uses ALiBi slopes; Falcon only with ``alibi=True``.
ALIBI_MODEL_TYPES = ("bloom", "mpt", "falcon")

# RoPE types a checkpoint may ship whose frequencies change with the input length:
# transformers' dynamic NTK, and Phi-3's longrope (long factors past the original length).
LENGTH_DEPENDENT_ROPE_TYPES = ("dynamic", "longrope")

# Config fields that carry the trained context length, most specific first.
ORIGINAL_LENGTH_FIELDS = (
    "original_max_position_embeddings",
    "max_position_embeddings",
    "n_positions",
    "max_seq_len",
    "seq_length",
    "n_ctx",
)


@dataclass(frozen=True)
class ContextExtension:
    """A validated context-extension setting for one model."""

    method: str  # canonical name: none, pi, ntk, dynamic_ntk, yarn
    requested: str  # what the user wrote (e.g. "linear", "ntk_alibi")
    family: str  # "rope", "alibi" or "absolute"
    model_type: str
    factor: float | None  # None only for scaling=none
    original_max_length: int | None
    max_length: int | None  # the evaluation window; None = lm-eval's default
    options: dict = field(default_factory=dict)  # YaRN's beta_fast, beta_slow, attention_factor
    replace_rope_scaling: bool = False
    shipped_rope_parameters: dict | None = None  # the config's own, before any change

    @property
    def length_dependent(self) -> bool:
        """True when a token's loss depends on the total input length.

        So it is for the dynamic methods, and for ``scaling=none`` on a checkpoint that
        ships a dynamic or longrope scaling. Then a prefix's losses cannot be read off a
        longer input, and inputs of different lengths must not share a padded batch.
        """
        if self.method in LENGTH_DEPENDENT_METHODS:
            return True
        shipped = (self.shipped_rope_parameters or {}).get("rope_type")
        return self.method == "none" and shipped in LENGTH_DEPENDENT_ROPE_TYPES

    def record(self, applied: dict | None = None) -> dict:
        """A JSON-ready description of what ran, for logs and lm-eval's results."""
        out: dict[str, Any] = {
            "scaling": self.method,
            "scaling_requested": self.requested,
            "position_family": self.family,
            "model_type": self.model_type,
            "factor": self.factor,
            "original_max_length": self.original_max_length,
            "max_length": self.max_length,
        }
        if self.options:
            out["options"] = dict(self.options)
        if self.replace_rope_scaling:
            out["replaced_rope_parameters"] = self.shipped_rope_parameters
        if applied:
            out.update(applied)
        return out


def text_config(config):
    """The decoder's config for composite (multimodal) configs, else the config itself."""
    getter = getattr(config, "get_text_config", None)
    if getter is None:
        return config
    try:
        return getter(decoder=True)
    except TypeError:
        return getter()


def position_family(config) -> str:
    """``"alibi"``, ``"rope"`` or ``"absolute"`` (learned or no known position scheme)."""
    cfg = text_config(config)
    model_type = getattr(cfg, "model_type", "")
    if model_type in ("bloom", "mpt"):
        return "alibi"
    if model_type == "falcon" and getattr(cfg, "alibi", False):
        return "alibi"
    if getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_theta", None):
        return "rope"
    return "absolute"


def _is_per_layer_type(rope_parameters: dict) -> bool:
    return bool(rope_parameters) and all(isinstance(v, dict) for v in rope_parameters.values())


def _shipped_scalings(rope_parameters: dict) -> dict[str | None, dict]:
    """The scaled entries of ``rope_parameters`` ({layer_type or None: params})."""
    entries = rope_parameters.items() if _is_per_layer_type(rope_parameters) else [(None, rope_parameters)]
    return {
        layer: dict(params)
        for layer, params in entries
        if params.get("rope_type", params.get("type", "default")) not in ("default", None)
    }


def _original_length_from_config(cfg, shipped: dict[str | None, dict]) -> tuple[int | None, str | None]:
    for params in shipped.values():
        if params.get("original_max_position_embeddings"):
            return int(params["original_max_position_embeddings"]), "rope_parameters.original_max_position_embeddings"
    for name in ORIGINAL_LENGTH_FIELDS:
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value, name
    return None, None


def _positive_int(value, name: str) -> int:
    try:
        as_float = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r} is not a whole number of tokens.") from None
    if not math.isfinite(as_float) or as_float != int(as_float) or as_float < 1:
        raise ValueError(f"{name}={value!r} must be a positive whole number of tokens.")
    return int(as_float)


def resolve_extension(
    config,
    *,
    scaling: str | None = "none",
    factor=None,
    original_max_length=None,
    max_length=None,
    beta_fast=None,
    beta_slow=None,
    attention_factor=None,
    replace_rope_scaling: bool = False,
) -> ContextExtension:
    """Validate a request against ``config``; raise ValueError naming the argument and the fix."""
    cfg = text_config(config)
    model_type = getattr(cfg, "model_type", "unknown")
    family = position_family(config)
    requested = "none" if scaling is None else str(scaling)
    method = canonical_method(scaling, family=family if family != "absolute" else None)
    options = {"beta_fast": beta_fast, "beta_slow": beta_slow, "attention_factor": attention_factor}
    if family == "rope" or method == "yarn":
        validate_rope_options(method, options)
    elif any(v is not None for v in options.values()):
        raise ValueError(
            "beta_fast, beta_slow and attention_factor are YaRN options for RoPE models; "
            f"this {model_type} model uses {family} positions. Remove them."
        )
    options = {k: float(v) for k, v in options.items() if v is not None}
    window = None if max_length is None else _positive_int(max_length, "max_length")

    if family == "absolute":
        if method != "none":
            raise ValueError(
                f"scaling={requested!r} cannot be applied: this {model_type} model has learned absolute "
                "position embeddings (no RoPE, no ALiBi), which no context-extension method here can stretch. "
                "Use scaling=none, or a RoPE or ALiBi model."
            )
        if factor is not None:
            raise ValueError("factor only applies together with a scaling method; remove it for scaling=none.")
        learned, name = _original_length_from_config(cfg, {})
        if window is not None and learned is not None and window > learned:
            raise ValueError(
                f"max_length={window} exceeds the {learned} learned positions of this {model_type} model "
                f"({name}); it has no embedding for later positions. Use max_length <= {learned}."
            )
        return ContextExtension(method, requested, family, model_type, None, learned, window)

    rope_parameters = copy.deepcopy(getattr(cfg, "rope_parameters", None) or {}) if family == "rope" else {}
    shipped = _shipped_scalings(rope_parameters)
    if shipped and method != "none" and not replace_rope_scaling:
        desc = "; ".join(
            f"{layer + ': ' if layer else ''}rope_type={p.get('rope_type', p.get('type'))}"
            + (f", factor={p['factor']}" if "factor" in p else "")
            for layer, p in shipped.items()
        )
        raise ValueError(
            f"This {model_type} model already ships a RoPE scaling ({desc}). Applying scaling={requested!r} "
            "on top would scale its positions twice. Evaluate it as shipped with scaling=none, or pass "
            "replace_rope_scaling=True to replace the shipped scaling with this one (the original length "
            "then comes from the shipped original_max_position_embeddings or original_max_length)."
        )

    if original_max_length is not None:
        original = _positive_int(original_max_length, "original_max_length")
    else:
        original, _ = _original_length_from_config(cfg, shipped)
    if original is None and method != "none":
        raise ValueError(
            f"original_max_length is required: this {model_type} config records no trained context length "
            f"(none of {', '.join(ORIGINAL_LENGTH_FIELDS)}). Pass the length the model was trained on, "
            "e.g. original_max_length=2048 for BLOOM."
        )

    if method == "none":
        if factor is not None:
            raise ValueError(
                "factor only applies together with a scaling method; remove it for scaling=none "
                "(to extrapolate to a longer window, pass max_length instead)."
            )
        return ContextExtension(
            method, requested, family, model_type, None, original, window,
            shipped_rope_parameters=rope_parameters or None,
        )

    if factor is None:
        if window is None:
            raise ValueError(
                f"scaling={requested!r} needs a scale: pass factor=<L'/L> (e.g. factor=2) or "
                f"max_length=<evaluated window> (factor is then max_length / original_max_length = max_length / {original})."
            )
        if window < original:
            raise ValueError(
                f"max_length={window} is smaller than original_max_length={original}, so the implied factor "
                f"{window / original:.3g} would be < 1. Pass factor>=1 explicitly, or use scaling=none inside the trained window."
            )
        factor_value = window / original
    else:
        factor_value = validate_factor(factor)
    if window is None:
        window = int(round(original * factor_value))
    return ContextExtension(
        method, requested, family, model_type, factor_value, original, window, options,
        replace_rope_scaling=bool(shipped) and bool(replace_rope_scaling),
        shipped_rope_parameters=rope_parameters or None,
    )


def rotary_dim(cfg, params: dict) -> int:
    """Dimensions rotated per head: ``head_dim * partial_rotary_factor``."""
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    partial = params.get("partial_rotary_factor", getattr(cfg, "partial_rotary_factor", None) or 1.0)
    return int(head_dim * partial)


def scaled_rope_parameters(config, ext: ContextExtension) -> dict:
    """The ``rope_parameters`` that ``ext`` writes into ``config`` (the config is not changed)."""
    cfg = text_config(config)
    current = copy.deepcopy(cfg.rope_parameters)
    if ext.method == "none":
        return current
    method = ROPE_METHODS[ext.method]

    def scale(params: dict) -> dict:
        base = base_rope_parameters(params)
        return method(base, ext.factor, ext.original_max_length, rotary_dim(cfg, base), ext.options)

    if _is_per_layer_type(current):
        return {layer: scale(params) for layer, params in current.items()}
    return scale(current)


# The config fields apply_to_config may change.
EXTENSION_FIELDS = ("rope_parameters", "max_position_embeddings", "max_seq_len")


def snapshot_extension_fields(config) -> dict:
    """The config's own values of the fields a method changes, to restore before applying another."""
    cfg = text_config(config)
    return {name: copy.deepcopy(getattr(cfg, name)) for name in EXTENSION_FIELDS if hasattr(cfg, name)}


def restore_extension_fields(config, snapshot: dict) -> None:
    cfg = text_config(config)
    for name, value in snapshot.items():
        setattr(cfg, name, copy.deepcopy(value))


def apply_to_config(config, ext: ContextExtension) -> dict:
    """Write ``ext`` into ``config`` before the model is built; return what was applied.

    RoPE: ``rope_parameters`` (and, for dynamic NTK, ``max_position_embeddings``
    set to the original length, which transformers reads as such). MPT: raise
    ``max_seq_len`` to cover the window, since MPT builds its ALiBi bias for that
    many positions. ALiBi slopes themselves are installed on the built model.
    """
    cfg = text_config(config)
    applied: dict[str, Any] = {}
    if ext.family == "rope":
        if ext.method != "none":
            cfg.rope_parameters = scaled_rope_parameters(config, ext)
            if ext.method == "dynamic_ntk" and getattr(cfg, "max_position_embeddings", None) != ext.original_max_length:
                cfg.max_position_embeddings = ext.original_max_length
        applied["rope_parameters"] = copy.deepcopy(cfg.rope_parameters)
    elif ext.family == "alibi" and ext.model_type == "mpt" and ext.max_length:
        if cfg.max_seq_len < ext.max_length:
            applied["mpt_max_seq_len"] = {"from": cfg.max_seq_len, "to": ext.max_length}
            cfg.max_seq_len = ext.max_length
    return applied

