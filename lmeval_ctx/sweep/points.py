"""A sweep's points: ``--methods`` and ``--factor`` parsed into points, their folder names, and their checks.

A point is a method with its factor and its own parameters, written in ``--methods`` as
``method[:key=value...]`` (``self_extend:group_size=4:neighbor_window=1024``); commas separate
the points. Its folder name carries every setting (``yarn_x4``,
``self_extend__group_size-4__neighbor_window-1024``), exact, so two points share a folder only
when they are the same point. Everything here is checked before the weights load: first what
needs no model (:func:`sweep_points`, :func:`check_model_args`), then every point against the
model's config as ``ctx-hf`` will resolve it (:func:`check_points_against_config`). The method
names, options and factor text come from :mod:`lmeval_ctx.methods.catalog`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from lmeval_ctx.common.args import FALSE_SPELLINGS, TRUE_SPELLINGS, closest_key
from lmeval_ctx.methods.catalog import (
    ATTENTION_METHOD_OPTIONS,
    METHOD_NAMES,
    METHOD_OWN_OPTIONS,
    METHODS,
    MODIFIER_OPTIONS,
    ROPE_METHOD_OPTIONS,
    canonical_method,
    factor_text,
    takes_factor,
    validate_factor,
)
from lmeval_ctx.methods.rope import validate_rope_options

# model args the sweep sets per point; in --model_args they would be ambiguous
PER_POINT_ARGS = ("scaling", "factor")
# In --methods, a point's parameters follow its method after colons (commas separate the points):
# self_extend:group_size=4:neighbor_window=1024
PARAMETER_SEPARATOR = ":"
# In a point's folder name: <method>[_x<factor>]__<key>-<value>__..., keys sorted
NAME_PARAMETER_SEPARATOR, NAME_VALUE_SEPARATOR = "__", "-"
# a text parameter value must be safe in a folder name as it is (numbers and booleans are normalised)
_SAFE_TEXT = re.compile(r"[A-Za-z0-9._+]+")
# every method's own options and the modifiers, by method (the rescalings' and the attention-level ones')
_OPTION_TABLE = {**ROPE_METHOD_OPTIONS, **ATTENTION_METHOD_OPTIONS}


def format_value(value) -> str:
    """A parameter's value as written in point names and labels: numbers as the catalog's
    :func:`~lmeval_ctx.methods.catalog.factor_text` (exact), booleans as ``true``/``false``, text as it is."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return factor_text(value)
    return str(value)


@dataclass(frozen=True)
class SweepPoint:
    """One point of the grid: a method, its factor (None: none, an attention-level method, or the
    method's default) and its own parameters (``group_size``, ``window``, ``beta_fast``, ``logn``, ...)."""

    method: str
    factor: float | None
    params: tuple[tuple[str, object], ...] = ()  # (key, value), sorted by key

    def __post_init__(self):
        # sorted once here, so equal settings given in any order are one point with one name
        object.__setattr__(self, "params", tuple(sorted(dict(self.params).items())))

    @property
    def label(self) -> str:
        """The factor as printed in folder names and tables ("" without one)."""
        return factor_text(self.factor)

    @property
    def parameters_text(self) -> str:
        """``group_size=4, neighbor_window=1024`` ("" without parameters)."""
        return ", ".join(f"{key}={format_value(value)}" for key, value in self.params)

    @property
    def display(self) -> str:
        """The method with its parameters, as in tables: ``self_extend (group_size=4, neighbor_window=1024)``."""
        return self.method + (f" ({self.parameters_text})" if self.params else "")

    @property
    def spec(self) -> str:
        """The point as written in --methods: ``self_extend:group_size=4:neighbor_window=1024``."""
        factor = [("factor", self.factor)] if self.factor is not None else []
        return self.method + "".join(f"{PARAMETER_SEPARATOR}{key}={format_value(value)}"
                                     for key, value in factor + list(self.params))

    @property
    def name(self) -> str:
        """The folder name (and manifest key): ``pi_x4``, ``self_extend__group_size-4__neighbor_window-1024``.

        Keys sorted and values formatted as :func:`format_value` (exact: two different numbers
        never print alike), so two points share a folder only when their settings are equal.
        """
        base = self.method if self.factor is None else f"{self.method}_x{self.label}"
        name = base + "".join(f"{NAME_PARAMETER_SEPARATOR}{key}{NAME_VALUE_SEPARATOR}{format_value(value)}"
                              for key, value in self.params)
        # lm-eval takes an --output_path ending in .json for a results file, not a folder; a
        # trailing separator (which no parameter writes) keeps such a name a folder and distinct
        return name + NAME_PARAMETER_SEPARATOR if name.lower().endswith(".json") else name

    @property
    def model_args(self) -> dict:
        """The model arguments the point runs with: ``{"scaling": ..., "factor": ..., **parameters}``."""
        return {"scaling": self.method, **({"factor": self.factor} if self.factor is not None else {}),
                **dict(self.params)}


