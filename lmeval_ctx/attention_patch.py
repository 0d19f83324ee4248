"""Attention-level methods and log-n scaling on a built RoPE model, through transformers'
attention-function registry.

transformers' RoPE models call ``ALL_ATTENTION_FUNCTIONS[config._attn_implementation]``
with queries and keys already rotated at their true positions. :func:`install` registers
one named implementation (:data:`IMPLEMENTATION`), sets the scaled model's own
``config._attn_implementation`` to it and hangs an :class:`AttentionSetting` on that
model's attention modules, so another model in the process keeps its attention.

The function (:func:`method_attention`), per layer that carries a setting:

- log-n: queries at position ``i >= L`` (0-based) are multiplied by ``log(i+1)/log(L)``
  (Qwen's ``use_logn_attn``);
- an attention-level method (:mod:`lmeval_ctx.methods.attention`): since
  ``R(a) R(b) = R(a + b)``, a pair given relative position ``A(i) - B(j)`` instead of
  ``i - j`` is scored with the query re-rotated by ``A(i) - i`` and the key by ``B(j) - j``
  (rotary dimensions only: GPT-NeoX's partial rotary leaves the rest as it is). A block of
  queries at a time gets both scores, the true and the re-rotated, merged by the method's
  ``near`` mask, masked, softmaxed and multiplied by the values, so memory stays linear in
  the length. The cache keeps keys at their true positions; each call re-rotates copies.

Layers whose attention spans at most the trained length (sliding windows ``<= L``, see
:func:`kept_layer_types`), inputs whose distances the method leaves unchanged (or, for DCA,
which changes pairs by the chunks their absolute positions fall in, whose positions all lie in
its first chunk), and models with neither, go through transformers' SDPA function with the same
mask. Positions: a row's tokens have consecutive positions, as transformers assigns them (left
padding included), so key ``k`` of a row is at ``position of its last query - (keys - 1 - k)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lmeval_ctx.methods.attention import ATTENTION_ARCHITECTURES, ATTENTION_METHOD_REGISTRY, assign_positions

IMPLEMENTATION = "lmeval_ctx_attention"
SETTING_ATTRIBUTE = "lmeval_ctx_attention"
# Scores held at once per block of queries (float32 elements), bounding memory.
BLOCK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class AttentionSetting:
    """What one model's attention function does; hung on each attention module it applies to."""

    method: str | None  # an attention-level method, or None (log-n alone)
    options: dict
    original_length: int
    logn: bool
    inv_freq: torch.Tensor  # float64 inverse frequencies of the rotary dimensions
    previous_implementation: str | None  # restored by remove()

    @property
    def rotary_dim(self) -> int:
        return 2 * self.inv_freq.numel()


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(IMPLEMENTATION, method_attention)
    AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)  # the masks SDPA gets


def attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's attention modules: those with a ``layer_idx``, a ``config`` and a ``scaling``."""
    return [m for m in model.modules()
            if isinstance(getattr(m, "layer_idx", None), int) and hasattr(m, "config") and hasattr(m, "scaling")]


def installed(model: torch.nn.Module) -> bool:
    return any(getattr(m, SETTING_ATTRIBUTE, None) is not None for m in attention_modules(model))


def remove(model: torch.nn.Module) -> None:
    """Give the model back its own attention implementation."""
    previous = None
    for module in attention_modules(model):
        setting = module.__dict__.pop(SETTING_ATTRIBUTE, None)
        if setting is not None:
            previous = setting.previous_implementation
    if previous is not None:
        model.config._attn_implementation = previous


