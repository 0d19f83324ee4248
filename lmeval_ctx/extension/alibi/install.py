"""Install ALiBi slope methods, and the memory-efficient ALiBi attention, on a built BLOOM, MPT or Falcon model.

What each architecture needs is its entry in :data:`lmeval_ctx.extension.architectures.ALIBI_ARCHITECTURES`.
transformers computes ALiBi slopes and causal masks in module-level functions, so a
per-model change has three parts:

1. one dispatcher per architecture replacing the function that computes the slopes
   (BLOOM ``_get_alibi_slopes``, used by both its masked path and its no-mask fast path;
   MPT ``build_mpt_alibi_tensor``; Falcon ``build_alibi_tensor``), and one replacing the
   module's ``create_causal_mask``. Outside a scaled model's forward pass they call the
   original functions unchanged, so every other model in the process is untouched;
2. a wrapper around the scaled model's own ``forward`` that, for the duration of the
   call, publishes its slope method, the current key length and its attention choice
   through a context variable;
3. unless ``attention="transformers"``, the forward of each of the model's own attention
   modules replaced by :mod:`lmeval_ctx.extension.alibi.attention`'s (set on the module instances),
   and its causal mask asked for in row blocks instead of a dense ``length x length`` tensor.

The slope maths is :mod:`lmeval_ctx.methods.alibi`. ``lm_infinite`` (LM-Infinite, Han et al.
2023, arXiv:2308.16137) keeps the slopes and is applied by the blocked attention, so it
needs ``attention`` other than ``transformers``.
"""

from __future__ import annotations

import contextvars
import functools
import importlib
import types
from dataclasses import dataclass, field
from typing import Callable

import torch

from lmeval_ctx.extension.alibi import attention as alibi_attention
from lmeval_ctx.extension.architectures import ALIBI_ARCHITECTURES, AlibiArchitecture, alibi_architecture
from lmeval_ctx.methods import ALIBI_ATTENTION_METHODS, ATTENTION_METHOD_OPTIONS
from lmeval_ctx.methods.alibi import ALIBI_METHODS, UNSCALED_SLOPE_METHODS
from lmeval_ctx.methods.attention import resolve_attention_options


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
class _Installed:
    """What :func:`install_alibi_scaling` set on a model."""

    scaling: AlibiScaling
    attention: str  # one of alibi_attention.ATTENTION_CHOICES
    base_slopes: tuple[float, ...]  # the architecture's own slopes for this config


@dataclass(frozen=True)
class _ActiveCall:
    installed: _Installed
    key_length: int  # keys visible to the last query: cached + new tokens

    def slopes(self) -> list[float]:
        return self.installed.scaling.slopes(list(self.installed.base_slopes), self.key_length)

    @property
    def scaled(self) -> bool:
        """The slopes differ from the architecture's own (else its own slope code runs)."""
        return self.installed.scaling.scales_slopes

    @property
    def blocked(self) -> bool:
        return self.installed.attention != "transformers"


_ACTIVE: contextvars.ContextVar[_ActiveCall | None] = contextvars.ContextVar("lmeval_ctx_alibi", default=None)

# Attribute set on a patched base model; holds its _Installed.
_INSTALLED_ATTR = "_lmeval_ctx_alibi"


# ----------------------------------------------------------------------------- slope dispatchers (named in the table)
def bloom_slope_dispatcher(original: Callable) -> Callable:
    def _get_alibi_slopes(num_heads: int, device: torch.device) -> torch.Tensor:
        active = _ACTIVE.get()
        if active is None or not active.scaled:
            return original(num_heads, device)
        return torch.tensor(active.slopes(), dtype=torch.float32, device=device)

    return _get_alibi_slopes


