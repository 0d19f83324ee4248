"""RoPE context-extension methods as transformers ``rope_parameters``.

Each method is one pure function with the same signature: it takes the model's
own (unscaled) RoPE parameters and returns the parameters to write into the
config before the model is built. transformers then computes the inverse
frequencies with its own ``ROPE_INIT_FUNCTIONS``, so PI, dynamic NTK and YaRN
are exactly transformers' implementations; static NTK-aware scaling, which
transformers has no type for, is a change of ``rope_theta``.

``scaling=none`` has no entry: it writes nothing. Formulas and decisions: the
project's docs/methods.md. References:
- PI: Chen et al. 2023, "Extending Context Window of Large Language Models via
  Positional Interpolation", arXiv:2306.15595.
- NTK-aware and dynamic NTK: bloc97 and emozilla (reddit r/LocalLLaMA, 2023).
- YaRN: Peng et al. 2023, "YaRN: Efficient Context Window Extension of Large
  Language Models", arXiv:2309.00071; NTK-by-parts (bloc97) is its frequency
  ramp without the attention temperature.
- llama3: Meta's Llama 3.1 rope scaling (transformers ``llama3`` rope type).

Two modifiers combine with every method: ``rope_theta`` (a base override, as
HELMET offers, applied to the base parameters before the method) and ``logn``
(log-n query scaling, applied in attention by :mod:`lmeval_ctx.extension.attention.patch`).
"""

from __future__ import annotations

from typing import Callable

from lmeval_ctx.methods.catalog import MODIFIER_OPTIONS, ROPE_METHOD_OPTIONS

# Keys that describe a scaling rather than the base rotary embedding; they are
# dropped from the model's own parameters before a method writes its own.
SCALING_KEYS = frozenset(
    {
        "rope_type",
        "type",
        "factor",
        "original_max_position_embeddings",
        "beta_fast",
        "beta_slow",
        "attention_factor",
        "mscale",
        "mscale_all_dim",
        "low_freq_factor",
        "high_freq_factor",
        "short_factor",
        "long_factor",
        "truncate",
    }
)


def base_rope_parameters(rope_parameters: dict) -> dict:
    """The unscaled part of ``rope_parameters`` (``rope_theta``, ``partial_rotary_factor``, ...)."""
    return {k: v for k, v in rope_parameters.items() if k not in SCALING_KEYS}


def ntk_rope_theta(rope_theta: float, factor: float, rotary_dim: int) -> float:
    """NTK-aware base: ``b * s**(d/(d-2))`` with ``d`` the rotary dimension per head."""
    if rotary_dim <= 2:
        raise ValueError(
            f"NTK-aware scaling needs a rotary dimension > 2, got {rotary_dim}; "
            "this model rotates too few dimensions per head for the formula b*s^(d/(d-2))."
        )
    return float(rope_theta) * float(factor) ** (rotary_dim / (rotary_dim - 2))


def pi_rope_parameters(base: dict, factor: float, original_max_position_embeddings: int,
                       rotary_dim: int, options: dict) -> dict:
    """Position Interpolation (Chen et al. 2023): every ``theta_j -> theta_j / s`` (transformers ``linear``)."""
    return {**base, "rope_type": "linear", "factor": float(factor)}


def ntk_rope_parameters(base: dict, factor: float, original_max_position_embeddings: int,
                        rotary_dim: int, options: dict) -> dict:
    """Static NTK-aware scaling (bloc97 2023): base ``b -> b * s**(d/(d-2))``, highest frequency unchanged."""
    theta = ntk_rope_theta(base["rope_theta"], factor, rotary_dim)
    return {**base, "rope_type": "default", "rope_theta": theta}


def dynamic_ntk_rope_parameters(base: dict, factor: float, original_max_position_embeddings: int,
                                rotary_dim: int, options: dict) -> dict:
    """Dynamic NTK (emozilla): NTK base recomputed from the current length (transformers ``dynamic``).

    transformers reads the original length from ``config.max_position_embeddings``;
    the caller keeps that field equal to ``original_max_position_embeddings``.
    """
    return {**base, "rope_type": "dynamic", "factor": float(factor)}


def yarn_rope_parameters(base: dict, factor: float, original_max_position_embeddings: int,
                         rotary_dim: int, options: dict) -> dict:
    """YaRN (Peng et al. 2023): per-frequency ramp between PI and no change, plus attention scaling."""
    params = {
        **base,
        "rope_type": "yarn",
        "factor": float(factor),
        "original_max_position_embeddings": int(original_max_position_embeddings),
    }
    for key in ("beta_fast", "beta_slow", "attention_factor"):
        if options.get(key) is not None:
            params[key] = float(options[key])
    return params


