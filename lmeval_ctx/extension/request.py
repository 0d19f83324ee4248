"""Resolve a context-extension request against a model config, and write it in.

``resolve_extension`` turns the user's arguments (``scaling``, ``factor``,
``original_max_length``, ``max_length``, YaRN options) and a transformers config
into a validated :class:`ContextExtension`. ``apply_to_config`` writes RoPE
methods into ``config.rope_parameters`` (and MPT's ``max_seq_len``) before the
model is built; ALiBi slopes are installed on the built model by
:mod:`lmeval_ctx.extension.alibi.install`.

This module reads configs only; it imports no model classes.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

from lmeval_ctx.extension.architectures import alibi_architecture
from lmeval_ctx.common.args import parse_optional_bool
from lmeval_ctx.methods.catalog import (
    ALIBI_ATTENTION_METHODS,
    ATTENTION_METHOD_OPTIONS,
    ATTENTION_METHODS,
    LENGTH_DEPENDENT_METHODS,
    METHOD_OPTION_NAMES,
    MODIFIER_OPTIONS,
    ROPE_METHOD_OPTIONS,
    canonical_method,
    validate_factor,
)
from lmeval_ctx.methods.rope import (
    ROPE_METHODS,
    attention_method_rope_parameters,
    base_rope_parameters,
    validate_rope_options,
)

# RoPE types a checkpoint may ship whose frequencies change with the input length:
# transformers' dynamic NTK, and Phi-3's longrope (long factors past the original length).
LENGTH_DEPENDENT_ROPE_TYPES = ("dynamic", "longrope")

# Options only the attention-level methods take; kept as given (the registry converts them).
ATTENTION_ONLY_OPTIONS = frozenset().union(*ATTENTION_METHOD_OPTIONS.values())

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
    factor: float | None  # None for scaling=none and the attention-level methods
    original_max_length: int | None
    max_length: int | None  # the evaluation window; None = lm-eval's default
    # the method's options (YaRN's beta_fast, ..., an attention method's window, ...) and the
    # modifiers rope_theta (a base override) and logn (true: log-n query scaling)
    options: dict = field(default_factory=dict)
    replace_rope_scaling: bool = False
    shipped_rope_parameters: dict | None = None  # the config's own, before any change
    # Layer types (``layer_types``): those keyed in ``rope_parameters`` (empty: one RoPE shared by
    # every layer), the types the method is written into, and those keeping their trained RoPE, with why.
    rope_layer_types: tuple[str, ...] = ()
    scaled_layer_types: tuple[str, ...] = ()
    kept_layer_types: dict = field(default_factory=dict)

    @property
    def attention_level(self) -> bool:
        """True when a RoPE model's attention itself changes (an attention-level method, or logn):
        the attention function of :mod:`lmeval_ctx.extension.attention.patch` is installed on the model.
        On ALiBi models ``lm_infinite`` runs inside the ALiBi attention (:mod:`lmeval_ctx.extension.alibi.install`)."""
        return self.family == "rope" and (self.method in ATTENTION_METHODS or bool(self.options.get("logn")))

    @property
    def length_dependent(self) -> bool:
        """True when a token's loss depends on the total input length.

        So it is for the dynamic methods, and where a checkpoint's dynamic or longrope scaling
        stays in place: with ``scaling=none``, or on a layer type the method keeps. Then a
        prefix's losses cannot be read off a longer input, and inputs of different lengths
        must not share a padded batch.
        """
        if self.method in LENGTH_DEPENDENT_METHODS:
            return True
        entries = _rope_entries(self.shipped_rope_parameters or {}, per_layer_type=bool(self.rope_layer_types))
        if self.method != "none":  # the method replaces the entries it scales
            entries = {t: p for t, p in entries.items() if t is not None and t not in self.scaled_layer_types}
        return any(_rope_type(params) in LENGTH_DEPENDENT_ROPE_TYPES for params in entries.values())

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
        if self.method != "none" and (self.scaled_layer_types or self.kept_layer_types):
            out["scaled_layer_types"] = list(self.scaled_layer_types)
            out["kept_layer_types"] = dict(self.kept_layer_types)
            if not self.rope_layer_types:
                out["layer_types_note"] = SHARED_ROPE_NOTE
        if self.family == "alibi" and self.method in ALIBI_ATTENTION_METHODS:
            out["alibi_positions"] = {
                "slopes": "the model's own (unscaled)",
                "visible_keys": (f"the first {self.options['global_tokens']} tokens and the last "
                                 f"{self.options['local_window']} keys (key j seen by query i iff "
                                 f"j < {self.options['global_tokens']} or i - j < {self.options['local_window']})"),
                "bias": f"-slope * min(i - j, {self.original_max_length})",
            }
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
    if alibi_architecture(cfg) is not None:  # lmeval_ctx.extension.architectures: Falcon only with alibi=True
        return "alibi"
    if getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_theta", None):
        return "rope"
    return "absolute"


# Per-layer-type RoPE. Gemma 2/3-style configs list a ``layer_types`` entry per layer and, where
# the types differ in RoPE, one ``rope_parameters`` entry per type (transformers builds one pair of
# frequency buffers per type). A type whose attention spans a bounded number of tokens, no more
# than the trained context, never sees a distance the model was not trained on, so a method must
# leave its RoPE as trained; see layer_types_to_scale.

# Layer types whose attention reaches a bounded distance, and the config field holding the bound.
BOUNDED_LAYER_TYPES = {"sliding_attention": "sliding_window", "chunked_attention": "attention_chunk_size"}
# Layer types whose attention reaches every earlier token.
UNBOUNDED_LAYER_TYPES = ("full_attention",)
# RoPE types that are a layout of the base frequencies rather than a scaling, which the methods
# here cannot be written over (Gemma 4's ``proportional``: a share of the dimensions unrotated).
UNSCALABLE_ROPE_TYPES = ("proportional",)


def rope_layer_types(cfg) -> list[str]:
    """The layer types ``cfg.rope_parameters`` is keyed by, in the order layers first use them;
    empty for one entry shared by all layers.

    As transformers decides it: only keys that are layer types of the config count.
    """
    rope_parameters = getattr(cfg, "rope_parameters", None) or {}
    in_layer_order = dict.fromkeys(getattr(cfg, "layer_types", None) or ())  # first appearance
    return [key for key in in_layer_order if key in rope_parameters]


def _rope_type(params: dict | None) -> str | None:
    if params is None:
        return None
    return params.get("rope_type", params.get("type", "default"))


def _rope_entries(rope_parameters: dict, *, per_layer_type: bool) -> dict[str | None, dict | None]:
    """``{layer_type: params}`` for per-layer-type parameters, ``{None: params}`` for one shared entry."""
    return dict(rope_parameters) if per_layer_type else {None: rope_parameters}


def _shipped_scalings(entries: dict[str | None, dict | None]) -> dict[str | None, dict]:
    """The entries that already carry a scaling ({layer_type or None: params})."""
    return {layer: dict(params) for layer, params in entries.items()
            if params is not None and _rope_type(params) not in ("default", None)}


SCALE_ALL_LAYER_TYPES = "all"
SHARED_ROPE_NOTE = ("one RoPE shared by every layer type in this architecture (transformers builds one rotary "
                    "embedding), so the sliding-window layers are scaled too")


def _requested_layer_types(scale_layer_types, available: list[str], model_type: str) -> list[str] | None:
    """``scale_layer_types`` as a list of the config's layer types; None when not given."""
    if scale_layer_types is None:
        return None
    if isinstance(scale_layer_types, str):
        names = [part.strip() for part in scale_layer_types.replace("|", "+").split("+")]
    else:
        names = [str(part).strip() for part in scale_layer_types]
    names = [name for name in names if name]
    if not names:
        raise ValueError(f"scale_layer_types={scale_layer_types!r} names no layer type. Pass "
                         f"scale_layer_types={SCALE_ALL_LAYER_TYPES} or layer types joined by '+'.")
    if SCALE_ALL_LAYER_TYPES in names:
        if names != [SCALE_ALL_LAYER_TYPES]:
            raise ValueError(f"scale_layer_types={scale_layer_types!r} mixes 'all' with layer types; pass one or the other.")
        return list(available)
    unknown = [name for name in names if name not in available]
    if unknown:
        have = ", ".join(available) if available else "none: its RoPE parameters are shared by every layer"
        raise ValueError(
            f"scale_layer_types={scale_layer_types!r}: {', '.join(repr(n) for n in unknown)} is not a layer type "
            f"with its own RoPE in this {model_type} config (its layer types with RoPE: {have}). "
            f"Pass some of those joined by '+', or scale_layer_types={SCALE_ALL_LAYER_TYPES}."
        )
    return [name for name in available if name in names]  # the config's order


