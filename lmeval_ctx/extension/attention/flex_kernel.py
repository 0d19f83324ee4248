"""The attention-level methods through FlexAttention: every pair at its method's position in one
fused kernel per layer.

FlexAttention (``torch.nn.attention.flex_attention``; Dong et al. 2024, "Flex Attention: A
Programming Model for Generating Optimized Attention Kernels", arXiv:2412.05496) computes
``softmax(q k^T * scale) v`` in tiles of 128 x 128 pairs, skipping the tiles its block mask
leaves out and running a ``mask_mod`` only on the tiles it marks partial.

A pair needs one of two rotations (:mod:`lmeval_ctx.extension.attention.kernel`): its true
positions or its moved ones. Both run in one call, side by side along the head dimension, as the
joined block path does: the queries are ``[q_rot, q'_rot, q_pass]`` (``q'`` re-rotated to the
method's query position), and the key axis holds every key twice: its true copy
``[k_rot, 0, k_pass]`` (scoring ``q . k``) and its moved copy ``[0, k'_rot, k_pass]`` (scoring
``q' . k'``), each copy padded to a whole number of tiles. A pair is visible in the copy its
method's ``near`` says, if causality, padding and the method's ``visible`` allow it. The scale is
given explicitly (the head is wider than the model's).

The mask is the same for every layer of a forward: :func:`pair_plan` evaluates the method's
assignment (:func:`lmeval_ctx.methods.attention.assign_positions`, any method of the registry)
once per forward, a band of query tiles at a time, and keeps per tile whether it is empty, full
or partial, and the pair-by-pair mask of the partial tiles only (the causal diagonal, the edges of
a method's windows and chunks, padding): memory linear in the length for every method. The
``mask_mod`` looks the partial tiles up, so its code is the same for every method: one compiled
kernel serves the whole registry. Queries and keys are padded to a few length buckets
(:func:`lmeval_ctx.extension.flex.padded_length`), the padding in empty tiles, and the kernel is compiled per bucket with static
shapes (:func:`lmeval_ctx.extension.flex.compiled_flex_attention`): a new length in a compiled
bucket compiles nothing.
Rotation angles are computed once per forward in float64 on the CPU and moved to the device as
cosines and sines in the work dtype.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from lmeval_ctx.extension.attention.kernel import AttentionSetting, block_masks, cos_sin, moves, rotate
from lmeval_ctx.extension.flex import TILE, compiled_flex_attention, padded_length
from lmeval_ctx.methods.attention import assign_positions

# Pairs (batch x rows x keys) evaluated at once while classifying tiles: bounds the plan's working memory.
PLAN_ELEMENTS = 1 << 24


def flex_declines(attention_mask) -> str | None:
    """Why a call goes through the block path even with the flex engine, or None."""
    if attention_mask is None or attention_mask.dtype == torch.bool and attention_mask.shape[1] == 1:
        return None
    return "a float or per-head attention mask (the block path applies it as it is)"


@dataclass
class PairPlan:
    """One forward's pairs: the block mask over ``(queries, 2 x padded keys)`` and the rotations."""

    block_mask: object  # torch.nn.attention.flex_attention.BlockMask
    padded_queries: int  # the queries' bucket
    padded_keys: int  # keys per copy: their bucket
    query_cos: torch.Tensor  # (batch, 1, queries, rotary_dim / 2): the queries' moves
    query_sin: torch.Tensor
    key_cos: torch.Tensor  # (batch, 1, keys, rotary_dim / 2): the keys' moves
    key_sin: torch.Tensor


