"""A context extension's life cycle on one model, in one place.

1. **resolve** the request against the config (:func:`lmeval_ctx.extension.request.resolve_extension`),
   on a copy restored to the config's own fields, so a bad request changes nothing;
2. **write** it into the config (:func:`lmeval_ctx.extension.request.apply_to_config`), after
   restoring the config's own RoPE and length fields (a second method never stacks on a first);
3. on a built model, **rebuild** its rotary modules from the written config
   (:mod:`lmeval_ctx.extension.rope.rotary`) or **install** the ALiBi slopes (:mod:`lmeval_ctx.extension.alibi.install`),
   and install or remove the attention function of attention-level methods and log-n scaling
   (:mod:`lmeval_ctx.extension.attention.patch`);
4. **record** what runs, with the window it is evaluated with (:mod:`lmeval_ctx.extension.window`),
   for the log and lm-eval's results.

:func:`extend` runs the whole cycle. Its users:

- ``ctx-hf`` loading a checkpoint: its model args become an :class:`ExtensionRequest` before
  anything loads; ``extend(config, request.arguments)`` runs when lm-eval has read the config,
  before transformers builds the model from the written config (which then computes its rotary
  frequencies itself), and :func:`attach` on the built model for steps 3 and 4;
- ``ctx-hf`` given a built model, and re-application (``CtxHFLM.apply_extension``, the
  sweep's one load): ``extend(config, request, model=model, previous=state)``;
- ``ctx-vllm``: ``extend`` on a copy of the config, translated into engine arguments.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Callable

from lmeval_ctx.common.args import parse_bool
from lmeval_ctx.common.checkpoint import text_config
from lmeval_ctx.extension.request import EXTENSION_ARGS, ContextExtension, apply_to_config, resolve_extension
from lmeval_ctx.extension.window import evaluation_window
from lmeval_ctx.methods.catalog import ALIBI_ATTENTION_METHODS, METHOD_OWN_OPTIONS

# The method's own arguments: a re-application does not carry them over from the previous method
# (the modifiers rope_theta and logn, which combine with every method, are carried over).
METHOD_ARGS = ("factor", *sorted(METHOD_OWN_OPTIONS))
# The config fields apply_to_config may change (RoPE's, dynamic NTK's original length, MPT's window).
EXTENSION_FIELDS = ("rope_parameters", "max_position_embeddings", "max_seq_len")


@dataclass(frozen=True)
class ExtensionRequest:
    """What ``ctx-hf`` was asked for, read from its model args before anything loads."""

    arguments: dict  # every name of EXTENSION_ARGS (None where not given), as resolve_extension takes them
    # the attention engine ({"attention": attention_engine, None: auto}; lmeval_ctx.extension.flex): the
    # attention-level methods' on RoPE models, passed to install_alibi_scaling on ALiBi models
    alibi_options: dict

    @classmethod
    def from_model_args(cls, extension_args: dict, *, max_length=None, attention_engine=None,
                        alibi_attention=None) -> "ExtensionRequest":
        """``extension_args``: the model args named in EXTENSION_ARGS. Flags and the engine are parsed
        here, so a misspelt one fails before the weights load; ``alibi_attention`` is the deprecated
        name of ``attention_engine``."""
        from lmeval_ctx.extension.flex import engine_argument

        arguments = full_request({"scaling": "none", **extension_args, "max_length": max_length})
        arguments["replace_rope_scaling"] = parse_bool(arguments["replace_rope_scaling"] or False,
                                                       "replace_rope_scaling")
        return cls(arguments, {"attention": engine_argument(attention_engine, alibi_attention)})


@dataclass(frozen=True)
class ExtensionState:
    """One model's context extension: what was asked, what runs, and what the config held before."""

    extension: ContextExtension
    request: dict  # the arguments ``extension`` was resolved from
    created_request: dict  # the arguments the model was created with: defaults for re-application
    shipped: dict  # the config's own values of the fields a method changes
    applied: dict = field(default_factory=dict)  # what was written into the config or installed
    record: dict | None = None  # the JSON record; set once the model is attached
    alibi_options: dict = field(default_factory=dict)  # passed through to install_alibi_scaling
    window: int | None = None  # the evaluation window (lmeval_ctx.extension.window); set once attached


def full_request(request: dict) -> dict:
    """``request`` with every argument of :data:`EXTENSION_ARGS` (None where not given)."""
    unknown = set(request) - set(EXTENSION_ARGS)
    if unknown:
        raise TypeError(f"Unknown context-extension argument(s): {', '.join(sorted(unknown))}; "
                        f"known: {', '.join(EXTENSION_ARGS)}.")
    return {name: request.get(name) for name in EXTENSION_ARGS}


def reapplication_request(previous: ExtensionState, scaling, changes: dict) -> dict:
    """The request of a re-application: the model's creation arguments, without the previous
    method's own (factor, YaRN options), updated with ``changes``."""
    return full_request({**previous.created_request, **dict.fromkeys(METHOD_ARGS), **changes, "scaling": scaling})


