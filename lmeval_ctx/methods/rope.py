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
  Language Models", arXiv:2309.00071.
"""

from __future__ import annotations

from typing import Callable

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
    """Static NTK-aware scaling: base ``b -> b * s**(d/(d-2))``, highest frequency unchanged."""
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


RopeMethod = Callable[[dict, float, int, int, dict], dict]

# The methods that change the frequencies (``none`` leaves the config as it is).
ROPE_METHODS: dict[str, RopeMethod] = {
    "pi": pi_rope_parameters,
    "ntk": ntk_rope_parameters,
    "dynamic_ntk": dynamic_ntk_rope_parameters,
    "yarn": yarn_rope_parameters,
}

# Options a method accepts beyond factor and the original length.
ROPE_METHOD_OPTIONS: dict[str, frozenset[str]] = {
    "none": frozenset(),
    "pi": frozenset(),
    "ntk": frozenset(),
    "dynamic_ntk": frozenset(),
    "yarn": frozenset({"beta_fast", "beta_slow", "attention_factor"}),
}


def validate_rope_options(method: str, options: dict) -> None:
    """Raise ValueError for options the method does not take or values out of range."""
    given = {k for k, v in options.items() if v is not None}
    unexpected = given - ROPE_METHOD_OPTIONS[method]
    if unexpected:
        raise ValueError(
            f"{', '.join(sorted(unexpected))} only apply to scaling=yarn, not scaling={method}. "
            "Remove them or use scaling=yarn."
        )
    for key in sorted(given):
        try:
            value = float(options[key])
        except (TypeError, ValueError):
            raise ValueError(f"{key}={options[key]!r} is not a number.") from None
        if value <= 0:
            raise ValueError(f"{key}={options[key]!r} must be > 0.")
    if "beta_fast" in given and "beta_slow" in given and float(options["beta_fast"]) <= float(options["beta_slow"]):
        raise ValueError(
            f"beta_fast={options['beta_fast']} must be larger than beta_slow={options['beta_slow']} "
            "(YaRN defaults: beta_fast=32, beta_slow=1)."
        )