def _tile_pairs(setting: AttentionSetting, query_positions, key_positions, attention_mask, start: int,
                stop: int, padded_keys: int) -> torch.Tensor:
    """The visible pairs of queries ``[start, stop)`` against both copies: ``(batch, tiles, TILE,
    2 x padded_keys)``, rows past the last query and keys past the last key False."""
    batch, queries, keys = query_positions.shape[0], query_positions.shape[1], key_positions.shape[1]
    assignment = assign_positions(setting.method, setting.options, setting.original_length,
                                  query_positions[:, start:stop, None], key_positions[:, None, :])
    allowed, _ = block_masks(attention_mask, assignment.visible, start, stop, keys, keys, queries,
                             torch.float32, query_positions.device)
    near = assignment.near.expand(batch, stop - start, keys)
    allowed = allowed[:, 0].expand(batch, stop - start, keys)
    rows = -(-(stop - start) // TILE) * TILE
    pairs = torch.zeros(batch, rows, 2, padded_keys, dtype=torch.bool, device=near.device)
    torch.logical_and(near, allowed, out=pairs[:, :stop - start, 0, :keys])
    torch.logical_and(~near, allowed, out=pairs[:, :stop - start, 1, :keys])
    return pairs.view(batch, rows // TILE, TILE, 2 * padded_keys)


def _ordered(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FlexAttention's sparse form of a (batch, q tiles, kv tiles) bool: counts and indices first."""
    counts = blocks.sum(-1, dtype=torch.int32)[:, None]
    indices = torch.argsort(blocks.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)[:, None]
    return counts, indices


def _block_mask(setting: AttentionSetting, query_positions, key_positions, attention_mask, padded_queries: int,
                padded_keys: int):
    """The block mask of the pairs (see the module docstring), a band of query tiles at a time; its
    tensors sized by the buckets alone, so a new length in a bucket compiles nothing."""
    from torch.nn.attention.flex_attention import BlockMask

    batch, queries = query_positions.shape
    kv_tiles = 2 * padded_keys // TILE
    band = max(1, PLAN_ELEMENTS // (batch * TILE * 2 * padded_keys)) * TILE
    partial, full, slots, tables, count = [], [], [], [], 0
    for start in range(0, queries, band):
        stop = min(queries, start + band)
        pairs = _tile_pairs(setting, query_positions, key_positions, attention_mask, start, stop, padded_keys)
        tiles = pairs.view(*pairs.shape[:3], kv_tiles, TILE).transpose(2, 3)  # (batch, q tiles, kv tiles, T, T)
        taken = tiles.sum((-1, -2), dtype=torch.int32)
        real_rows = torch.clamp(stop - start - torch.arange(0, pairs.shape[1] * TILE, TILE, device=pairs.device),
                                max=TILE)
        is_full = taken == (real_rows * TILE)[None, :, None]
        is_partial = (taken > 0) & ~is_full
        tables.append(tiles[is_partial])  # one host synchronisation per band, none per tile
        slot = torch.cumsum(is_partial.flatten(), 0).view(is_partial.shape) - 1 + count
        count += tables[-1].shape[0]
        partial.append(is_partial), full.append(is_full), slots.append(slot.clamp(min=0).to(torch.int32))
    table = torch.zeros(1 << max(0, (count - 1).bit_length()), TILE, TILE, dtype=torch.bool,
                        device=key_positions.device)  # a power of two of tiles: few sizes, few kernels
    if count:
        table[:count] = torch.cat(tables)
    table = table.flatten()
    extra = padded_queries // TILE - sum(p.shape[1] for p in partial)  # the padded queries' tiles: empty
    partial, full, slots = (torch.cat((*x, x[0].new_zeros(batch, extra, kv_tiles)), dim=1)
                            for x in (partial, full, slots))
    slot = slots * TILE * TILE
    # each index's tile and place in it, looked up rather than computed in the kernel (one gather fewer)
    rows, columns = (torch.arange(n, dtype=torch.int32, device=table.device) for n in (slot.shape[1] * TILE,
                                                                                          2 * padded_keys))
    row_tile, row_place, column_tile, column_place = rows // TILE, rows % TILE * TILE, columns // TILE, columns % TILE

    def mask_mod(b, h, q, kv):
        return table[slot[b, row_tile[q], column_tile[kv]] + row_place[q] + column_place[kv]]

    return BlockMask.from_kv_blocks(*_ordered(partial), *_ordered(full), BLOCK_SIZE=TILE, mask_mod=mask_mod,
                                    seq_lengths=(padded_queries, 2 * padded_keys), compute_q_blocks=False)


# The last forward's plan, found again by the next layer of the same forward: keyed by the identities
# of the position ids (each layer gets a new view of them: its base) and the mask, which every layer of
# a forward shares (weakly: a plan never keeps a finished forward's tensors alive), and their versions.
_LAST: dict = {}


def _owner(tensor):
    return None if tensor is None else (tensor._base if tensor._base is not None else tensor)


def pair_plan(setting: AttentionSetting, query_positions: torch.Tensor, attention_mask, keys: int,
              dtype) -> PairPlan:
    """The plan of this forward (made by its first layer, reused by the others)."""
    owners = (_owner(query_positions), _owner(attention_mask))
    key = (id(setting), keys, dtype, tuple(query_positions.shape), query_positions.stride(),
           query_positions.storage_offset(), *((id(t), t._version) if t is not None else None for t in owners))
    if _LAST.get("key") == key and all(ref() is t for ref, t in zip(_LAST["refs"], owners)):
        return _LAST["plan"]
    key_positions = torch.arange(keys, device=query_positions.device)[None, :] + (query_positions[:, -1:] - (keys - 1))
    query_moves, key_moves = moves(setting, query_positions, key_positions)
    device, padded, padded_queries = query_positions.device, padded_length(keys), padded_length(query_positions.shape[1])
    block_mask = _block_mask(setting, query_positions.to(torch.int32), key_positions.to(torch.int32), attention_mask,
                             padded_queries, padded)
    plan = PairPlan(block_mask, padded_queries, padded, *cos_sin(query_moves, setting.inv_freq, dtype, device),
                    *cos_sin(key_moves, setting.inv_freq, dtype, device))
    _LAST.clear()
    _LAST.update(key=key, plan=plan, refs=tuple(weakref.ref(t) if t is not None else (lambda: None) for t in owners))
    return plan


def flex_method_attention(setting: AttentionSetting, query, key, value, attention_mask, query_positions,
                          scaling: float) -> torch.Tensor:
    """The method's attention in one FlexAttention call: ``(batch, heads, queries, value_dim)`` in
    the work dtype (float32 on CPU and for float32 inputs; the input dtype on other devices, where
    FlexAttention accumulates in float32 itself)."""
    batch, heads, queries, _ = query.shape
    keys, rot = key.shape[2], setting.rotary_dim
    work = query.dtype if query.device.type != "cpu" else torch.float32
    query, key, value = query.to(work), key.to(work), value.to(work)
    plan = pair_plan(setting, query_positions, attention_mask, keys, work)
    joined_query = query.new_zeros(batch, heads, plan.padded_queries, query.shape[-1] + rot)
    joined_query[:, :, :queries] = torch.cat((query[..., :rot], rotate(query[..., :rot], plan.query_cos,
                                                                       plan.query_sin), query[..., rot:]), dim=-1)
    kv_heads, width = key.shape[1], key.shape[-1] + rot
    joined_keys = key.new_zeros(batch, kv_heads, 2, plan.padded_keys, width)
    joined_keys[:, :, 0, :keys, :rot] = key[..., :rot]
    joined_keys[:, :, 1, :keys, rot:2 * rot] = rotate(key[..., :rot], plan.key_cos, plan.key_sin)
    joined_keys[:, :, :, :keys, 2 * rot:] = key[:, :, None, :, rot:]
    joined_values = value.new_zeros(batch, kv_heads, 2, plan.padded_keys, value.shape[-1])
    joined_values[:, :, :, :keys] = value[:, :, None]
    joined_keys, joined_values = joined_keys.flatten(2, 3), joined_values.flatten(2, 3)
    return compiled_flex_attention(static=True)(joined_query, joined_keys, joined_values, block_mask=plan.block_mask,
                                                scale=scaling, enable_gqa=kv_heads != heads)[:, :, :queries]