def mpt_slope_dispatcher(original: Callable) -> Callable:
    def build_mpt_alibi_tensor(num_heads, sequence_length, alibi_bias_max=8, device=None):
        active = _ACTIVE.get()
        if active is None:
            return original(num_heads, sequence_length, alibi_bias_max, device)
        # MPT builds its bias for config.max_seq_len positions and slices the last key_length;
        # cover every key of this call (heads x keys: linear in the length)
        sequence_length = max(sequence_length, active.key_length)
        if not active.scaled:
            return original(num_heads, sequence_length, alibi_bias_max, device)
        distance = torch.arange(1 - sequence_length, 1, dtype=torch.int32, device=device).view(1, 1, sequence_length)
        # (heads, 1, keys), as MPT's own builder returns
        return distance * torch.tensor(active.slopes(), dtype=torch.float32, device=device).view(num_heads, 1, 1)

    return build_mpt_alibi_tensor


def falcon_slope_dispatcher(original: Callable) -> Callable:
    def build_alibi_tensor(attention_mask: torch.Tensor, num_heads: int, dtype: torch.dtype) -> torch.Tensor:
        active = _ACTIVE.get()
        if active is None or not active.scaled:
            return original(attention_mask, num_heads, dtype)
        batch_size, seq_length = attention_mask.shape
        slopes = torch.tensor(active.slopes(), dtype=torch.float32, device=attention_mask.device)
        positions = ((attention_mask.cumsum(dim=-1) - 1) * attention_mask)[:, None, :]
        # Falcon multiplies bfloat16 slopes; keep that rounding so scaling=none-like slopes match it exactly.
        alibi = slopes[..., None].bfloat16() * positions  # (batch, heads, keys)
        return alibi.reshape(batch_size * num_heads, 1, seq_length).to(dtype)

    return build_alibi_tensor


def _mask_dispatcher(original: Callable) -> Callable:
    def create_causal_mask(config, *args, **kwargs):
        active = _ACTIVE.get()
        if active is None or not active.blocked:
            return original(config, *args, **kwargs)
        # transformers' own mask logic (offsets, padding, cache sizes), delivered in row blocks
        return original(alibi_attention.row_block_mask_config(config), *args, **kwargs)

    return create_causal_mask


def _replace_module_function(module, name: str, factory: Callable) -> None:
    current = getattr(module, name)
    if getattr(current, "_lmeval_ctx_dispatcher", False):
        return
    dispatcher = factory(current)
    dispatcher._lmeval_ctx_dispatcher = True
    dispatcher.__wrapped__ = current
    setattr(module, name, dispatcher)


def _install_dispatchers(arch: AlibiArchitecture) -> None:
    module = importlib.import_module(arch.module)
    _replace_module_function(module, arch.slope_function, globals()[arch.slope_dispatcher])
    _replace_module_function(module, "create_causal_mask", _mask_dispatcher)


def _attention_modules(model: torch.nn.Module, arch: AlibiArchitecture) -> list[torch.nn.Module]:
    attention_class = getattr(importlib.import_module(arch.module), arch.attention_class)
    modules = [module for module in model.modules() if isinstance(module, attention_class)]
    if not modules:
        raise ValueError(f"Found no {arch.attention_class} module in this {arch.model_type} model to install "
                         "the ALiBi attention on.")
    return modules


def _set_attention_forwards(modules: list[torch.nn.Module], arch: AlibiArchitecture, attention: str) -> None:
    """Give the attention modules the blocked forward, or take it back (``transformers``)."""
    forward = getattr(alibi_attention, arch.attention_forward)
    for module in modules:
        if attention == "transformers":
            module.__dict__.pop("forward", None)  # back to the class's own forward
        else:
            module.forward = types.MethodType(forward, module)


def _key_length(args: tuple, kwargs: dict) -> int:
    """Keys the last query attends to: the 2-D mask's width, else new tokens + cached ones."""
    mask = kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        return int(mask.shape[-1])
    tokens = kwargs.get("input_ids", args[0] if args else None)
    if tokens is None:
        tokens = kwargs.get("inputs_embeds")
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    cached = cache.get_seq_length() if cache is not None and hasattr(cache, "get_seq_length") else 0
    return int(tokens.shape[1]) + int(cached)


def _architecture(model: torch.nn.Module) -> AlibiArchitecture:
    arch = alibi_architecture(model.config)
    if arch is None:
        model_type = getattr(model.config, "model_type", None)
        raise ValueError(
            f"No ALiBi slope patch for model_type={model_type!r}"
            + (" with alibi=False (this Falcon uses RoPE)" if model_type in ALIBI_ARCHITECTURES else "")
            + f"; supported: {', '.join(ALIBI_ARCHITECTURES)}."
        )
    return arch


