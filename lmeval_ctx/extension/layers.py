"""Which layer types a context-extension method changes: the layer-span rule, in one place.

Gemma 2/3-style configs list a ``layer_types`` entry per layer (``full_attention``,
``sliding_attention``, ...) and, where the types differ in RoPE, one ``rope_parameters`` entry
per type (transformers builds one pair of frequency buffers per type). The rule
(:func:`bounded_within`): a layer type whose attention spans a bounded number of tokens, no
more than the trained context, never sees a distance the model was not trained on, so a
method leaves it as trained. It is applied twice:

- to the RoPE a method writes into the config (:func:`layer_types_to_scale`): per layer type
  where each type has its own ``rope_parameters`` entry; one RoPE shared by every layer is
  scaled for all of them;
- to the attention function of the attention-level methods and log-n scaling
  (:func:`attention_kept_layer_types`): attention, unlike a shared rotary embedding, can be
  left as it is layer by layer.

:func:`lmeval_ctx.extension.request.resolve_extension` applies both; the resolved extension
carries the outcome to the config writer and the attention patch, which do not recompute it.
"""

from __future__ import annotations

from lmeval_ctx.common.checkpoint import text_config

# Layer types whose attention reaches a bounded distance, and the config field holding the bound.
BOUNDED_LAYER_TYPES = {"sliding_attention": "sliding_window", "chunked_attention": "attention_chunk_size"}
# Layer types whose attention reaches every earlier token.
UNBOUNDED_LAYER_TYPES = ("full_attention",)
SCALE_ALL_LAYER_TYPES = "all"
SHARED_ROPE_NOTE = ("one RoPE shared by every layer type in this architecture (transformers builds one rotary "
                    "embedding), so the sliding-window layers are scaled too")


def bounded_within(cfg, layer_type: str, original_length: int | None) -> str | None:
    """Why ``layer_type`` never reaches beyond ``original_length`` tokens (``"sliding_window=32 <=
    original_max_length=128"``), or None when its attention may (unbounded, or bounded further)."""
    span_field = BOUNDED_LAYER_TYPES.get(layer_type)
    span = getattr(cfg, span_field, None) if span_field else None
    if span is None or original_length is None or span > original_length:
        return None
    return f"{span_field}={span} <= original_max_length={original_length}"


def attention_kept_layer_types(config, original_length: int) -> dict[str, str]:
    """Layer types whose attention an attention-level method (or log-n scaling) leaves as it is,
    with why: those :func:`bounded_within` the trained length, whatever their RoPE."""
    cfg = text_config(config)
    kept = {}
    for layer_type in dict.fromkeys(getattr(cfg, "layer_types", None) or ()):
        why = bounded_within(cfg, layer_type, original_length)
        if why is not None:
            kept[layer_type] = why
    return kept


def rope_layer_types(cfg) -> list[str]:
    """The layer types ``cfg.rope_parameters`` is keyed by, in the order layers first use them;
    empty for one entry shared by all layers.

    As transformers decides it: only keys that are layer types of the config count.
    """
    rope_parameters = getattr(cfg, "rope_parameters", None) or {}
    in_layer_order = dict.fromkeys(getattr(cfg, "layer_types", None) or ())  # first appearance
    return [key for key in in_layer_order if key in rope_parameters]


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


def _scaled_by_the_rule(cfg, with_rope: list[str], original_max_length: int | None
                        ) -> tuple[tuple[str, ...], dict[str, str]]:
    """The rule on the layer types with their own RoPE: ``(scaled, {kept type: why})``."""
    model_type = getattr(cfg, "model_type", "unknown")
    scaled, kept = [], {}
    for layer_type in with_rope:
        if layer_type not in UNBOUNDED_LAYER_TYPES and layer_type not in BOUNDED_LAYER_TYPES:
            raise ValueError(
                f"This {model_type} config has layer type {layer_type!r}, whose attention span is not known here, "
                f"so it cannot tell whether to scale it. Pass scale_layer_types=<types joined by '+'> "
                f"(layer types with RoPE: {', '.join(with_rope)}) or scale_layer_types={SCALE_ALL_LAYER_TYPES}."
            )
        why = bounded_within(cfg, layer_type, original_max_length)
        if why is None:
            scaled.append(layer_type)
        else:
            kept[layer_type] = f"{why}: its attention never reaches beyond the trained context"
    return tuple(scaled), kept


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
    available = rope_layer_types(cfg)
    requested = _requested_layer_types(scale_layer_types, available, getattr(cfg, "model_type", "unknown"))
    if not available:
        layer_types = tuple(dict.fromkeys(getattr(cfg, "layer_types", None) or ()))
        return (layer_types if any(t in BOUNDED_LAYER_TYPES for t in layer_types) else ()), {}
    rope_parameters = cfg.rope_parameters
    with_rope = [t for t in available if rope_parameters[t] is not None]
    kept: dict[str, str] = {t: "no RoPE in this layer type" for t in available if rope_parameters[t] is None}
    if requested is None:
        scaled, kept_by_rule = _scaled_by_the_rule(cfg, with_rope, original_max_length)
        return scaled, {**kept, **kept_by_rule}
    if any(rope_parameters[t] is None for t in requested):
        raise ValueError(f"scale_layer_types={scale_layer_types!r} names a layer type without RoPE "
                         f"({', '.join(t for t in requested if rope_parameters[t] is None)}); "
                         f"layer types with RoPE: {', '.join(with_rope)}.")
    kept.update({t: f"not in scale_layer_types={scale_layer_types!r}" for t in with_rope if t not in requested})
    return tuple(requested), kept
