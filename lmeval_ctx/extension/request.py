"""Resolve a context-extension request against a model config, and write it in.

``resolve_extension`` turns the user's arguments (``scaling``, ``factor``, ``original_max_length``,
``max_length``, the methods' options) and a config into a validated :class:`ContextExtension`, in
named steps: the options, what the method is written over (the trained length and the layer types
it scales, :mod:`lmeval_ctx.extension.layers`), then its scale and window. ``apply_to_config``
writes it into the config before the model is built (RoPE: :mod:`lmeval_ctx.extension.rope.config`);
ALiBi slopes are installed on the built model (:mod:`lmeval_ctx.extension.alibi.install`). This
module reads configs only; it imports no model classes.
"""

from __future__ import annotations

import copy
import inspect
import math
from dataclasses import dataclass, field, replace
from typing import Any

from lmeval_ctx.common.args import parse_optional_bool
from lmeval_ctx.common.checkpoint import text_config
from lmeval_ctx.extension.architectures import alibi_architecture, check_attention_architecture
from lmeval_ctx.extension.layers import (
    SHARED_ROPE_NOTE,
    attention_kept_layer_types,
    layer_types_to_scale,
    rope_layer_types,
)
from lmeval_ctx.extension.rope.config import (
    UNSCALABLE_ROPE_TYPES,
    length_dependent_entries,
    rope_entries,
    rope_type,
    shipped_scalings,
    write_rope_parameters,
)
from lmeval_ctx.methods.alibi import LENGTH_SCALED_METHODS
from lmeval_ctx.methods.catalog import (
    ALIBI_ATTENTION_METHODS,
    ATTENTION_METHOD_OPTIONS,
    ATTENTION_METHODS,
    LENGTH_DEPENDENT_METHODS,
    METHOD_OPTION_NAMES,
    ROPE_METHOD_OPTIONS,
    canonical_method,
    validate_factor,
)
from lmeval_ctx.methods.rope import LIST_OPTIONS, read_rope_options, validate_rope_options

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
    factor: float | None  # None: scaling=none, attention-level methods; dynamic NTK-ALiBi: the scale at the window
    original_max_length: int | None
    max_length: int | None  # the evaluation window; None = lm-eval's default
    # the method's options (YaRN's beta_fast, ..., an attention method's window, ...) and the
    # modifiers rope_theta (a base override) and logn (true: log-n query scaling)
    options: dict = field(default_factory=dict)
    replace_rope_scaling: bool = False
    shipped_rope_parameters: dict | None = None  # the config's own, before any change
    # Layer types (``layer_types``): those keyed in ``rope_parameters`` (empty: one RoPE shared by
    # every layer), the types the method is written into, and those keeping their trained RoPE, with why
    # (lmeval_ctx.extension.layers.layer_types_to_scale).
    rope_layer_types: tuple[str, ...] = ()
    scaled_layer_types: tuple[str, ...] = ()
    kept_layer_types: dict = field(default_factory=dict)
    # Layer types whose attention an attention-level method or logn leaves as it is, with why
    # (lmeval_ctx.extension.layers.attention_kept_layer_types); read by the attention patch.
    attention_kept_layer_types: dict = field(default_factory=dict)

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
        return length_dependent_entries(self.shipped_rope_parameters, bool(self.rope_layer_types), self.method,
                                        self.scaled_layer_types)

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
            out["alibi_positions"] = self._alibi_positions()
        if applied:
            out.update(applied)
        return out

    def _alibi_positions(self) -> dict:
        """What an attention-level method does to an ALiBi model's positions, for the record."""
        first, last = self.options["global_tokens"], self.options["local_window"]
        return {
            "slopes": "the model's own (unscaled)",
            "visible_keys": (f"the first {first} tokens and the last {last} keys (key j seen by query i iff "
                             f"j < {first} or i - j < {last})"),
            "bias": f"-slope * min(i - j, {self.original_max_length})",
        }


