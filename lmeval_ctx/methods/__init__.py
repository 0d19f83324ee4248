"""Context-extension methods as pure functions, one registry per position family.

The maths lives in :mod:`lmeval_ctx.methods.rope` (what goes into a transformers
``rope_parameters`` dict), :mod:`lmeval_ctx.methods.attention` (the relative position
attention-level methods assign to each query-key pair) and :mod:`lmeval_ctx.methods.alibi`
(ALiBi slopes).
This module holds the one vocabulary both families share and its validation.
Nothing here imports lm-eval or transformers' model classes.
"""

from __future__ import annotations

import math

# The user-facing names; the aliases map onto them.
# Attention-level methods (RoPE models): they keep the frequencies and change the relative
# position each query-key pair is given (and, for lm_infinite, which keys a query sees).
ATTENTION_METHODS = ("rerope", "leaky_rerope", "self_extend", "lm_infinite", "dual_chunk")
# Their options (the registry in lmeval_ctx.methods.attention validates the values).
ATTENTION_METHOD_OPTIONS = {
    "rerope": frozenset({"window"}),
    "leaky_rerope": frozenset({"window", "leak"}),
    "self_extend": frozenset({"group_size", "neighbor_window"}),
    "lm_infinite": frozenset({"global_tokens", "local_window"}),
    "dual_chunk": frozenset({"chunk_size", "local_window"}),
}
# Attention-level methods that also have an ALiBi form: the bias -m_h * rel(i, j) with the
# method's relative position, and its hidden keys, applied in lmeval_ctx.extension.alibi.attention.
ALIBI_ATTENTION_METHODS = ("lm_infinite",)
# Methods for RoPE models only.
ROPE_ONLY_METHODS = ("yarn", "llama3", "ntk_by_parts") + tuple(
    method for method in ATTENTION_METHODS if method not in ALIBI_ATTENTION_METHODS)

METHOD_NAMES = ("none", "pi", "ntk", "dynamic_ntk", "yarn", "llama3", "ntk_by_parts") + ATTENTION_METHODS
METHOD_ALIASES = {"linear": "pi", "dynamic": "dynamic_ntk", "ntk_alibi": "ntk", "selfextend": "self_extend"}
ALL_METHOD_SPELLINGS = METHOD_NAMES + tuple(METHOD_ALIASES)

# Methods whose position scaling depends on the current sequence length, so a
# token's loss depends on how long the whole input is.
LENGTH_DEPENDENT_METHODS = frozenset({"dynamic_ntk"})


def canonical_method(scaling: str | None, *, family: str | None = None) -> str:
    """Return the canonical method name for a user spelling, or raise ValueError.

    ``family`` ("rope" or "alibi") enables the family-specific checks:
    ``ntk_alibi`` is only meaningful on ALiBi models, ``yarn`` only on RoPE ones.
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
    if family == "rope" and raw == "ntk_alibi":
        raise ValueError(
            "scaling='ntk_alibi' is the ALiBi form of NTK scaling, but this model uses RoPE. "
            "Use scaling=ntk for NTK-aware RoPE scaling."
        )
    if family == "alibi" and method in ROPE_ONLY_METHODS:
        what = ("changes the relative positions RoPE rotates by" if method in ATTENTION_METHODS
                else "rescales RoPE frequencies")
        raise ValueError(
            f"scaling={method!r} {what} and has no ALiBi form here; this model uses ALiBi. "
            "Use scaling=pi (slope interpolation), ntk (NTK-ALiBi), dynamic_ntk or lm_infinite (LM-Infinite's "
            "mask and distance ceiling)."
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