def point_parameters(method: str) -> frozenset[str]:
    """The parameters a point of ``method`` may set: the method's own options (the catalog's),
    the modifiers every RoPE method takes (``rope_theta``, ``logn``), and ``factor`` for the
    rescalings (then the point runs at that factor only, not at every ``--factor``)."""
    factor = frozenset({"factor"}) if takes_factor(method) else frozenset()
    return frozenset(METHODS[method].options) | MODIFIER_OPTIONS | factor


def _parameter_value(item: str, key: str, text: str):
    """``text`` as a number (integral ones as int, so ``4`` and ``4.0`` are one setting), a boolean
    (true/false/yes/no) or, failing both, text safe in a folder name."""
    try:
        number = float(text)
    except ValueError:
        number = None
    if number is not None:
        if not math.isfinite(number):
            raise ValueError(f"--methods point {item!r}: {key}={text} is not a finite number.")
        return int(number) if number.is_integer() and abs(number) < 2**53 else number
    spelled = text.lower()
    if spelled in TRUE_SPELLINGS or spelled in FALSE_SPELLINGS:
        return spelled in TRUE_SPELLINGS
    if not _SAFE_TEXT.fullmatch(text):
        raise ValueError(f"--methods point {item!r}: {key}={text!r} is neither a number nor a boolean, and "
                         "holds characters a folder name cannot carry. Give a number or true/false.")
    return text


def _parameter(item: str, method: str, part: str, allowed: frozenset[str]) -> tuple[str, str]:
    """One ``key=value`` of a --methods item as (key, value text), the key checked against ``allowed``."""
    key, equals, text = (piece.strip() for piece in part.partition("="))
    if not equals or not key or not text:
        raise ValueError(
            f"--methods point {item!r}: {part!r} is not key=value. Write a point as method{PARAMETER_SEPARATOR}"
            f"key=value{PARAMETER_SEPARATOR}key=value, e.g. self_extend:group_size=4:neighbor_window=1024.")
    if key not in allowed:
        close = closest_key(key, allowed)
        raise ValueError(
            f"--methods point {item!r}: {method} has no parameter {key!r}"
            + (f" (did you mean {close}?)" if close else "")
            + f". Parameters of {method}: {', '.join(sorted(allowed))}.")
    return key, text


def parse_point(item: str) -> tuple[str, dict]:
    """One --methods item, ``method[:key=value...]``: (canonical method, {key: value}).

    Keys must be parameters of the method (:func:`point_parameters`); values are checked
    here as far as they can be without the model's config (numbers > 0 for the RoPE
    options and ``rope_theta``, ``factor`` >= 1). The rest (an attention method's
    ranges against the trained length, required options) is checked by
    :func:`check_points_against_config` before the weights load.
    """
    method_text, *parts = str(item).strip().split(PARAMETER_SEPARATOR)
    method = canonical_method(method_text.strip())
    allowed = point_parameters(method)
    params: dict = {}
    for part in parts:
        key, text = _parameter(item, method, part, allowed)
        if key in params:
            raise ValueError(f"--methods point {item!r} gives {key} twice; give it once.")
        params[key] = _parameter_value(item, key, text)
    if "factor" in params:
        params["factor"] = validate_factor(params["factor"])
    try:
        validate_rope_options(method, {k: v for k, v in params.items() if k != "factor"}, _OPTION_TABLE)
    except ValueError as error:
        raise ValueError(f"--methods point {item!r}: {error}") from None
    return method, params


def _number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return text  # validate_factor names it


def _factor_values(factors, log=None) -> list[float | None]:
    """``--factor`` as numbers >= 1, each once (``[None]`` without factors: the methods' defaults)."""
    if isinstance(factors, str):
        factors = [f.strip() for f in factors.split(",") if f.strip()]
    if not factors:
        return [None]
    values: list[float | None] = []
    for text in factors:
        value = validate_factor(_number(text))
        if value in values:
            if log is not None:
                log(f"[sweep] factor {text} equals factor {factor_text(value)} as a number: one point")
            continue
        values.append(value)
    return values