def install(model: torch.nn.Module, extension) -> dict:
    """Install ``extension``'s attention-level method and/or log-n scaling on ``model``; return the record."""
    from lmeval_ctx.extension import text_config
    from lmeval_ctx.rotary import rotary_modules

    cfg = text_config(model.config)
    model_type = getattr(cfg, "model_type", "unknown")
    what = extension.method if extension.method in ATTENTION_METHOD_REGISTRY else "logn=true"
    if model_type not in ATTENTION_ARCHITECTURES:  # resolve_extension refuses these first
        raise ValueError(f"{what} is implemented for {', '.join(ATTENTION_ARCHITECTURES)}; this model is {model_type}.")
    rotary = rotary_modules(model)
    if len(rotary) != 1 or not isinstance(rotary[0][1].rope_type, str):
        raise ValueError(f"{what} needs one rotary embedding shared by all layers; this {model_type} model has "
                         f"{len(rotary)} (per-layer-type RoPE is not supported by the attention-level methods).")
    inv_freq = rotary[0][1].inv_freq.detach().to(torch.float64)
    previous = model.config._attn_implementation
    if previous == IMPLEMENTATION:
        previous = next((getattr(m, SETTING_ATTRIBUTE).previous_implementation for m in attention_modules(model)
                         if getattr(m, SETTING_ATTRIBUTE, None) is not None), "sdpa")
    remove(model)
    setting = AttentionSetting(extension.method if extension.method in ATTENTION_METHOD_REGISTRY else None,
                               {k: v for k, v in extension.options.items()}, int(extension.original_max_length),
                               bool(extension.options.get("logn")), inv_freq, previous)
    kept = kept_layer_types(cfg, setting.original_length)
    layer_types = getattr(cfg, "layer_types", None) or ()
    modules = attention_modules(model)
    for module in modules:
        if module.layer_idx < len(layer_types) and layer_types[module.layer_idx] in kept:
            continue
        module.__dict__[SETTING_ATTRIBUTE] = setting  # a plain attribute, not a submodule or buffer
    _register()
    model.config._attn_implementation = IMPLEMENTATION
    return {"attention": {"implementation": IMPLEMENTATION, "method": setting.method, "logn": setting.logn,
                          "layers": sorted(m.layer_idx for m in modules if SETTING_ATTRIBUTE in m.__dict__),
                          "rotary_dim": setting.rotary_dim, **({"kept_layer_types": kept} if kept else {})}}


def kept_layer_types(cfg, original_length: int) -> dict[str, str]:
    """Layer types that keep their attention, with why: those whose attention spans a bounded
    number of tokens, at most the trained length (a sliding window of ``w <= L`` never sees a
    distance the model was not trained on). The per-layer-type rule of
    :func:`lmeval_ctx.extension.layer_types_to_scale`, applied per layer: attention, unlike a
    rotary embedding shared by all layers, can be left as it is layer by layer."""
    from lmeval_ctx.extension import BOUNDED_LAYER_TYPES

    kept = {}
    for layer_type in dict.fromkeys(getattr(cfg, "layer_types", None) or ()):
        span_field = BOUNDED_LAYER_TYPES.get(layer_type)
        span = getattr(cfg, span_field, None) if span_field else None
        if span is not None and span <= original_length:
            kept[layer_type] = f"{span_field}={span} <= original_max_length={original_length}"
    return kept


def logn_scale(positions: torch.Tensor, original_length: int) -> torch.Tensor:
    """``log(i+1)/log(L)`` for 0-based positions ``i >= L``, 1 below (Qwen's ``use_logn_attn``)."""
    count = positions.to(torch.float64) + 1
    return torch.where(count > original_length, torch.log(count) / math.log(original_length),
                       torch.ones_like(count))


