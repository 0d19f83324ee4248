"""The ALiBi setting of a scaled model, and of the forward call it is running.

Where the slopes come from. transformers computes ALiBi slopes inside module-level
functions that are given no model (BLOOM's ``_get_alibi_slopes``, MPT's
``build_mpt_alibi_tensor``, Falcon's ``build_alibi_tensor``), so the slopes of *this*
model at *this* input length cannot reach them as an argument. They travel through one
context variable, whose only home is this module:

1. :func:`lmeval_ctx.extension.alibi.install.install_alibi_scaling` hangs an
   :class:`AlibiSetting` (the :class:`AlibiScaling`, the attention choice, the
   architecture's own slopes) on the model and wraps its base model's ``forward``;
2. the wrapped ``forward`` runs inside ``with running(setting, key_length):``, which
   computes the call's slopes once (the scaling applied to the base slopes at the call's
   key length) and publishes them as a :class:`RunningCall`;
3. during that call, the slope dispatchers that replace transformers' slope functions
   (:mod:`lmeval_ctx.extension.alibi.install`) and the ALiBi attention
   (:mod:`lmeval_ctx.extension.alibi.attention`) read it: :func:`running_call`,
   :func:`active_slopes`, :func:`active_position_method`, :func:`attention_choice`.

Outside a scaled model's forward :func:`running_call` is None and the dispatchers call
transformers' own functions, so other models in the process are untouched. A context
variable rather than a global keeps threads apart and restores the outer call's setting
when a nested one ends.

ALiBi: Press et al. 2021, "Train Short, Test Long", arXiv:2108.12409 (slopes and methods:
docs/methods.md). LM-Infinite (Han et al. 2023, arXiv:2308.16137) is the one
attention-level method with an ALiBi form (:class:`AlibiPositionMethod`).
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field
from typing import Iterator

import torch

from lmeval_ctx.methods.catalog import ALIBI_ATTENTION_METHODS, ATTENTION_METHOD_OPTIONS
from lmeval_ctx.methods.alibi import ALIBI_METHODS, UNSCALED_SLOPE_METHODS
from lmeval_ctx.methods.attention import (
    ATTENTION_METHOD_REGISTRY,
    assign_positions,
    moved_positions,
    relative_positions,
    resolve_attention_options,
)


@dataclass(frozen=True)
class AlibiScaling:
    """A slope method bound to its factor and the model's trained length.

    ``options``: an attention-level method's resolved options (``lm_infinite``: ``global_tokens``
    and ``local_window``, from :func:`lmeval_ctx.methods.attention.resolve_attention_options`).
    """

    method: str
    factor: float | None
    original_length: int | None
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.method not in ALIBI_METHODS:
            raise ValueError(f"scaling={self.method!r} has no ALiBi form here; ALiBi methods: "
                             f"{', '.join(ALIBI_METHODS)}.")
        if self.method in ALIBI_ATTENTION_METHODS:
            missing = sorted(ATTENTION_METHOD_OPTIONS[self.method] - set(self.options))
            if missing or self.original_length is None:
                raise ValueError(
                    f"AlibiScaling({self.method!r}) needs original_length and its resolved options "
                    f"({', '.join(sorted(ATTENTION_METHOD_OPTIONS[self.method]))}); missing: "
                    f"{', '.join(missing + ([] if self.original_length is not None else ['original_length']))}. "
                    "Build it with AlibiScaling.from_extension(resolve_extension(...)).")
            # the values checked as for RoPE models (all present, so no default is filled in)
            object.__setattr__(self, "options", resolve_attention_options(self.method, self.options,
                                                                          self.original_length, None))

    @classmethod
    def from_extension(cls, ext) -> "AlibiScaling":
        """The scaling a resolved :class:`lmeval_ctx.extension.request.ContextExtension` of an ALiBi model asks for."""
        own = ATTENTION_METHOD_OPTIONS.get(ext.method, frozenset())
        return cls(ext.method, ext.factor, ext.original_max_length,
                   {key: value for key, value in ext.options.items() if key in own})

    @property
    def scales_slopes(self) -> bool:
        return self.method not in UNSCALED_SLOPE_METHODS

    def slopes(self, base: list[float], current_length: int) -> list[float]:
        return ALIBI_METHODS[self.method](base, self.factor, self.original_length, current_length)


@dataclass(frozen=True)
class AlibiSetting:
    """What :func:`lmeval_ctx.extension.alibi.install.install_alibi_scaling` set on a model."""

    scaling: AlibiScaling
    attention: str  # one of lmeval_ctx.extension.flex.ALIBI_ENGINES (or the old "blocked")
    base_slopes: tuple[float, ...]  # the architecture's own slopes for this config


@dataclass(frozen=True)
class RunningCall:
    """One forward call of a scaled model: its setting and the slopes at its key length."""

    setting: AlibiSetting
    key_length: int  # keys visible to the last query: cached + new tokens
    slopes: tuple[float, ...]  # the scaling's slopes at key_length (dynamic_ntk depends on it)
    # what every layer reads, made once per call: (device, bfloat16) -> the slopes as a tensor there;
    # ("flex", ...) -> FlexAttention's inputs (lmeval_ctx.extension.alibi.flex_attention.call_inputs)
    on_device: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def scaled(self) -> bool:
        """The slopes differ from the architecture's own (else its own slope code runs)."""
        return self.setting.scaling.scales_slopes

    @property
    def blocked(self) -> bool:
        """The attention is lmeval_ctx's (``auto`` or ``blocked``), not transformers' own."""
        return self.setting.attention != "transformers"