def sweep_points(methods, factors=None, log=None) -> list[SweepPoint]:
    """The grid: every item of ``methods`` (``method[:key=value...]``) at every factor, except
    ``none``, the attention-level methods and points that give their own ``factor``, which run
    once (or the rescalings at their default without factors).

    Factors equal as numbers (``2`` and ``2.0``) are one point, and so are points whose
    method, factor and parameters are equal; ``log``, when given, is told so.
    """
    items = [str(m).strip() for m in (methods.split(",") if isinstance(methods, str) else methods)
             if str(m).strip()]
    if not items:
        raise ValueError(f"--methods is empty: name at least one of {', '.join(METHOD_NAMES)} "
                         "(with parameters: self_extend:group_size=4:neighbor_window=1024).")
    values = _factor_values(factors, log)
    points: list[SweepPoint] = []
    for item in items:
        method, params = parse_point(item)
        own_factor = params.pop("factor", None)
        for factor in ([own_factor] if own_factor is not None else values if takes_factor(method) else [None]):
            point = SweepPoint(method, factor, tuple(params.items()))
            if point in points:
                if log is not None:
                    log(f"[sweep] {item} equals point {point.name}, given before: one point")
                continue
            points.append(point)
    return points


def check_model_args(model_args: dict, points: list[SweepPoint]) -> None:
    """ValueError for what --model_args may not set in a sweep: ``scaling`` or ``factor`` (set per
    point), a parameter also set by a point, or a method's own option (the model loads with
    ``scaling=none``, which takes none of them)."""
    clashes = [key for key in PER_POINT_ARGS if key in model_args]
    if clashes:
        raise ValueError(f"--model_args sets {', '.join(clashes)}: the sweep sets these per point; "
                         "use --methods and --factor instead.")
    both = [f"{key} is set in --model_args ({key}={model_args[key]}) and in --methods point {point.spec}"
            for point in points for key, _ in point.params if key in model_args]
    if both:
        raise ValueError("; ".join(both) + ". Set it in one place: --model_args for every point, or per point "
                                           "in --methods.")
    own = sorted(set(model_args) & METHOD_OWN_OPTIONS)
    if own:
        raise ValueError(
            f"--model_args sets {', '.join(own)}, the option(s) of a method: the sweep loads the model with "
            "scaling=none and applies each point's method with that point's parameters. Give them per point, "
            f"e.g. --methods {points_example(own[0])}.")


def points_example(key: str) -> str:
    """A --methods item that sets ``key``, for error messages."""
    method = next((name for name, entry in METHODS.items() if key in entry.options), "yarn")
    return f"{method}{PARAMETER_SEPARATOR}{key}=<value>"


def check_points_against_config(model_args: dict, points: list[SweepPoint], log=print) -> None:
    """Resolve every point against the model's config as ``ctx-hf`` will, before the weights load.

    The request is what :meth:`CtxHFLM.apply_extension` will resolve: the extension arguments of
    --model_args with the point's method, factor and parameters. Every point that fails is named in
    one ValueError. A config that cannot be read here is logged and left to the load to report.
    """
    from lmeval_ctx.common.checkpoint import load_config
    from lmeval_ctx.extension.lifecycle import full_request
    from lmeval_ctx.extension.request import EXTENSION_ARGS, resolve_extension

    try:
        load_config(model_args)
    except ValueError as error:  # a hub model while offline, ...: the load reports it
        log(f"[sweep] could not read the config of {model_args['pretrained']} to check the points before loading "
            f"({type(error).__name__}: {error}); the load checks them")
        return
    shared = {key: model_args[key] for key in EXTENSION_ARGS if key in model_args}
    problems = []
    for point in points:
        try:  # a copy of the config per point (load_config reads it once)
            resolve_extension(load_config(model_args), **full_request({**shared, **point.model_args}))
        except (ValueError, TypeError) as error:  # TypeError: an argument ctx-hf does not take
            problems.append(f"{point.spec}: {error}")
    if problems:
        raise ValueError("point(s) that cannot run on this model (resolved against its config, before loading):\n  "
                         + "\n  ".join(problems) + "\nFix their parameters in --methods or leave them out.")