def llama3_rope_parameters(base: dict, factor: float, original_max_position_embeddings: int,
                           rotary_dim: int, options: dict) -> dict:
    """Llama 3.1's scaling (transformers ``llama3``): wavelengths above ``L/low_freq_factor``
    divided by ``factor``, below ``L/high_freq_factor`` kept, a smooth ramp between."""
    return {
        **base,
        "rope_type": "llama3",
        "factor": float(factor),
        "low_freq_factor": llama3_option(options, "low_freq_factor"),
        "high_freq_factor": llama3_option(options, "high_freq_factor"),
        "original_max_position_embeddings": int(original_max_position_embeddings),
    }


def ntk_by_parts_rope_parameters(base: dict, factor: float, original_max_position_embeddings: int,
                                 rotary_dim: int, options: dict) -> dict:
    """NTK-by-parts (bloc97; Peng et al. 2023, section 3.2): YaRN's per-frequency ramp between
    PI and no change, without YaRN's attention temperature (transformers ``yarn`` with
    ``attention_factor=1``)."""
    params = yarn_rope_parameters(base, factor, original_max_position_embeddings, rotary_dim,
                                  {k: options.get(k) for k in ("beta_fast", "beta_slow")})
    params["attention_factor"] = 1.0
    return params


def attention_method_rope_parameters(base: dict, factor: float | None, original_max_position_embeddings: int,
                                     rotary_dim: int, options: dict) -> dict:
    """Attention-level methods (:mod:`lmeval_ctx.methods.attention`) keep the base frequencies:
    the default rope type (replacing a shipped scaling only with ``replace_rope_scaling``)."""
    return {**base, "rope_type": "default"}


RopeMethod = Callable[[dict, float, int, int, dict], dict]

# The methods that change the frequencies (``none`` leaves the config as it is).
ROPE_METHODS: dict[str, RopeMethod] = {
    "pi": pi_rope_parameters,
    "ntk": ntk_rope_parameters,
    "dynamic_ntk": dynamic_ntk_rope_parameters,
    "yarn": yarn_rope_parameters,
    "llama3": llama3_rope_parameters,
    "ntk_by_parts": ntk_by_parts_rope_parameters,
}

LLAMA3_DEFAULTS = {"low_freq_factor": 1.0, "high_freq_factor": 4.0}  # Llama 3.1's


def llama3_option(options: dict, key: str) -> float:
    """``options[key]``, or Llama 3.1's value where not given."""
    return float(LLAMA3_DEFAULTS[key] if options.get(key) is None else options[key])

# The options above that are positive numbers (the attention methods' own are checked by their registry).
POSITIVE_NUMBER_OPTIONS = frozenset().union(*ROPE_METHOD_OPTIONS.values(), {"rope_theta"})


def validate_rope_options(method: str, options: dict, method_options: dict | None = None) -> None:
    """Raise ValueError for options the method does not take or values out of range.

    ``method_options``: the options table to read (default :data:`ROPE_METHOD_OPTIONS`; the
    caller passes one extended with the attention-level methods' options).
    """
    table = ROPE_METHOD_OPTIONS if method_options is None else method_options
    given = {k for k, v in options.items() if v is not None}
    unexpected = given - table[method] - MODIFIER_OPTIONS
    if unexpected:
        takers = [m for m, keys in table.items() if keys & unexpected]  # the table's order
        raise ValueError(
            f"{', '.join(sorted(unexpected))} only apply to scaling={' or '.join(takers) or '(no method)'}, "
            f"not scaling={method}. Remove them or use one of those methods."
        )
    for key in sorted(given & POSITIVE_NUMBER_OPTIONS):
        try:
            value = float(options[key])
        except (TypeError, ValueError):
            raise ValueError(f"{key}={options[key]!r} is not a number.") from None
        if not value > 0:
            raise ValueError(f"{key}={options[key]!r} must be > 0.")
        if value == float("inf"):
            raise ValueError(f"{key}={options[key]!r} must be a finite number.")
    if "beta_fast" in given and "beta_slow" in given and float(options["beta_fast"]) <= float(options["beta_slow"]):
        raise ValueError(
            f"beta_fast={options['beta_fast']} must be larger than beta_slow={options['beta_slow']} "
            "(YaRN defaults: beta_fast=32, beta_slow=1)."
        )
    if method == "llama3":
        low = llama3_option(options, "low_freq_factor")
        high = llama3_option(options, "high_freq_factor")
        if high <= low:
            raise ValueError(
                f"high_freq_factor={high:g} must be larger than low_freq_factor={low:g} (llama3 ramps between the "
                "wavelengths L/high_freq_factor and L/low_freq_factor; Llama 3.1 uses low_freq_factor=1, "
                "high_freq_factor=4)."
            )
