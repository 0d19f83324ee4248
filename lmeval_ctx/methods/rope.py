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
- LongRoPE: Ding et al. 2024, "LongRoPE: Extending LLM Context Window Beyond 2
  Million Tokens", arXiv:2402.13753 (transformers ``longrope``, as Phi-3 ships it).

Two modifiers combine with every method: ``rope_theta`` (a base override, as
HELMET offers, applied to the base parameters before the method) and ``logn``
(log-n query scaling, applied in attention by :mod:`lmeval_ctx.extension.attention.patch`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
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


def longrope_rope_parameters(base: dict, factor: float, original_max_position_embeddings: int,
                             rotary_dim: int, options: dict) -> dict:
    """LongRoPE (Ding et al. 2024; transformers ``longrope``): frequency ``j`` divided by its own
    factor, ``theta'_j = theta_j / lambda_j``, from ``long_factor`` when the input is longer than
    the original length and from ``short_factor`` otherwise; cos/sin scaled by ``attention_factor``
    (default ``sqrt(1 + ln s / ln L)``, transformers'). ``options`` holds the lists as
    :func:`longrope_options` made them; one factor per frequency, ``rotary_dim / 2`` of them."""
    for name in LONGROPE_LISTS:
        if len(options[name]) != rotary_dim // 2:
            raise ValueError(
                f"{name} has {len(options[name])} numbers, but this model rotates {rotary_dim} dimensions per head: "
                f"LongRoPE takes one factor per frequency, rotary_dim / 2 = {rotary_dim // 2} of them. Give lists "
                f"of {rotary_dim // 2} (a Phi-3 model's own lists only fit models of its head size).")
    params = {**base, "rope_type": "longrope", "factor": float(factor),
              "original_max_position_embeddings": int(original_max_position_embeddings),
              **{name: [float(x) for x in options[name]] for name in LONGROPE_LISTS}}
    if options.get("attention_factor") is not None:
        params["attention_factor"] = float(options["attention_factor"])
    return params


RopeMethod = Callable[[dict, float, int, int, dict], dict]

# The methods that change the frequencies (``none`` leaves the config as it is).
ROPE_METHODS: dict[str, RopeMethod] = {
    "pi": pi_rope_parameters,
    "ntk": ntk_rope_parameters,
    "dynamic_ntk": dynamic_ntk_rope_parameters,
    "yarn": yarn_rope_parameters,
    "llama3": llama3_rope_parameters,
    "ntk_by_parts": ntk_by_parts_rope_parameters,
    "longrope": longrope_rope_parameters,
}

LLAMA3_DEFAULTS = {"low_freq_factor": 1.0, "high_freq_factor": 4.0}  # Llama 3.1's


def llama3_option(options: dict, key: str) -> float:
    """``options[key]``, or Llama 3.1's value where not given."""
    return float(LLAMA3_DEFAULTS[key] if options.get(key) is None else options[key])

# LongRoPE's lists, and the file that may hold them: given as text (lm-eval's --model_args splits
# on commas, so a list is written with ';'), turned into lists of numbers by longrope_options.
LONGROPE_LISTS = ("short_factor", "long_factor")
LONGROPE_FILE = "longrope_factors"
LIST_OPTIONS = frozenset({*LONGROPE_LISTS, LONGROPE_FILE})
# The options above that are positive numbers (the attention methods' own are checked by their registry).
POSITIVE_NUMBER_OPTIONS = frozenset().union(*ROPE_METHOD_OPTIONS.values(), {"rope_theta"}) - LIST_OPTIONS


def _factor_list(value, name: str) -> list[float]:
    """A LongRoPE factor list from a list, one number, or numbers separated by ``;``."""
    if isinstance(value, str):
        items = [part for part in value.strip().strip("[]").split(";") if part.strip()]
    else:
        items = list(value) if isinstance(value, (list, tuple)) else [value]
    try:
        numbers = [float(item) for item in items]
    except (TypeError, ValueError):
        numbers = []
    if not numbers or not all(math.isfinite(x) and x > 0 for x in numbers) or any(isinstance(x, bool) for x in items):
        raise ValueError(
            f"{name}={value!r} is not a list of positive numbers. Write it as numbers separated by ';' (lm-eval's "
            f"--model_args splits on commas), e.g. {name}=1.0;1.02;1.05, or give a JSON file: {LONGROPE_FILE}=<path>.")
    return numbers


def _factors_file(path) -> dict:
    """``short_factor`` and ``long_factor`` from a JSON file: an object holding both lists, or a
    checkpoint's ``config.json`` holding them under ``rope_parameters`` or ``rope_scaling``."""
    try:
        data = json.loads(Path(str(path)).expanduser().read_text())
    except OSError as error:
        raise ValueError(f"{LONGROPE_FILE}={path!r} cannot be read ({error.strerror or error}). Give the path of a "
                         "JSON file holding short_factor and long_factor lists.") from None
    except ValueError as error:
        raise ValueError(f"{LONGROPE_FILE}={path!r} is not JSON ({error}). Give a JSON object holding "
                         "short_factor and long_factor lists.") from None
    holders = [data, data.get("rope_parameters"), data.get("rope_scaling")] if isinstance(data, dict) else []
    for holder in holders:
        if isinstance(holder, dict) and all(name in holder for name in LONGROPE_LISTS):
            return {name: holder[name] for name in LONGROPE_LISTS}
    raise ValueError(f"{LONGROPE_FILE}={path!r} holds no short_factor and long_factor lists (looked at the top "
                     "level, rope_parameters and rope_scaling). Write them as "
                     '{"short_factor": [...], "long_factor": [...]}.')


def longrope_options(options: dict) -> dict:
    """LongRoPE's options with ``short_factor`` and ``long_factor`` as lists of numbers, read from
    the text given or from the ``longrope_factors`` file (which is then dropped: the lists are
    what runs); ValueError naming the fix."""
    given = {name: options[name] for name in LONGROPE_LISTS if options.get(name) is not None}
    path = options.get(LONGROPE_FILE)
    if path is not None and given:
        raise ValueError(f"{', '.join(given)} and {LONGROPE_FILE}={path!r} both give LongRoPE factors: give the "
                         "lists in one place.")
    if path is not None:
        given = _factors_file(path)
    if set(given) != set(LONGROPE_LISTS):
        raise ValueError("scaling=longrope needs both factor lists, one factor per rotary frequency: "
                         "short_factor=<a;b;...> and long_factor=<a;b;...>, or "
                         f"{LONGROPE_FILE}=<a JSON file holding both, e.g. a Phi-3 config.json>.")
    lists = {name: _factor_list(given[name], name) for name in LONGROPE_LISTS}
    if len(lists["short_factor"]) != len(lists["long_factor"]):
        raise ValueError(f"short_factor has {len(lists['short_factor'])} numbers and long_factor "
                         f"{len(lists['long_factor'])}: both hold one factor per rotary frequency.")
    return {**{k: v for k, v in options.items() if k != LONGROPE_FILE}, **lists}


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


# Methods whose options are more than numbers, each with the function that reads them.
_OPTION_READERS: dict[str, Callable[[dict], dict]] = {"longrope": longrope_options}


def read_rope_options(method: str, options: dict) -> dict:
    """``options`` (numbers already converted) as ``method`` runs them: LongRoPE's lists read by
    :func:`longrope_options`; every other method's as given."""
    reader = _OPTION_READERS.get(method)
    return options if reader is None else reader(options)
