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
  queries at a time is attended. On CPU (:func:`split_attention`), each run of consecutive keys
  that the block's pairs score at true positions goes through torch's fused CPU attention kernel
  with the true queries and keys, each run scored at moved positions with the moved ones, and
  the partial results are merged by their log-sum-exp, as flash attention merges its tiles: every
  pair is computed once, at the head width, and a run that every row of the block takes whole (the
  keys long before the block, mostly) needs no mask at all. Elsewhere (and where that kernel is
  missing) the block goes through one ``scaled_dot_product_attention`` call: the queries joined
  as ``[q_rot, q'_rot, q_pass]``, each key as its true copy ``[k_rot, 0, k_pass]`` (scoring
  ``q . k``) or its moved copy ``[0, k'_rot, k_pass]`` (scoring ``q' . k'``), and a mask that
  lets each pair use the copy the method's ``near`` says (and respects causality, padding and
  the method's ``visible``). Keys near for every row of the block come once, true; keys far
  for every row once, moved; the band near for some rows and far for others twice. Memory
  stays linear in the length (a block's masks are bounded, SDPA's fused kernel works in
  tiles). The cache keeps keys at their true positions; each call re-rotates copies.

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
# Queries per block: small enough that the causal triangle inside a block (which SDPA computes in
# full, masked) is a small part of the work, large enough that so is gathering the block's keys;
# fewer when the pairs of a block (its masks, rows x keys) would pass BLOCK_ELEMENTS, so memory
# stays linear in the length.
BLOCK_ROWS = 256
BLOCK_ELEMENTS = 1 << 22
# On CPU, attend a block's runs of keys separately and merge them (split_attention); False forces
# the joined single-call path every other device takes (the tests run both).
SPLIT_ON_CPU = True


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
    from lmeval_ctx.extension.request import text_config
    from lmeval_ctx.extension.rope.rotary import rotary_modules

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
    :func:`lmeval_ctx.extension.request.layer_types_to_scale`, applied per layer: attention, unlike a
    rotary embedding shared by all layers, can be left as it is layer by layer."""
    from lmeval_ctx.extension.request import BOUNDED_LAYER_TYPES

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


def _columns(pairs: torch.Tensor, every: bool = False) -> torch.Tensor:
    """The keys (..., rows, keys) -> (keys,) for which any pair (every pair, if ``every``) is True."""
    reduce = torch.all if every else torch.any
    return reduce(reduce(pairs, dim=-2).flatten(0, -2), dim=0)


def _runs(columns: torch.Tensor) -> list[tuple[int, int]]:
    """The runs ``[a, b)`` of consecutive True in ``columns`` (keys,)."""
    edges = torch.diff(columns.to(torch.int8), prepend=columns.new_zeros(1, dtype=torch.int8),
                       append=columns.new_zeros(1, dtype=torch.int8))
    return list(zip((edges == 1).nonzero()[:, 0].tolist(), (edges == -1).nonzero()[:, 0].tolist()))


def cpu_kernel(device: torch.device):
    """torch's fused CPU attention kernel, which also returns each row's log-sum-exp, on CPU where
    torch has it and :data:`SPLIT_ON_CPU` is set; else None (the joined single-call path)."""
    if not SPLIT_ON_CPU or device.type != "cpu":
        return None
    return getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def split_attention(kernel, parts, values, near, allowed, additive, scaling: float) -> torch.Tensor:
    """One block's attention from runs of keys attended separately, merged by log-sum-exp.

    ``parts``: for the true and the moved positions, ``(runs, queries, keys, is_near)``: the runs
    ``[a, b)`` of keys, the block's queries (batch, heads, rows, d), every key (batch, heads, keys,
    d), and whether these positions serve the block's ``near`` pairs (the true ones) or the others.
    ``near`` (batch, 1, rows, seen), ``allowed`` (broadcastable bool, or None: all) and
    ``additive`` (a float bias, or None) are the block's masks. Softmax over all runs = each run's
    softmax weighted by ``exp(lse_run - lse_all)``."""
    outputs, lses = [], []
    for runs, block_queries, keys, is_near in parts:
        for a, b in runs:
            take = near[..., a:b] if is_near else ~near[..., a:b]  # only the run's columns, not the block's
            if allowed is not None:
                take = take & allowed[..., a:b]
            if additive is None and bool(take.all()):
                mask = None  # every row takes every key of the run: no mask to build or read
            else:  # the lowest number, not -inf: a row with no key in this run gets weight 0, not NaN
                bias = additive[..., a:b] if additive is not None else torch.zeros((), dtype=keys.dtype)
                mask = torch.where(take, bias, torch.finfo(keys.dtype).min)
            output, lse = kernel(block_queries, keys[:, :, a:b], values[:, :, a:b], 0.0, False,
                                 attn_mask=mask, scale=scaling)
            outputs.append(output)
            lses.append(lse)
    if len(outputs) == 1:
        return outputs[0]
    weights = torch.softmax(torch.stack(lses), dim=0)  # (runs, batch, heads, rows)
    merged = outputs[0] * weights[0, ..., None]
    for output, weight in zip(outputs[1:], weights[1:]):
        merged.addcmul_(output, weight[..., None])
    return merged


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
    kv_heads, keys = key.shape[1], key.shape[2]
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
    if not getattr(module, "is_causal", True):
        raise ValueError(f"{type(module).__name__} is not causal; the attention-level methods are for decoders.")
    scaling = head_dim ** -0.5 if scaling is None else scaling
    # the row's last query is its key at index keys - 1; its keys have consecutive positions
    key_positions = (torch.arange(keys, device=query.device)[None, :]
                     + (query_positions[:, -1:] - (keys - 1)))
    work = torch.float32 if query.dtype in (torch.float16, torch.bfloat16) else query.dtype
    query_w, key_w, value_w = query.to(work), key.to(work), value.to(work)
    rot, value_dim = setting.rotary_dim, value.shape[-1]
    # B(j) depends on the key alone: the keys are re-rotated once per call, not once per block
    key_offsets = (assign_positions(setting.method, setting.options, setting.original_length,
                                    query_positions[:, :1, None], key_positions[:, None, :])
                   .key_position.expand(batch, 1, keys)[:, 0] - key_positions)
    moved_keys = rotate(key_w[..., :rot], key_offsets, setting.inv_freq)
    kernel = cpu_kernel(query.device)
    block = max(1, min(queries, BLOCK_ROWS, BLOCK_ELEMENTS // max(1, batch * keys)))
    output = torch.empty(batch, heads, queries, value_dim, dtype=work, device=query.device)
    if kernel is not None:
        # Every key once at its true position and once moved, as many heads as the queries (the
        # kernel has no grouped-query mode): a block's runs are views into these, nothing is gathered.
        groups = heads // kv_heads

        def per_query_head(x: torch.Tensor) -> torch.Tensor:
            return x.repeat_interleave(groups, 1) if groups > 1 else x

        true_keys = per_query_head(key_w)
        moved_keys = per_query_head(torch.cat((moved_keys, key_w[..., rot:]), dim=-1))
        values = per_query_head(value_w)
        if value_dim != head_dim:  # the fused kernel wants the values as wide as the keys
            values = torch.nn.functional.pad(values, (0, head_dim - value_dim))
    else:
        # Queries [q_rot, q'_rot, q_pass] score q . k against a key's true copy [k_rot, 0, k_pass] and
        # q' . k' against its moved copy [0, k'_rot, k_pass] (the pass-through dimensions are the same in
        # both): one product gives every pair the score its kind asks for.
        zeros = key_w.new_zeros(batch, kv_heads, keys, rot)
        true_copies = torch.cat((key_w[..., :rot], zeros, key_w[..., rot:]), dim=-1)  # (batch, kv_heads, keys, width)
        moved_copies = torch.cat((zeros, moved_keys, key_w[..., rot:]), dim=-1)
        del zeros, moved_keys
        width = true_copies.shape[-1]
        # each block's key copies and values, gathered into buffers reused from block to block (sized for
        # every key once plus a band of both copies as wide as the block, grown if a block needs more);
        # values padded with zeros to the keys' width: torch's fused CPU kernel needs equal widths (with
        # narrower values SDPA falls back to materialising the scores)
        keys_buffer = values_buffer = query_w.new_empty(0, 0, 0, 0)
        room = keys + block
    key_index = torch.arange(keys, device=query.device)
    # int32 positions: the per-pair tensors of the assignment take half the memory traffic
    pair_query_positions, pair_key_positions = query_positions.to(torch.int32), key_positions.to(torch.int32)
    for start in range(0, queries, block):
        stop = min(queries, start + block)
        seen = min(keys, stop + keys - queries)  # causal: later keys are hidden from every query of the block
        block_positions = query_positions[:, start:stop]
        assignment = assign_positions(setting.method, setting.options, setting.original_length,
                                      pair_query_positions[:, start:stop, None], pair_key_positions[:, None, :seen])
        query_offsets = assignment.query_position.expand(batch, stop - start, 1)[..., 0] - block_positions
        block_query = query_w[:, :, start:stop]
        moved_query = rotate(block_query[..., :rot], query_offsets, setting.inv_freq)
        additive = None
        if attention_mask is None:  # causal: query q sits at key index keys - queries + q
            allowed = (key_index[None, :seen] <= torch.arange(start, stop, device=query.device)[:, None]
                       + keys - queries)[None, None]
        elif attention_mask.dtype == torch.bool:
            allowed = attention_mask[:, :, start:stop, :seen]
        else:  # an additive mask: every pair takes part, with its bias
            additive, allowed = attention_mask[:, :, start:stop, :seen].to(work), None
        if assignment.visible is not None:
            allowed = assignment.visible[:, None] if allowed is None else allowed & assignment.visible[:, None]
        near = assignment.near[:, None].expand(batch, 1, stop - start, seen)  # (batch, 1, rows, seen)
        # The copies some pair of the block may use: a key near for every row of the block needs its true
        # copy only, one far for every row its moved copy only, the band in between both; a key hidden
        # from every row neither. Taken as runs of consecutive keys (slices gather faster than an index).
        if allowed is None or (attention_mask is None and assignment.visible is None):  # the last row sees all
            used = torch.ones(seen, dtype=torch.bool, device=query.device)
        else:
            used = _columns(allowed)
        true_runs, moved_runs = _runs(_columns(near) & used), _runs(~_columns(near, every=True) & used)
        columns = sum(b - a for a, b in true_runs + moved_runs)
        if not columns:  # padding rows only: no key to attend to
            output[:, :, start:stop] = 0
            continue
        if kernel is not None:
            moved_query = torch.cat((moved_query, block_query[..., rot:]), dim=-1)
            output[:, :, start:stop] = split_attention(
                kernel, ((true_runs, block_query, true_keys, True), (moved_runs, moved_query, moved_keys, False)),
                values, near, allowed, additive, scaling)[..., :value_dim]
            continue
        joined_query = torch.cat((block_query[..., :rot], moved_query, block_query[..., rot:]), dim=-1)
        # which copy each pair uses: (batch, 1 or heads, rows, columns)
        mask = torch.empty(torch.broadcast_shapes(near.shape, () if allowed is None else allowed.shape)[:-1]
                           + (columns,), dtype=torch.bool, device=query.device)
        if keys_buffer.shape[2] < columns:
            room = max(room, columns)
            keys_buffer = query_w.new_empty(batch, kv_heads, room, width)
            values_buffer = query_w.new_zeros(batch, kv_heads, room, width)
        keys_block, values_block = keys_buffer[:, :, :columns], values_buffer[:, :, :columns]
        at = 0
        for runs, copies, kind in ((true_runs, true_copies, True), (moved_runs, moved_copies, False)):
            for a, b in runs:
                piece = slice(at, at + b - a)
                keys_block[:, :, piece] = copies[:, :, a:b]
                values_block[:, :, piece, :value_dim] = value_w[:, :, a:b]
                pairs = near[..., a:b] if kind else ~near[..., a:b]
                if allowed is None:
                    mask[..., piece] = pairs
                else:
                    torch.logical_and(pairs, allowed[..., a:b], out=mask[..., piece])
                at += b - a
        # additive, with the lowest number rather than -inf for the pairs left out: a padding row that
        # has no key left stays finite (its values would reach the real rows as 0 * NaN otherwise)
        bias = (torch.zeros((), dtype=work, device=query.device) if additive is None
                else torch.cat([additive[..., a:b] for a, b in true_runs + moved_runs], dim=-1))
        mask = torch.where(mask, bias, torch.finfo(work).min)
        output[:, :, start:stop] = torch.nn.functional.scaled_dot_product_attention(
            joined_query, keys_block, values_block, attn_mask=mask, scale=scaling,
            enable_gqa=heads != kv_heads)[..., :value_dim]
    return output.to(query.dtype).transpose(1, 2).contiguous(), None