def position_family(config) -> str:
    """``"alibi"``, ``"rope"`` or ``"absolute"`` (learned or no known position scheme)."""
    cfg = text_config(config)
    if alibi_architecture(cfg) is not None:  # lmeval_ctx.extension.architectures: Falcon only with alibi=True
        return "alibi"
    if getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_theta", None):
        return "rope"
    return "absolute"


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


# -- resolution, step by step ---------------------------------------------------------------

@dataclass(frozen=True)
class _Target:
    """What a method is written over: the family, the trained length and the layer types it scales."""

    cfg: Any  # the decoder's config
    family: str
    model_type: str
    method: str
    requested: str
    original: int | None  # the trained context length
    rope_parameters: dict  # the config's own (a copy; empty for ALiBi)
    scaled_layer_types: tuple[str, ...] = ()
    kept_layer_types: dict = field(default_factory=dict)
    written: dict = field(default_factory=dict)  # the RoPE entries the method is written over ({type or None: params})

    @property
    def shipped(self) -> dict:
        """The entries the method is written over that already carry a scaling."""
        return shipped_scalings(self.written) if self.method != "none" else {}

    def extension(self, method: str, factor, window: int | None, options: dict,
                  replace_rope_scaling: bool) -> ContextExtension:
        """The resolved extension: ``method`` at ``factor`` and ``window`` on this target."""
        ext = ContextExtension(
            method, self.requested, self.family, self.model_type, factor, self.original, window, options,
            replace_rope_scaling=replace_rope_scaling, shipped_rope_parameters=self.rope_parameters or None,
            rope_layer_types=tuple(rope_layer_types(self.cfg)), scaled_layer_types=self.scaled_layer_types,
            kept_layer_types=self.kept_layer_types)
        if not ext.attention_level:
            return ext
        return replace(ext, attention_kept_layer_types=attention_kept_layer_types(self.cfg, self.original))


def _method_options(options: dict, method: str, family: str, model_type: str) -> dict:
    """The options given (not None), checked against what ``method`` takes on this family and converted."""
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
    return read_rope_options(method, {k: (v if k in ATTENTION_ONLY_OPTIONS | LIST_OPTIONS else True if k == "logn"
                                          else float(v)) for k, v in options.items() if v is not None})


def _absolute_positions(cfg, method: str, requested: str, factor, window: int | None) -> ContextExtension:
    """A model with learned absolute positions: evaluated as trained, within its learned positions."""
    model_type = getattr(cfg, "model_type", "unknown")
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
    return ContextExtension(method, requested, "absolute", model_type, None, learned, window)


def _target(cfg, family: str, method: str, requested: str, original_max_length, scale_layer_types) -> _Target:
    """The trained length and the layer types ``method`` scales (:mod:`lmeval_ctx.extension.layers`)."""
    model_type = getattr(cfg, "model_type", "unknown")
    rope_parameters = copy.deepcopy(getattr(cfg, "rope_parameters", None) or {}) if family == "rope" else {}
    if family != "rope" and scale_layer_types is not None:
        raise ValueError(f"scale_layer_types={scale_layer_types!r} chooses RoPE layer types; this {model_type} "
                         f"model uses {family} positions. Remove it.")
    entries = rope_entries(rope_parameters, per_layer_type=bool(rope_layer_types(cfg)))
    if original_max_length is not None:
        original = _positive_int(original_max_length, "original_max_length")
    else:
        original, _ = _original_length_from_config(cfg, shipped_scalings(entries))
    scaled, kept = layer_types_to_scale(cfg, original, scale_layer_types) if family == "rope" else ((), {})
    written = {t: p for t, p in entries.items() if t is None or t in scaled}
    return _Target(cfg, family, model_type, method, requested, original, rope_parameters, scaled, kept, written)


