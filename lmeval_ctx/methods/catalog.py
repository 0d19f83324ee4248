"""The method table: every context-extension method's name, aliases, families and options, once.

Each method is one :class:`Method` entry in :data:`METHODS`; everything else a user or
another module needs to know about the set of methods (the names in an error message or
``--help``, which methods take a factor, which options are a method's rather than the
model's, how a factor is written in a label) is derived from the table here, so adding a
method is one entry (plus its maths in :mod:`.rope`, :mod:`.attention` or :mod:`.alibi`).
Nothing here imports torch, transformers or lm-eval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ROPE, ALIBI = "rope", "alibi"


@dataclass(frozen=True)
class Method:
    """One context-extension method as users name it."""

    name: str
    kind: str  # "frequencies" (RoPE frequencies / ALiBi slopes), "attention" (relative positions), "none"
    families: frozenset  # position families it applies to: {"rope", "alibi"}
    options: tuple = ()  # its own options beyond factor (model args of the same names)
    aliases: tuple = ()  # other spellings users may write
    length_dependent: bool = False  # the scaling depends on each input's length
    summary: str = ""  # one line for help texts: what it is, and its paper

    @property
    def takes_factor(self) -> bool:
        """A rescaling set by a factor (not ``none``, not an attention-level method)."""
        return self.kind == "frequencies"


_BOTH, _ROPE_ONLY = frozenset({ROPE, ALIBI}), frozenset({ROPE})

METHODS: dict[str, Method] = {m.name: m for m in (
    Method("none", "none", _BOTH, summary="the model as trained"),
    Method("pi", "frequencies", _BOTH, aliases=("linear",),
           summary="position interpolation (Chen et al. 2023); ALiBi: slope interpolation"),
    Method("ntk", "frequencies", _BOTH, aliases=("ntk_alibi",),
           summary="NTK-aware base change (bloc97 2023); ALiBi: NTK-ALiBi"),
    Method("dynamic_ntk", "frequencies", _BOTH, aliases=("dynamic",), length_dependent=True,
           summary="NTK scaled to each input's length (emozilla 2023)"),
    Method("yarn", "frequencies", _ROPE_ONLY, ("beta_fast", "beta_slow", "attention_factor"),
           summary="YaRN (Peng et al. 2023)"),
    Method("llama3", "frequencies", _ROPE_ONLY, ("low_freq_factor", "high_freq_factor"),
           summary="Llama 3.1's frequency-band rescaling"),
    Method("ntk_by_parts", "frequencies", _ROPE_ONLY, ("beta_fast", "beta_slow"),
           summary="NTK-by-parts (bloc97 2023), YaRN without its temperature"),
    Method("longrope", "frequencies", _ROPE_ONLY, ("short_factor", "long_factor", "longrope_factors",
                                                   "attention_factor"), length_dependent=True,
           summary="LongRoPE's per-frequency factors, short and long (Ding et al. 2024; Phi-3)"),
    Method("rerope", "attention", _ROPE_ONLY, ("window",), summary="ReRoPE (Su 2023)"),
    Method("leaky_rerope", "attention", _ROPE_ONLY, ("window", "leak"), summary="Leaky ReRoPE (Su 2023)"),
    Method("self_extend", "attention", _ROPE_ONLY, ("group_size", "neighbor_window"), aliases=("selfextend",),
           summary="SelfExtend (Jin et al. 2024)"),
    Method("lm_infinite", "attention", _BOTH, ("global_tokens", "local_window"),
           summary="LM-Infinite's Λ mask and distance ceiling (Han et al. 2023)"),
    Method("dual_chunk", "attention", _ROPE_ONLY, ("chunk_size", "local_window"),
           summary="dual chunk attention (An et al. 2024)"),
    Method("string", "attention", _ROPE_ONLY, ("shift", "local_window"),
           summary="STRING, far positions shifted onto trained ones (An et al. 2024)"),
    Method("streaming_llm", "attention", _ROPE_ONLY, ("n_sink", "window"), aliases=("streamingllm",),
           summary="StreamingLLM's attention sinks and recent window (Xiao et al. 2023)"),
)}

# Options every RoPE method combines with: a base override (applied before the method) and
# log-n query scaling (applied in attention).
MODIFIER_OPTIONS = frozenset({"rope_theta", "logn"})

# -- derived views of the table -------------------------------------------------------------
METHOD_NAMES = tuple(METHODS)
METHOD_ALIASES = {alias: m.name for m in METHODS.values() for alias in m.aliases}
ALL_METHOD_SPELLINGS = METHOD_NAMES + tuple(METHOD_ALIASES)
ATTENTION_METHODS = tuple(name for name, m in METHODS.items() if m.kind == "attention")
# An option table per kind of method: {method: frozenset of its own options}
ATTENTION_METHOD_OPTIONS = {name: frozenset(METHODS[name].options) for name in ATTENTION_METHODS}
ROPE_METHOD_OPTIONS = {name: frozenset(m.options) for name, m in METHODS.items() if m.kind != "attention"}
# Attention-level methods that also have an ALiBi form (applied inside the ALiBi attention).
ALIBI_ATTENTION_METHODS = tuple(name for name in ATTENTION_METHODS if ALIBI in METHODS[name].families)
ROPE_ONLY_METHODS = tuple(name for name, m in METHODS.items() if m.families == _ROPE_ONLY)
LENGTH_DEPENDENT_METHODS = frozenset(name for name, m in METHODS.items() if m.length_dependent)
# Every method's own options (not the modifiers): a sweep point sets them, never --model_args.
METHOD_OWN_OPTIONS = frozenset(option for m in METHODS.values() for option in m.options)
# Every option model args may carry for a method, in table order, then the modifiers.
METHOD_OPTION_NAMES = tuple(dict.fromkeys(option for m in METHODS.values() for option in m.options)) \
    + tuple(sorted(MODIFIER_OPTIONS))


def takes_factor(method: str) -> bool:
    """Whether ``method`` (canonical) is a rescaling set by a factor."""
    return METHODS[method].takes_factor


def method_help() -> str:
    """The methods for a ``--help`` text: ``none, pi (alias linear), ...``."""
    return ", ".join(name + (f" (alias {', '.join(m.aliases)})" if m.aliases else "") for name, m in METHODS.items())


def canonical_method(scaling: str | None, *, family: str | None = None) -> str:
    """Return the canonical method name for a user spelling, or raise ValueError.

    ``family`` ("rope" or "alibi") enables the family checks: ``ntk_alibi`` is only
    meaningful on ALiBi models, a RoPE-only method (``yarn``, ``rerope``, ...) only on RoPE ones.
    """
    raw = "none" if scaling is None else str(scaling).strip().lower()
    if raw in ("", "null"):
        raw = "none"
    if raw not in ALL_METHOD_SPELLINGS:
        raise ValueError(
            f"scaling={scaling!r} is not a known context-extension method. "
            f"Use one of: {', '.join(METHOD_NAMES)} "
            f"(aliases: {', '.join(f'{a}={c}' for a, c in METHOD_ALIASES.items())})."
        )
    method = METHOD_ALIASES.get(raw, raw)
    if family == ROPE and raw == "ntk_alibi":
        raise ValueError(
            "scaling='ntk_alibi' is the ALiBi form of NTK scaling, but this model uses RoPE. "
            "Use scaling=ntk for NTK-aware RoPE scaling."
        )
    if family == ALIBI and ALIBI not in METHODS[method].families:
        what = ("changes the relative positions RoPE rotates by" if method in ATTENTION_METHODS
                else "rescales RoPE frequencies")
        usable = ", ".join(name for name, m in METHODS.items() if ALIBI in m.families and name != "none")
        raise ValueError(
            f"scaling={method!r} {what} and has no ALiBi form here; this model uses ALiBi. "
            f"Use one of the ALiBi methods: {usable} (pi: slope interpolation, ntk: NTK-ALiBi)."
        )
    return method


def validate_factor(factor, *, name: str = "factor") -> float:
    """Return ``factor`` as a float >= 1, or raise ValueError naming the fix."""
    try:
        value = float(factor)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name}={factor!r} is not a number. Pass the scale factor L'/L as a number >= 1, e.g. {name}=4."
        ) from None
    if not math.isfinite(value) or value < 1.0:
        raise ValueError(
            f"{name}={factor!r} must be a finite number >= 1 (it is the ratio of the evaluated "
            f"length to the trained length). To evaluate inside the trained window use scaling=none."
        )
    return value


def factor_text(factor: float | None) -> str:
    """The factor as written, shortest exact form: 2.0 -> '2', 2.0000001 -> '2.0000001', None -> ''."""
    if factor is None:
        return ""
    text = repr(float(factor))
    return text[:-2] if text.endswith(".0") else text
