"""The attention computation of the attention-level methods and log-n scaling on RoPE models: the
block path, and what FlexAttention shares with it.

:func:`lmeval_ctx.extension.attention.function.method_attention` (the transformers attention
function that :mod:`lmeval_ctx.extension.attention.patch` installs) gets queries and keys already
rotated at their true positions, and per layer an :class:`AttentionSetting`:

- log-n: queries at position ``i >= L`` (0-based) are multiplied by ``log(i+1)/log(L)``
  (Qwen's ``use_logn_attn``);
- an attention-level method (:mod:`lmeval_ctx.methods.attention`): since
  ``R(a) R(b) = R(a + b)``, a pair given relative position ``A(i) - B(j)`` instead of
  ``i - j`` is scored with the query re-rotated by ``A(i) - i`` and the key by ``B(j) - j``
  (rotary dimensions only: GPT-NeoX's partial rotary leaves the rest as it is). A block of
  queries at a time is attended, by one of two paths:

  - split (CPU, :class:`_SplitKeys`): each run of consecutive keys that the block's pairs
    score at true positions goes through torch's fused CPU attention kernel with the true
    queries and keys, each run scored at moved positions with the moved ones, and the partial
    results are merged by their log-sum-exp (:func:`split_attention`), as flash attention
    merges its tiles: every pair is computed once, at the head width, and a run that every row
    of the block takes whole (the keys long before the block, mostly) needs no mask at all;
  - joined (elsewhere, and where that kernel is missing; :class:`_JoinedKeys`): one
    ``scaled_dot_product_attention`` call per block, the queries joined as
    ``[q_rot, q'_rot, q_pass]``, each key as its true copy ``[k_rot, 0, k_pass]`` (scoring
    ``q . k``) or its moved copy ``[0, k'_rot, k_pass]`` (scoring ``q' . k'``), and a mask that
    lets each pair use the copy the method's ``near`` says. Every key the block sees comes in
    both copies, interleaved once per call so that they are a view: nothing is gathered and
    nothing is read back to the host (about four times the split path's products: two copies
    at twice the width; no synchronisation per block).

  Both respect causality, padding and the method's ``visible``. Memory stays linear in the
  length (a block's masks are bounded, SDPA's fused kernel works in tiles). The cache keeps
  keys at their true positions; each call re-rotates copies.

Inputs whose distances the method leaves unchanged (or, for DCA, which changes pairs by the
chunks their absolute positions fall in, whose positions all lie in its first chunk), and
layers with no setting, go through transformers' SDPA function with the same mask; the rest
through :func:`moved_attention` here, or through FlexAttention
(:mod:`lmeval_ctx.extension.attention.flex_kernel`), as ``attention_engine`` chooses. Both
re-rotate by angles computed once per call in float64 on the CPU (:func:`cos_sin`): no float64
on the device, and a few transfers per call, none per block (on CUDA FlexAttention runs by
default; the joined path is its fallback).
Positions: a row's tokens have consecutive positions, as transformers assigns them (left
padding included), so key ``k`` of a row is at ``position of its last query - (keys - 1 - k)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch

from lmeval_ctx.methods.attention import assign_positions

# The attribute of an attention module that holds its AttentionSetting (set by patch.install).
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
    inv_freq: torch.Tensor  # float64 inverse frequencies of the rotary dimensions, on the CPU
    previous_implementation: str | None  # restored by patch.remove()
    engine: str = "blocks"  # attention_engine: auto, flex or blocks (lmeval_ctx.extension.flex)

    @property
    def rotary_dim(self) -> int:
        return 2 * self.inv_freq.numel()


def logn_scale(positions: torch.Tensor, original_length: int) -> torch.Tensor:
    """``log(i+1)/log(L)`` for 0-based positions ``i >= L``, 1 below (Qwen's ``use_logn_attn``), in
    float32 (positions below 2^24 are exact in it; no float64 on the device)."""
    count = positions.to(torch.float32) + 1
    return torch.where(count > original_length, torch.log(count) / math.log(original_length),
                       torch.ones_like(count))


def cos_sin(offsets: torch.Tensor, inv_freq: torch.Tensor, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosines and sines of ``offsets`` (batch, n) x ``inv_freq``, ``(batch, 1, n, len(inv_freq))`` in
    ``dtype`` on ``device``: computed in float64 on the CPU (the angles of long offsets stay exact; no
    float64 on the device), once per call, not per block."""
    angles = offsets.to("cpu", torch.float64)[:, None, :, None] * inv_freq.to("cpu", torch.float64)
    return angles.cos().to(device, dtype), angles.sin().to(device, dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (batch, heads, n, rotary_dim) by the angles of :func:`cos_sin`, in the rotate-half
    layout."""
    half = cos.shape[-1]
    first, second = x[..., :half], x[..., half:]
    return torch.cat((first * cos - second * sin, second * cos + first * sin), dim=-1)


def moves(setting: AttentionSetting, query_positions: torch.Tensor, key_positions: torch.Tensor
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """How far the method moves each query (batch, queries) and each key (batch, keys): ``A(i) - i``
    and ``B(j) - j``, each a function of one position alone, so one row or column of pairs gives it.
    On the CPU (the methods' positions are float64): one transfer per call, no float64 on the device."""
    batch, queries, keys = query_positions.shape[0], query_positions.shape[1], key_positions.shape[1]
    query_positions, key_positions = query_positions.cpu(), key_positions.cpu()
    first_key = assign_positions(setting.method, setting.options, setting.original_length,
                                 query_positions[:, :, None], key_positions[:, :1, None])
    first_query = assign_positions(setting.method, setting.options, setting.original_length,
                                   query_positions[:, :1, None], key_positions[:, None, :])
    return (first_key.query_position.expand(batch, queries, 1)[..., 0] - query_positions,
            first_query.key_position.expand(batch, 1, keys)[:, 0] - key_positions)


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


# ----------------------------------------------------------------------------- a block of queries
@dataclass
class _Block:
    """One block of queries ``rows`` (a slice) and the keys ``[0, seen)`` its pairs may use."""

    rows: slice
    seen: int
    query: torch.Tensor  # (batch, heads, rows, d): at the true positions
    moved_query: torch.Tensor  # (batch, heads, rows, rotary_dim): the rotary part at the moved positions
    near: torch.Tensor  # (batch, 1, rows, seen): the pair keeps its true position
    allowed: torch.Tensor | None  # bool, broadcastable to near: the pair takes part (None: all)
    additive: torch.Tensor | None  # a caller's float mask (every pair takes part, with its bias), or None
    every_key_used: bool  # some pair of the block takes part for every key in [0, seen)

    def runs(self) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """The runs of keys some pair uses at the true positions, and at the moved ones: a key near for
        every row needs its true copy only, one far for every row its moved copy only, the band in
        between both, a key hidden from every row neither. Read on the host (the split path, on CPU)."""
        used = (torch.ones(self.seen, dtype=torch.bool, device=self.near.device) if self.every_key_used
                else _columns(self.allowed))
        return _runs(_columns(self.near) & used), _runs(~_columns(self.near, every=True) & used)


def block_masks(attention_mask, visible, start: int, stop: int, seen: int, keys: int, queries: int,
                 work: torch.dtype, device: torch.device):
    """``(allowed, additive)`` of a block from the model's mask and the method's ``visible``."""
    additive = None
    if attention_mask is None:  # causal: query q sits at key index keys - queries + q
        allowed = (torch.arange(seen, device=device)[None, :]
                   <= torch.arange(start, stop, device=device)[:, None] + keys - queries)[None, None]
    elif attention_mask.dtype == torch.bool:
        allowed = attention_mask[:, :, start:stop, :seen]
    else:  # an additive mask: every pair takes part, with its bias
        additive, allowed = attention_mask[:, :, start:stop, :seen].to(work), None
    if visible is not None:
        allowed = visible[:, None] if allowed is None else allowed & visible[:, None]
    return allowed, additive


def _blocks(setting: AttentionSetting, query: torch.Tensor, moved_query: torch.Tensor, query_positions: torch.Tensor,
            key_positions: torch.Tensor, attention_mask, rows: int) -> Iterator[_Block]:
    """The blocks of ``rows`` queries, each with its pairs' assignment (on the device, nothing read back)."""
    batch, _, queries, _ = query.shape
    keys = key_positions.shape[1]
    # int32 positions: the per-pair tensors of the assignment take half the memory traffic
    pair_query_positions, pair_key_positions = query_positions.to(torch.int32), key_positions.to(torch.int32)
    for start in range(0, queries, rows):
        stop = min(queries, start + rows)
        seen = min(keys, stop + keys - queries)  # causal: later keys are hidden from every query of the block
        assignment = assign_positions(setting.method, setting.options, setting.original_length,
                                      pair_query_positions[:, start:stop, None], pair_key_positions[:, None, :seen])
        allowed, additive = block_masks(attention_mask, assignment.visible, start, stop, seen, keys, queries,
                                         query.dtype, query.device)
        near = assignment.near[:, None].expand(batch, 1, stop - start, seen)  # (batch, 1, rows, seen)
        # with no mask but causality and no hidden keys, the block's last row sees every key
        every_key_used = allowed is None or (attention_mask is None and assignment.visible is None)
        yield _Block(slice(start, stop), seen, query[:, :, start:stop], moved_query[:, :, start:stop], near,
                     allowed, additive, every_key_used)


# ----------------------------------------------------------------------------- the two block paths
def _per_query_head(x: torch.Tensor, groups: int) -> torch.Tensor:
    return x.repeat_interleave(groups, 1) if groups > 1 else x


class _SplitKeys:
    """The split path (CPU): every key once at its true position and once moved, as many heads as
    the queries (the kernel has no grouped-query mode): a block's runs are views into these,
    nothing is gathered."""

    def __init__(self, kernel, key, moved_keys, value, heads: int, rotary_dim: int, scaling: float):
        groups = heads // key.shape[1]
        self.kernel, self.scaling, self.value_dim = kernel, scaling, value.shape[-1]
        self.true_keys = _per_query_head(key, groups)
        self.moved_keys = _per_query_head(torch.cat((moved_keys, key[..., rotary_dim:]), dim=-1), groups)
        self.values = _per_query_head(value, groups)
        if self.value_dim != key.shape[-1]:  # the fused kernel wants the values as wide as the keys
            self.values = torch.nn.functional.pad(self.values, (0, key.shape[-1] - self.value_dim))

    def __call__(self, block: _Block) -> torch.Tensor:
        true_runs, moved_runs = block.runs()
        if not true_runs and not moved_runs:  # padding rows only: no key to attend
            return block.query.new_zeros(*block.query.shape[:-1], self.value_dim)
        rot = block.moved_query.shape[-1]
        moved_query = torch.cat((block.moved_query, block.query[..., rot:]), dim=-1)
        return split_attention(
            self.kernel, ((true_runs, block.query, self.true_keys, True),
                          (moved_runs, moved_query, self.moved_keys, False)),
            self.values, block.near, block.allowed, block.additive, self.scaling)[..., :self.value_dim]


class _JoinedKeys:
    """The joined path (every device but the CPU, and the CPU without its fused kernel): one
    ``scaled_dot_product_attention`` call per block and no synchronisation with the host. Queries
    ``[q_rot, q'_rot, q_pass]`` score ``q . k`` against a key's true copy ``[k_rot, 0, k_pass]`` and
    ``q' . k'`` against its moved copy ``[0, k'_rot, k_pass]`` (the pass-through dimensions are the
    same in both). The copies are interleaved once per call (key ``j``'s true copy at ``2j``, its
    moved one at ``2j + 1``), so a block's keys ``[0, seen)`` in both copies are the first
    ``2 seen`` rows: a view, nothing gathered, and no runs of keys to read back. Each pair takes the
    copy ``near`` says (a mask); every key is scored twice, the price of not reading the block's
    runs on the host. Values are paired the same way, padded with zeros to the keys' width: torch's
    fused CPU kernel needs equal widths (with narrower values SDPA falls back to materialising the
    scores)."""

    def __init__(self, key, moved_keys, value, rotary_dim: int, scaling: float):
        zeros = key.new_zeros(*key.shape[:-1], rotary_dim)
        true_copies = torch.cat((key[..., :rotary_dim], zeros, key[..., rotary_dim:]), dim=-1)
        moved_copies = torch.cat((zeros, moved_keys, key[..., rotary_dim:]), dim=-1)
        self.keys = torch.stack((true_copies, moved_copies), dim=3).flatten(2, 3)  # (batch, kv, 2 keys, width)
        padded = torch.nn.functional.pad(value, (0, true_copies.shape[-1] - value.shape[-1]))
        self.values = padded.repeat_interleave(2, dim=2)  # key j's value at 2j and 2j + 1
        self.value_dim, self.scaling = value.shape[-1], scaling

    def __call__(self, block: _Block) -> torch.Tensor:
        rot = block.moved_query.shape[-1]
        joined_query = torch.cat((block.query[..., :rot], block.moved_query, block.query[..., rot:]), dim=-1)
        pairs = torch.stack((block.near, ~block.near), dim=-1)  # (batch, 1, rows, seen, 2): which copy
        if block.allowed is not None:
            pairs = pairs & block.allowed[..., None]
        # additive, with the lowest number rather than -inf for the pairs left out: a padding row that
        # has no key left stays finite (its values would reach the real rows as 0 * NaN otherwise)
        work = self.values.dtype
        bias = (torch.zeros((), dtype=work, device=pairs.device) if block.additive is None
                else block.additive[..., None])
        mask = torch.where(pairs, bias, torch.finfo(work).min).flatten(-2)
        keys, values = self.keys[:, :, :2 * block.seen], self.values[:, :, :2 * block.seen]
        return torch.nn.functional.scaled_dot_product_attention(
            joined_query, keys, values, attn_mask=mask, scale=self.scaling,
            enable_gqa=joined_query.shape[1] != keys.shape[1])[..., :self.value_dim]


# ----------------------------------------------------------------------------- the attention function
def moved_attention(setting: AttentionSetting, query, key, value, attention_mask, query_positions,
                     scaling: float) -> torch.Tensor:
    """The method's attention, a block of queries at a time: ``(batch, heads, queries, value_dim)``
    in the work dtype (float32 for half-precision inputs)."""
    batch, heads, queries, _ = query.shape
    keys, rot = key.shape[2], setting.rotary_dim
    work = torch.float32 if query.dtype in (torch.float16, torch.bfloat16) else query.dtype
    query, key, value = query.to(work), key.to(work), value.to(work)
    # the row's last query is its key at index keys - 1; its keys have consecutive positions
    key_positions = torch.arange(keys, device=query.device)[None, :] + (query_positions[:, -1:] - (keys - 1))
    # queries and keys are re-rotated once per call, not once per block
    query_moves, key_moves = moves(setting, query_positions, key_positions)
    moved_query = rotate(query[..., :rot], *cos_sin(query_moves, setting.inv_freq, work, query.device))
    moved_keys = rotate(key[..., :rot], *cos_sin(key_moves, setting.inv_freq, work, query.device))
    rows = max(1, min(queries, BLOCK_ROWS, BLOCK_ELEMENTS // max(1, batch * keys)))
    kernel = cpu_kernel(query.device)
    attend = (_SplitKeys(kernel, key, moved_keys, value, heads, rot, scaling) if kernel is not None
              else _JoinedKeys(key, moved_keys, value, rot, scaling))
    del moved_keys  # held by attend in the form its path needs
    output = torch.empty(batch, heads, queries, value.shape[-1], dtype=work, device=query.device)
    for block in _blocks(setting, query, moved_query, query_positions, key_positions, attention_mask, rows):
        output[:, :, block.rows] = attend(block)
    return output