_RUNNING: contextvars.ContextVar[RunningCall | None] = contextvars.ContextVar("lmeval_ctx_alibi", default=None)


@contextlib.contextmanager
def running(setting: AlibiSetting, key_length: int) -> Iterator[RunningCall]:
    """Publish ``setting`` with its slopes at ``key_length`` for the duration of one forward call."""
    call = RunningCall(setting, key_length,
                       tuple(setting.scaling.slopes(list(setting.base_slopes), key_length)))
    token = _RUNNING.set(call)
    try:
        yield call
    finally:
        _RUNNING.reset(token)


def running_call() -> RunningCall | None:
    """The scaled model's forward call in progress, or None (no scaled model is running)."""
    return _RUNNING.get()


def attention_choice() -> str:
    """The running scaled model's ``attention`` setting (``transformers`` outside its forward)."""
    call = running_call()
    return "transformers" if call is None else call.setting.attention


def active_slopes(bfloat16: bool = False, device: torch.device | str = "cpu") -> torch.Tensor:
    """The per-head slopes of the running scaled model's current call, float32 on ``device``.

    Made once per call and device and shared by every layer (read-only: do not modify in place).
    ``bfloat16``: rounded as Falcon rounds its slopes.
    """
    call = running_call()
    if call is None:
        raise RuntimeError("active_slopes() is only defined during the forward pass of a model with ALiBi installed.")
    where = (torch.device(device), bfloat16)
    if where not in call.on_device:
        slopes = torch.tensor(call.slopes, dtype=torch.float32)
        call.on_device[where] = (slopes.bfloat16().float() if bfloat16 else slopes).to(where[0])
    return call.on_device[where]


@dataclass(frozen=True)
class AlibiPositionMethod:
    """An attention-level method in its ALiBi form (``lm_infinite``): the bias ``-m_h * rel(i, j)``
    with the method's relative position ``rel`` (:mod:`lmeval_ctx.methods.attention`) and the
    keys it hides."""

    method: str  # a key of ATTENTION_METHOD_REGISTRY
    options: dict  # its resolved options (resolve_attention_options)
    original_length: int  # L, the trained length
    slopes: torch.Tensor  # (heads,) float32: the slopes in the units of the scaled scores (model's scale applied)

    def changes(self, largest_distance: int) -> bool:
        """Does the method change any pair whose distance is at most ``largest_distance``?"""
        unchanged = ATTENTION_METHOD_REGISTRY[self.method].unchanged_up_to(self.options, self.original_length)
        return largest_distance > unchanged

    def block(self, query_positions: torch.Tensor, key_positions: torch.Tensor
              ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """For a block: ``(visible, correction)``.

        ``query_positions``: ``(batch or 1, rows)``; ``key_positions``: ``(batch or 1, keys)``.
        ``visible``: ``(batch or 1, 1, rows, keys)`` bool, or None (no key hidden);
        ``correction``: ``(batch or 1, heads, rows, keys)`` float32, ``m_h * (i - j - rel)``, added
        to the model's bias ``-m_h (i - j)`` (up to a constant per row) to make it ``-m_h * rel``.
        """
        queries, keys = query_positions[:, :, None], key_positions[:, None, :]
        assignment = assign_positions(self.method, self.options, self.original_length, queries, keys)
        excess = (moved_positions(queries - keys) - relative_positions(assignment, queries, keys)).to(torch.float32)
        correction = self.slopes.to(excess.device)[None, :, None, None] * excess[:, None]
        visible = None if assignment.visible is None else assignment.visible[:, None]
        return visible, correction


def active_position_method(slopes: torch.Tensor) -> AlibiPositionMethod | None:
    """The running model's attention-level method (``lm_infinite``) in its ALiBi form, or None.

    ``slopes``: the current call's slopes in the units of the attention's scaled scores.
    """
    call = running_call()
    if call is None or call.setting.scaling.method not in ALIBI_ATTENTION_METHODS:
        return None
    scaling = call.setting.scaling
    return AlibiPositionMethod(scaling.method, dict(scaling.options), int(scaling.original_length), slopes)