def snapshot_extension_fields(config) -> dict:
    """The config's own values of the fields a method changes, to restore before applying another."""
    cfg = text_config(config)
    return {name: copy.deepcopy(getattr(cfg, name)) for name in EXTENSION_FIELDS if hasattr(cfg, name)}


def restore_extension_fields(config, snapshot: dict) -> None:
    cfg = text_config(config)
    for name, value in snapshot.items():
        setattr(cfg, name, copy.deepcopy(value))


def check_alibi_options(extension: ContextExtension, alibi_options: dict) -> None:
    """``attention_engine=transformers`` applies to ALiBi models, and not with the methods that need
    ctx-hf's own ALiBi attention (lm_infinite)."""
    attention = alibi_options.get("attention")
    if attention == "transformers" and extension.family != "alibi":
        raise ValueError(
            f"attention_engine={attention!r} only applies to ALiBi models (BLOOM, MPT, "
            f"Falcon with alibi=True); this {extension.model_type} model uses {extension.family} positions. "
            "Use attention_engine=auto, flex or blocks."
        )
    if extension.family == "alibi" and extension.method in ALIBI_ATTENTION_METHODS and attention == "transformers":
        raise ValueError(
            f"scaling={extension.method} masks keys and caps distances inside ctx-hf's ALiBi attention; "
            "attention_engine='transformers' keeps transformers' own attention, which cannot. "
            "Use attention_engine=auto (or flex, or blocks), or another scaling.")


def extend(config, request: dict, *, model=None, previous: ExtensionState | None = None,
           default_window: int | Callable[[], int] | None = None, alibi_options: dict | None = None
           ) -> ExtensionState:
    """Resolve ``request`` against ``config`` and write it in; with ``model``, rebuild or install and record.

    ``config`` is edited in place (the model's own config for a built model). ``previous``:
    the state of an earlier application to this config, whose shipped fields are restored
    first. ``default_window``: the window lm-eval uses when neither ``max_length`` nor the
    method sets one (an int, or a function called once the config is written).
    Raises ValueError, leaving config and model as they were, for a bad request.
    """
    request = full_request(request)
    if alibi_options is None:
        alibi_options = previous.alibi_options if previous is not None else {}
    shipped = previous.shipped if previous is not None else snapshot_extension_fields(config)
    probe = copy.deepcopy(config)
    restore_extension_fields(probe, shipped)
    extension = resolve_extension(probe, **request)
    check_alibi_options(extension, alibi_options)
    restore_extension_fields(config, shipped)
    applied = apply_to_config(config, extension)
    state = ExtensionState(extension, request, previous.created_request if previous is not None else request,
                           shipped, applied, alibi_options=dict(alibi_options))
    if model is None:
        return state
    return attach(state, model, default_window=default_window, rebuild_rotary=True)


def attach(state: ExtensionState, model, *, default_window: int | Callable[[], int] | None = None,
           rebuild_rotary: bool = False) -> ExtensionState:
    """Steps 3 and 4 on the built ``model``: rebuild its rotary modules (when ``rebuild_rotary``;
    a model built from the written config already has them) or install the ALiBi slopes; record."""
    # imported here: they need torch and transformers' model code, which resolving and writing
    # (all ctx-vllm does) do not
    from lmeval_ctx.extension.alibi.install import install_alibi_scaling, slopes_in_use
    from lmeval_ctx.extension.alibi.scaling import AlibiScaling
    from lmeval_ctx.extension.attention import patch as attention_patch
    from lmeval_ctx.extension.flex import engine_record
    from lmeval_ctx.extension.rope.rotary import rebuild_rotary_embeddings

    ext, applied = state.extension, dict(state.applied)
    engine = state.alibi_options.get("attention") or "auto"
    if ext.attention_level or ext.family == "alibi":  # the device is known now: say which engine runs
        applied["attention_engine"] = engine_record(engine, next(model.parameters()).device, ext.family)
    if ext.family == "rope" and rebuild_rotary:
        rebuild_rotary_embeddings(model)
    if ext.attention_level:  # after the rebuild: it reads the rotary frequencies
        applied.update(attention_patch.install(model, ext, engine))
    elif attention_patch.installed(model):
        attention_patch.remove(model)
    window = evaluation_window(ext, default_window)
    if ext.family == "alibi":
        # every ALiBi model, scaling=none included: the attention path (memory linear in the
        # length) is installed with the slopes
        install_alibi_scaling(model, AlibiScaling.from_extension(ext), **state.alibi_options)
        if ext.method != "none":
            applied["alibi_slopes"] = slopes_in_use(model, window)
        if ext.length_dependent:
            applied["alibi_slopes_note"] = "at the full window; recomputed from each input's length"
    return replace(state, applied=applied, window=window, record=ext.record({**applied, "max_length": window}))