def has_alibi_scaling(model: torch.nn.Module) -> bool:
    """Has :func:`install_alibi_scaling` been called on ``model``?"""
    return hasattr(model.base_model, _INSTALLED_ATTR)


def install_alibi_scaling(model: torch.nn.Module, scaling: AlibiScaling, attention: str | None = "auto") -> None:
    """Make ``model`` (a BLOOM, MPT or Falcon-ALiBi causal LM) use ``scaling``'s slopes and ``attention``.

    ``attention``: ``auto`` (default) attends a block of queries at a time in memory linear
    in the length (flash-attn's ALiBi kernel instead on CUDA when installed and the dtype is
    half precision), ``blocked`` always the blocks, ``transformers`` transformers' own attention
    (``heads x length x length`` tensors). See :mod:`lmeval_ctx.extension.alibi.attention`.

    Calling it again on the same model replaces both (a sweep re-applies methods to one
    loaded model); ``method="none"`` restores the model's own slopes.
    """
    arch = _architecture(model)
    attention = alibi_attention.validate_attention_choice(attention)
    if scaling.method in ALIBI_ATTENTION_METHODS and attention == "transformers":
        raise ValueError(
            f"scaling={scaling.method} hides keys and caps the ALiBi distance inside ctx-hf's ALiBi attention, "
            "which alibi_attention='transformers' turns off (transformers' own attention adds the plain bias). "
            "Use alibi_attention=auto (the default) or alibi_attention=blocked.")
    modules = _attention_modules(model, arch)
    _install_dispatchers(arch)
    base = model.base_model
    already_wrapped = hasattr(base, _INSTALLED_ATTR)
    setattr(base, _INSTALLED_ATTR, _Installed(scaling, attention, tuple(arch.base_slopes(model.config))))
    _set_attention_forwards(modules, arch, attention)
    if already_wrapped:
        return
    inner_forward = base.forward

    @functools.wraps(inner_forward)
    def forward(*args, **kwargs):
        token = _ACTIVE.set(_ActiveCall(getattr(base, _INSTALLED_ATTR), _key_length(args, kwargs)))
        try:
            return inner_forward(*args, **kwargs)
        finally:
            _ACTIVE.reset(token)

    base.forward = forward


def attention_choice() -> str:
    """The running scaled model's ``attention`` setting (``transformers`` outside its forward)."""
    active = _ACTIVE.get()
    return "transformers" if active is None else active.installed.attention


def active_position_method(slopes: Callable[[], torch.Tensor]) -> alibi_attention.AlibiPositionMethod | None:
    """The running model's attention-level method (``lm_infinite``) in its ALiBi form, or None.

    ``slopes()``: the current call's slopes in the units of the attention's key bias.
    """
    active = _ACTIVE.get()
    if active is None or active.installed.scaling.method not in ALIBI_ATTENTION_METHODS:
        return None
    scaling = active.installed.scaling
    return alibi_attention.AlibiPositionMethod(scaling.method, dict(scaling.options), int(scaling.original_length),
                                               slopes())


def active_slopes(bfloat16: bool = False) -> torch.Tensor:
    """The per-head slopes of the running scaled model's current call (float32, on the CPU).

    ``bfloat16``: rounded as Falcon rounds its slopes.
    """
    active = _ACTIVE.get()
    if active is None:
        raise RuntimeError("active_slopes() is only defined during the forward pass of a model with ALiBi installed.")
    slopes = torch.tensor(active.slopes(), dtype=torch.float32)
    return slopes.bfloat16().float() if bfloat16 else slopes


def slopes_in_use(model: torch.nn.Module, key_length: int) -> list[float]:
    """The per-head slopes ``model`` applies at ``key_length`` keys (for logs and checks)."""
    base = _architecture(model).base_slopes(model.config)
    installed = getattr(model.base_model, _INSTALLED_ATTR, None)
    return base if installed is None else installed.scaling.slopes(base, key_length)