def layer_types_to_scale(config, original_max_length: int | None, scale_layer_types=None
                         ) -> tuple[tuple[str, ...], dict[str, str]]:
    """Which layer types a method scales: ``(scaled, {kept type: why})``.

    The rule: a layer type is scaled when its attention can reach beyond the original
    (trained) context: full attention, or a sliding window or chunk longer than the
    original length. A type whose window is at most the original length only ever sees
    distances it was trained on and keeps its trained RoPE (long-context releases of
    such models scale the global layers only). ``scale_layer_types`` (``"all"`` or types
    joined by ``+``, e.g. ``full_attention``) overrides the rule.

    Configs whose RoPE parameters are shared by every layer have one rotary embedding, so
    the method applies to all layers: ``((), {})``, or every layer type when some are
    sliding-window types (Gemma 2), to record that those are scaled too.
    """
    cfg = text_config(config)
    model_type = getattr(cfg, "model_type", "unknown")
    available = rope_layer_types(cfg)
    requested = _requested_layer_types(scale_layer_types, available, model_type)
    if not available:
        layer_types = tuple(dict.fromkeys(getattr(cfg, "layer_types", None) or ()))
        return (layer_types if any(t in BOUNDED_LAYER_TYPES for t in layer_types) else ()), {}
    rope_parameters = cfg.rope_parameters
    with_rope = [t for t in available if rope_parameters[t] is not None]
    kept: dict[str, str] = {t: "no RoPE in this layer type" for t in available if rope_parameters[t] is None}
    if requested is not None:
        if any(rope_parameters[t] is None for t in requested):
            raise ValueError(f"scale_layer_types={scale_layer_types!r} names a layer type without RoPE "
                             f"({', '.join(t for t in requested if rope_parameters[t] is None)}); "
                             f"layer types with RoPE: {', '.join(with_rope)}.")
        kept.update({t: f"not in scale_layer_types={scale_layer_types!r}" for t in with_rope if t not in requested})
        return tuple(requested), kept
    scaled = []
    for layer_type in with_rope:
        if layer_type in UNBOUNDED_LAYER_TYPES:
            scaled.append(layer_type)
            continue
        if layer_type not in BOUNDED_LAYER_TYPES:
            raise ValueError(
                f"This {model_type} config has layer type {layer_type!r}, whose attention span is not known here, "
                f"so it cannot tell whether to scale it. Pass scale_layer_types=<types joined by '+'> "
                f"(layer types with RoPE: {', '.join(with_rope)}) or scale_layer_types={SCALE_ALL_LAYER_TYPES}."
            )
        span_field = BOUNDED_LAYER_TYPES[layer_type]
        span = getattr(cfg, span_field, None)
        if span is None or original_max_length is None or span > original_max_length:
            scaled.append(layer_type)
        else:
            kept[layer_type] = (f"{span_field}={span} <= original_max_length={original_max_length}: "
                                "its attention never reaches beyond the trained context")
    return tuple(scaled), kept


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
    replace_rope_scaling=False,
    scale_layer_types=None,
    **options,
) -> ContextExtension:
    """Validate a request against ``config``; raise ValueError naming the argument and the fix.

    ``replace_rope_scaling`` may be a bool or its spelling from ``--model_args`` (``no``, ``true``,
    ...); ``scale_layer_types`` overrides :func:`layer_types_to_scale`'s rule. ``rope_theta``
    (a RoPE base override, applied before the method) and ``logn`` (log-n query scaling)
    combine with every RoPE method; ``window`` ... ``chunk_size`` are the attention-level
    methods' options (:mod:`lmeval_ctx.methods.attention`).
    """
    replace_rope_scaling = bool(parse_optional_bool(replace_rope_scaling, "replace_rope_scaling"))
    cfg = text_config(config)
    model_type = getattr(cfg, "model_type", "unknown")
    family = position_family(config)
    requested = "none" if scaling is None else str(scaling)
    method = canonical_method(scaling, family=family if family != "absolute" else None)
    unknown = set(options) - set(METHOD_OPTION_NAMES)
    if unknown:
        raise TypeError(f"Unknown context-extension option(s): {', '.join(sorted(unknown))}; "
                        f"the methods take: {', '.join(METHOD_OPTION_NAMES)}.")
    logn = parse_optional_bool(options.get("logn"), "logn")
    options = {name: options.get(name) for name in METHOD_OPTION_NAMES}
    options["logn"] = logn or None
    # an ALiBi model takes an attention-level method's own options (lm_infinite's)
    alibi_takes = ATTENTION_METHOD_OPTIONS[method] if family == "alibi" and method in ALIBI_ATTENTION_METHODS \
        else frozenset()
    if family == "rope" or method == "yarn":
        validate_rope_options(method, options, {**ROPE_METHOD_OPTIONS, **ATTENTION_METHOD_OPTIONS})
    elif any(v is not None and k not in alibi_takes for k, v in options.items()):
        raise ValueError(
            f"{', '.join(k for k, v in options.items() if v is not None and k not in alibi_takes)} are options "
            f"for RoPE models (YaRN options for RoPE models, llama3's, rope_theta, logn, the attention-level "
            f"methods'); this {model_type} model uses {family} positions. Remove them"
            + (f" (scaling={method} takes {', '.join(sorted(alibi_takes))} here)." if alibi_takes else ".")
        )
    options = {k: (v if k in ATTENTION_ONLY_OPTIONS else True if k == "logn" else float(v))
               for k, v in options.items() if v is not None}
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
    if family != "rope" and scale_layer_types is not None:
        raise ValueError(f"scale_layer_types={scale_layer_types!r} chooses RoPE layer types; this {model_type} "
                         f"model uses {family} positions. Remove it.")
    entries = _rope_entries(rope_parameters, per_layer_type=bool(rope_layer_types(cfg)))
    if original_max_length is not None:
        original = _positive_int(original_max_length, "original_max_length")
    else:
        original, _ = _original_length_from_config(cfg, _shipped_scalings(entries))
    scaled_types, kept_types = layer_types_to_scale(cfg, original, scale_layer_types) if family == "rope" else ((), {})
    targets = {t: p for t, p in entries.items() if t is None or t in scaled_types}
    if method != "none" and (scaled_types or kept_types) and not scaled_types:
        raise ValueError(
            f"scaling={requested!r} would change nothing on this {model_type} model: no layer type's attention "
            f"reaches beyond the trained context ({'; '.join(f'{t}: {why}' for t, why in kept_types.items())}). "
            "Use scaling=none, or pass scale_layer_types=all to scale them anyway."
        )
    unscalable = {t: _rope_type(p) for t, p in targets.items() if _rope_type(p) in UNSCALABLE_ROPE_TYPES}
    if method != "none" and unscalable:
        where = ", ".join(f"{t or 'all layers'}: rope_type={kind}" for t, kind in unscalable.items())
        raise ValueError(
            f"scaling={requested!r} cannot be written over this {model_type} model's RoPE ({where}): that RoPE "
            "type lays out the base frequencies itself, which these methods do not rewrite."
            + (" Pass scale_layer_types=<other layer types> to leave it as trained." if scaled_types else "")
        )
    shipped = _shipped_scalings(targets)
    if shipped and method != "none" and not replace_rope_scaling:
        desc = "; ".join(
            f"{layer + ': ' if layer else ''}rope_type={_rope_type(p)}"
            + (f", factor={p['factor']}" if "factor" in p else "")
            for layer, p in shipped.items()
        )
        raise ValueError(
            f"This {model_type} model already ships a RoPE scaling ({desc}). Applying scaling={requested!r} "
            "on top would scale its positions twice. Evaluate it as shipped with scaling=none, or pass "
            "replace_rope_scaling=True to replace the shipped scaling with this one (the original length "
            "then comes from the shipped original_max_position_embeddings or original_max_length)."
        )

    if original is None and method != "none":
        raise ValueError(
            f"original_max_length is required: this {model_type} config records no trained context length "
            f"(none of {', '.join(ORIGINAL_LENGTH_FIELDS)}). Pass the length the model was trained on, "
            "e.g. original_max_length=2048 for BLOOM."
        )

    if family == "rope" and (method in ATTENTION_METHODS or options.get("logn")):
        # (ALiBi models run lm_infinite in their own attention: lmeval_ctx.extension.alibi.attention)
        from lmeval_ctx.methods.attention import check_architecture  # needs torch

        check_architecture(f"scaling={requested}" if method in ATTENTION_METHODS else "logn=true", model_type)
    if options.get("logn") and original is None:
        raise ValueError(
            f"logn=true scales queries by log(position)/log(original_max_length), but this {model_type} config "
            "records no trained context length. Pass original_max_length=<the length it was trained on>."
        )
    if method == "none" or method in ATTENTION_METHODS:
        if factor is not None:
            raise ValueError(
                "factor only applies together with a scaling method; remove it for scaling=none "
                "(to extrapolate to a longer window, pass max_length instead)." if method == "none" else
                f"factor only applies together with a RoPE rescaling; remove it for scaling={requested} (an "
                "attention-level method's reach is set by its own options; pass max_length for the window)."
            )
        if method in ATTENTION_METHODS:
            from lmeval_ctx.methods.attention import resolve_attention_options  # needs torch

            options = {**options, **resolve_attention_options(method, options, original, window)}
        return ContextExtension(
            method, requested, family, model_type, None, original, window, options,
            replace_rope_scaling=bool(shipped) and replace_rope_scaling and method != "none",
            shipped_rope_parameters=rope_parameters or None,
            rope_layer_types=tuple(rope_layer_types(cfg)), scaled_layer_types=scaled_types,
            kept_layer_types=kept_types,
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
        replace_rope_scaling=bool(shipped) and replace_rope_scaling,
        shipped_rope_parameters=rope_parameters or None,
        rope_layer_types=tuple(rope_layer_types(cfg)), scaled_layer_types=scaled_types,
        kept_layer_types=kept_types,
    )


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


def scaled_rope_parameters(config, ext: ContextExtension) -> dict:
    """The ``rope_parameters`` that ``ext`` writes into ``config`` (the config is not changed).

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
        if ext.method != "none" or "rope_theta" in ext.options:
            cfg.rope_parameters = scaled_rope_parameters(config, ext)
            if ext.method == "dynamic_ntk" and getattr(cfg, "max_position_embeddings", None) != ext.original_max_length:
                cfg.max_position_embeddings = ext.original_max_length
        applied["rope_parameters"] = copy.deepcopy(cfg.rope_parameters)
    elif ext.family == "alibi" and ext.model_type == "mpt" and ext.max_length:
        if cfg.max_seq_len < ext.max_length:
            applied["mpt_max_seq_len"] = {"from": cfg.max_seq_len, "to": ext.max_length}
            cfg.max_seq_len = ext.max_length
    return applied