def _check_target(target: _Target, replace_rope_scaling: bool) -> None:
    """Refuse a method that would change nothing, or be written over RoPE it cannot (or may not) replace."""
    method, requested, model_type = target.method, target.requested, target.model_type
    if method == "none":
        return
    if target.kept_layer_types and not target.scaled_layer_types:
        raise ValueError(
            f"scaling={requested!r} would change nothing on this {model_type} model: no layer type's attention "
            f"reaches beyond the trained context ({'; '.join(f'{t}: {why}' for t, why in target.kept_layer_types.items())}). "
            "Use scaling=none, or pass scale_layer_types=all to scale them anyway."
        )
    unscalable = {t: rope_type(p) for t, p in target.written.items() if rope_type(p) in UNSCALABLE_ROPE_TYPES}
    if unscalable:
        where = ", ".join(f"{t or 'all layers'}: rope_type={kind}" for t, kind in unscalable.items())
        raise ValueError(
            f"scaling={requested!r} cannot be written over this {model_type} model's RoPE ({where}): that RoPE "
            "type lays out the base frequencies itself, which these methods do not rewrite."
            + (" Pass scale_layer_types=<other layer types> to leave it as trained." if target.scaled_layer_types else "")
        )
    if target.shipped and not replace_rope_scaling:
        desc = "; ".join(f"{layer + ': ' if layer else ''}rope_type={rope_type(p)}"
                         + (f", factor={p['factor']}" if "factor" in p else "") for layer, p in target.shipped.items())
        raise ValueError(
            f"This {model_type} model already ships a RoPE scaling ({desc}). Applying scaling={requested!r} "
            "on top would scale its positions twice. Evaluate it as shipped with scaling=none, or pass "
            "replace_rope_scaling=True to replace the shipped scaling with this one (the original length "
            "then comes from the shipped original_max_position_embeddings or original_max_length)."
        )
    if target.original is None:
        raise ValueError(
            f"original_max_length is required: this {model_type} config records no trained context length "
            f"(none of {', '.join(ORIGINAL_LENGTH_FIELDS)}). Pass the length the model was trained on, "
            "e.g. original_max_length=2048 for BLOOM."
        )


def _check_attention_level(target: _Target, options: dict) -> None:
    """An attention-level method or log-n scaling needs a supported RoPE architecture (and logn the trained length)."""
    if target.family != "rope":  # ALiBi models run lm_infinite in their own attention (extension.alibi.attention)
        return
    if target.method in ATTENTION_METHODS or options.get("logn"):
        check_attention_architecture(f"scaling={target.requested}" if target.method in ATTENTION_METHODS
                                     else "logn=true", target.model_type)
    if options.get("logn") and target.original is None:
        raise ValueError(
            f"logn=true scales queries by log(position)/log(original_max_length), but this {target.model_type} config "
            "records no trained context length. Pass original_max_length=<the length it was trained on>."
        )


def _unscaled(target: _Target, factor, window: int | None, options: dict) -> tuple[None, int | None, dict]:
    """``scaling=none`` and the attention-level methods: no factor; the window as given."""
    if factor is not None:
        raise ValueError(
            "factor only applies together with a scaling method; remove it for scaling=none "
            "(to extrapolate to a longer window, pass max_length instead)." if target.method == "none" else
            f"factor only applies together with a RoPE rescaling; remove it for scaling={target.requested} (an "
            "attention-level method's reach is set by its own options; pass max_length for the window)."
        )
    if target.method in ATTENTION_METHODS:
        from lmeval_ctx.methods.attention import resolve_attention_options  # needs torch

        options = {**options, **resolve_attention_options(target.method, options, target.original, window)}
    return None, window, options