def rotate(x: torch.Tensor, offsets: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (batch, heads, n, head_dim) by ``offsets`` (batch, n) positions, in the
    rotate-half layout on the first ``2 * len(inv_freq)`` dimensions (the rest pass through)."""
    half = inv_freq.numel()
    # float64: the angles of long offsets stay exact
    angles = offsets.to(torch.float64)[:, None, :, None] * inv_freq.to(offsets.device)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    first, second = x[..., :half], x[..., half:2 * half]
    return torch.cat((first * cos - second * sin, second * cos + first * sin, x[..., 2 * half:]), dim=-1)


def _sdpa(module, query, key, value, attention_mask, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def method_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                     **kwargs):
    """transformers attention function (see the module docstring); returns ``(output, None)``."""
    setting: AttentionSetting | None = getattr(module, SETTING_ATTRIBUTE, None)
    if setting is None:
        return _sdpa(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    position_ids = kwargs.get("position_ids")
    if position_ids is None:
        raise ValueError(f"{type(module).__name__} was called without position_ids; the attention-level methods "
                         "need the query positions transformers passes to the attention function.")
    batch, heads, queries, head_dim = query.shape
    keys = key.shape[2]
    query_positions = position_ids.to(query.device).expand(batch, queries)
    if setting.logn:
        query = query * logn_scale(query_positions, setting.original_length)[:, None, :, None].to(query.dtype)
    method = ATTENTION_METHOD_REGISTRY.get(setting.method) if setting.method else None
    if (method is None or keys - 1 <= method.unchanged_up_to(setting.options, setting.original_length)
            or (method.unchanged_below is not None  # a real key's position is in [0, its query's]
                and int(query_positions.max()) < method.unchanged_below(setting.options, setting.original_length))):
        return _sdpa(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    if dropout:
        raise ValueError("the attention-level methods are for evaluation; this model is in training mode with dropout.")
    scaling = head_dim ** -0.5 if scaling is None else scaling
    # the row's last query is its key at index keys - 1; its keys have consecutive positions
    key_positions = (torch.arange(keys, device=query.device)[None, :]
                     + (query_positions[:, -1:] - (keys - 1)))
    repeats = heads // key.shape[1]
    key = key.repeat_interleave(repeats, dim=1) if repeats > 1 else key
    value = value.repeat_interleave(repeats, dim=1) if repeats > 1 else value
    work = torch.float32 if query.dtype in (torch.float16, torch.bfloat16) else query.dtype
    # the scale folded into the queries once: scores come out scaled (a pass fewer per block)
    query_w, key_w, value_w = query.to(work) * scaling, key.to(work), value.to(work)
    key_index = torch.arange(keys, device=query.device)
    block = max(1, min(queries, BLOCK_ELEMENTS // max(1, batch * heads * keys)))
    if not getattr(module, "is_causal", True):
        raise ValueError(f"{type(module).__name__} is not causal; the attention-level methods are for decoders.")
    output = torch.empty(batch, heads, queries, value.shape[-1], dtype=work, device=query.device)
    lowest = torch.finfo(work).min
    # B(j) depends on the key alone: the keys are re-rotated once per call, not once per block
    key_offsets = (assign_positions(setting.method, setting.options, setting.original_length,
                                    query_positions[:, :1, None], key_positions[:, None, :])
                   .key_position.expand(batch, 1, keys)[:, 0] - key_positions)
    moved_keys = rotate(key_w, key_offsets, setting.inv_freq)
    for start in range(0, queries, block):
        stop = min(queries, start + block)
        seen = min(keys, stop + keys - queries)  # causal: later keys are hidden from every query of the block
        block_positions, block_key_positions = query_positions[:, start:stop], key_positions[:, :seen]
        assignment = assign_positions(setting.method, setting.options, setting.original_length,
                                      block_positions[:, :, None], block_key_positions[:, None, :])
        query_offsets = assignment.query_position.expand(batch, stop - start, 1)[..., 0] - block_positions
        block_query = query_w[:, :, start:stop]
        moved_query = rotate(block_query, query_offsets, setting.inv_freq)
        # keys before the first one any query of the block keeps near are scored re-rotated only;
        # from there on both ways, merged pair by pair
        near = assignment.near.expand(batch, stop - start, seen)
        near_keys = near.any(dim=1).any(dim=0)
        split = int(near_keys.int().argmax()) if bool(near_keys.any()) else seen
        scores = torch.empty(batch, heads, stop - start, seen, dtype=work, device=query.device)
        scores[..., :split] = moved_query @ moved_keys[:, :, :split].transpose(-1, -2)
        if split < seen:
            true_scores = block_query @ key_w[:, :, split:seen].transpose(-1, -2)
            moved_scores = moved_query @ moved_keys[:, :, split:seen].transpose(-1, -2)
            scores[..., split:] = torch.where(near[:, None, :, split:], true_scores, moved_scores)
            del true_scores, moved_scores
        if attention_mask is None:  # causal: query q sits at key index keys - queries + q
            allowed = (key_index[None, :seen] <= torch.arange(start, stop, device=query.device)[:, None]
                       + keys - queries)[None, None]
        elif attention_mask.dtype == torch.bool:
            allowed = attention_mask[:, :, start:stop, :seen]
        else:
            scores += attention_mask[:, :, start:stop, :seen].to(work)
            allowed = None
        if assignment.visible is not None:
            allowed = assignment.visible[:, None] if allowed is None else allowed & assignment.visible[:, None]
        if allowed is not None:
            scores.masked_fill_(~allowed, lowest)  # lowest, not -inf: a padded row stays finite
        torch.matmul(torch.softmax(scores, dim=-1), value_w[:, :, :seen], out=output[:, :, start:stop])
    return output.to(query.dtype).transpose(1, 2).contiguous(), None