def _length_scaled_alibi(target: _Target, factor, window: int | None) -> tuple[float, int]:
    """Dynamic NTK-ALiBi: each input is scaled by its own length over the trained length, so there is
    no factor to give; the window is ``max_length``, and the factor recorded is the scale at its end."""
    original, requested = target.original, target.requested
    if factor is not None:
        raise ValueError(
            f"factor={factor!r} has no effect with scaling={requested} on this {target.model_type} ALiBi model: "
            f"dynamic NTK-ALiBi scales each input by its own length, a = max(1, length / original_max_length="
            f"{original}) (docs/methods.md). Remove factor and pass the window instead: max_length=<factor x "
            f"original_max_length> (here {factor} x {original})."
        )
    if window is None:
        raise ValueError(
            f"scaling={requested!r} on this {target.model_type} ALiBi model needs max_length=<evaluated window>: "
            f"each input is scaled by its length / original_max_length={original}, up to the window "
            f"(e.g. max_length={4 * original})."
        )
    if window < original:
        raise ValueError(f"max_length={window} is smaller than original_max_length={original}, so no input would "
                         "be scaled. Use scaling=none inside the trained window.")
    return window / original, window


def _scale_and_window(target: _Target, factor, window: int | None) -> tuple[float, int]:
    """A rescaling's factor and window: each from the other (``window = original x factor``)."""
    original, requested = target.original, target.requested
    if factor is not None:
        factor_value = validate_factor(factor)
        return factor_value, window if window is not None else int(round(original * factor_value))
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
    return window / original, window


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
    ...); ``scale_layer_types`` overrides :func:`lmeval_ctx.extension.layers.layer_types_to_scale`'s
    rule. ``rope_theta`` (a RoPE base override, applied before the method) and ``logn`` (log-n
    query scaling) combine with every RoPE method; ``window`` ... ``chunk_size`` are the
    attention-level methods' options (:mod:`lmeval_ctx.methods.attention`).
    """
    replace_rope_scaling = bool(parse_optional_bool(replace_rope_scaling, "replace_rope_scaling"))
    cfg = text_config(config)
    family = position_family(config)
    requested = "none" if scaling is None else str(scaling)
    method = canonical_method(scaling, family=family if family != "absolute" else None)
    options = _method_options(options, method, family, getattr(cfg, "model_type", "unknown"))
    window = None if max_length is None else _positive_int(max_length, "max_length")
    if family == "absolute":
        return _absolute_positions(cfg, method, requested, factor, window)
    target = _target(cfg, family, method, requested, original_max_length, scale_layer_types)
    _check_target(target, replace_rope_scaling)
    _check_attention_level(target, options)
    if method == "none" or method in ATTENTION_METHODS:
        factor, window, options = _unscaled(target, factor, window, options)
    elif family == "alibi" and method in LENGTH_SCALED_METHODS:
        factor, window = _length_scaled_alibi(target, factor, window)
    else:
        factor, window = _scale_and_window(target, factor, window)
    return target.extension(method, factor, window, options, bool(target.shipped) and replace_rope_scaling)


# The request's arguments, ctx-hf's and ctx-vllm's names for them: resolve_extension's keywords,
# then every method's options (from the method table, lmeval_ctx.methods.catalog).
EXTENSION_ARGS = tuple(name for name, parameter in inspect.signature(resolve_extension).parameters.items()
                       if parameter.kind is parameter.KEYWORD_ONLY) + METHOD_OPTION_NAMES


# -- writing into the config ------------------------------------------------------------------

def apply_to_config(config, ext: ContextExtension) -> dict:
    """Write ``ext`` into ``config`` before the model is built; return what was applied.

    RoPE: ``rope_parameters`` (:func:`lmeval_ctx.extension.rope.config.write_rope_parameters`).
    MPT: raise ``max_seq_len`` to cover the window, since MPT builds its ALiBi bias for that
    many positions. ALiBi slopes themselves are installed on the built model.
    """
    cfg = text_config(config)
    applied: dict[str, Any] = {}
    if ext.family == "rope":
        applied["rope_parameters"] = write_rope_parameters(config, ext)
    elif ext.family == "alibi" and ext.model_type == "mpt" and ext.max_length:
        if cfg.max_seq_len < ext.max_length:
            applied["mpt_max_seq_len"] = {"from": cfg.max_seq_len, "to": ext.max_length}
            cfg.max_seq_len = ext.max_length
    return applied
