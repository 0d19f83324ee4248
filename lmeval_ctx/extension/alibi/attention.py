"""Exact ALiBi attention in memory linear in the length, for BLOOM, MPT and Falcon-ALiBi: the block path.

transformers runs these models' ALiBi attention on whole ``heads x queries x keys``
score tensors (BLOOM, MPT: eager attention; Falcon: a dense float mask with the bias
folded in). Here a block of query rows is attended at a time with
``torch.nn.functional.scaled_dot_product_attention`` at the model's head size; the block's
additive float mask (``batch x heads x rows x keys``) is the ALiBi bias of those rows
(:class:`AlibiBias`) with their causal and padding mask. Nothing of size ``queries x keys`` is
ever built. The slopes of the running call come from :mod:`lmeval_ctx.extension.alibi.scaling`
(see there for how).

ALiBi adds ``-m_h (i - j)`` (Press et al. 2021, "Train Short, Test Long", arXiv:2108.12409;
docs/methods.md; docs/alibi_attention.md). The bias is formed per block in float32 from each
pair's relative position ``j - i`` (integers, exact in float32), never from ``m_h j`` rounded to
the model's dtype (Falcon's own bfloat16 rounding, its definition in every dtype, is kept: see
:func:`falcon_alibi`): in bfloat16, ``m_h j`` at ``j = 8000`` has a step of 32 positions, so
transformers' BLOOM gives dozens of neighbouring keys one bias, and its error grows with the
position. Relative to each row's own query the bias is 0 on the diagonal and small near it, so
its one rounding to the attention's dtype, as the block's mask, costs little.

Each architecture's replacement forward keeps everything of the original except
the score/softmax/value part: BLOOM adds its bias unscaled (``baddbmm`` with
``beta=1``, ``alpha=1/sqrt(head_dim)``); MPT clips ``qkv`` (``clip_qkv``), scales by
``softmax_scale`` and adds its bias unscaled (relative to indices, as its ``position_bias``);
Falcon scales its bias (``slope x position`` rounded to bfloat16 in every dtype, its model's
definition, see :func:`falcon_alibi`) by ``1/sqrt(head_dim)``; BLOOM and Falcon count positions
over the attention mask (:meth:`RowBlockMask.key_positions`).

The model's mask comes from transformers' ``create_causal_mask`` as a
:class:`lmeval_ctx.extension.alibi.masks.RowBlockMask` instead of a dense
``batch x 1 x queries x keys`` tensor: each block's rows are built by transformers' own
``sdpa_mask``, so causal masking, padding, KV-cache offsets and packed sequences are
transformers' own.

The engine of a call (:func:`call_engine`): FlexAttention
(:mod:`lmeval_ctx.extension.alibi.flex_attention`, the same bias as a ``score_mod``) where it runs
and takes the call (``attention_engine`` ``auto`` or ``flex``; the choice is
:mod:`lmeval_ctx.extension.flex`'s), else the blocks below.

LM-Infinite (``scaling=lm_infinite``; Han et al. 2023, arXiv:2308.16137) runs here too, as an
:class:`lmeval_ctx.extension.alibi.scaling.AlibiPositionMethod`: the relative position of
:func:`lmeval_ctx.methods.attention.lm_infinite`, ``rel = min(i - j, L)``, makes the bias
``-m_h * rel``, i.e. the model's bias plus ``m_h * (i - j - rel)`` on the pairs
past the ceiling, and its Λ-shaped mask hides the keys between the first ``global_tokens``
and the last ``local_window``. Both are built per query block only for the blocks they change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lmeval_ctx.extension.alibi.flex_attention import (
    TILE,
    call_inputs,
    flex_alibi_attention,
    flex_declines,
    flex_inputs,
)
from lmeval_ctx.extension.alibi.masks import RowBlockMask
from lmeval_ctx.extension.alibi.scaling import (
    AlibiPositionMethod,
    active_position_method,
    active_slopes,
    attention_choice,
)
from lmeval_ctx.extension.flex import resolve_engine, validate_engine

# Bytes one query block's float32 bias may take (its scores inside SDPA are of the same size).
BLOCK_BYTES = 128 * 2**20
MAX_BLOCK_ROWS = 512
MIN_BLOCK_ROWS = 16


# ----------------------------------------------------------------------------- the attention core
def _block_rows(batch: int, heads: int, keys: int) -> int:
    rows = BLOCK_BYTES // max(1, batch * heads * keys * 4)  # the bias is formed in float32
    return int(min(MAX_BLOCK_ROWS, max(MIN_BLOCK_ROWS, rows)))


def _per_query_head(x: torch.Tensor, heads: int) -> torch.Tensor:
    """Keys or values ``(batch, kv_heads, keys, d)`` for each of ``heads`` query heads (query head
    ``h`` reads key/value head ``h // (heads / kv_heads)``, as transformers' ``repeat_kv``)."""
    if x.shape[1] == heads:
        return x
    if x.shape[1] == 1:  # multi-query: a view, no copy
        return x.expand(-1, heads, -1, -1)
    return x.repeat_interleave(heads // x.shape[1], dim=1)


@dataclass(frozen=True)
class AlibiBias:
    """ALiBi's bias from relative positions: ``scale_h * (grid_h[j] - grid_h[i])`` for query ``i``
    (an index among the keys) and key ``j``, formed in float32 a block of rows at a time.

    ``grid``: ``(batch or 1, heads or 1, keys)`` float32, each key's position in the model's
    ALiBi units: integer positions for BLOOM and MPT (so ``grid[j] - grid[i]`` is the exact
    relative position and ``scale`` the slopes), Falcon's bfloat16-rounded ``slope x position``
    (``scale``: ``1/sqrt(head_dim)``). ``scale``: ``(heads,)`` float32, on the grid's device.
    """

    grid: torch.Tensor
    scale: torch.Tensor

    @classmethod
    def linear(cls, positions: torch.Tensor, slopes: torch.Tensor) -> "AlibiBias":
        """``-m_h (p_i - p_j)`` for integer ``positions`` ``(batch or 1, keys)``: the exact ALiBi bias."""
        return cls(positions.to(torch.float32)[:, None, :], slopes)

    def rows(self, first_query: int | None, start: int, stop: int, key_end: int) -> torch.Tensor:
        """``(batch or 1, heads, rows, key_end)`` float32 for query rows ``[start, stop)``.

        ``first_query``: the first query's index among the keys; None (a caller's dense mask,
        whose queries are not known) measures from the block's last key instead, still exact
        relative positions (softmax ignores a constant per row)."""
        keys = self.grid[..., None, :key_end]
        if first_query is None:
            reference = self.grid[..., None, key_end - 1:key_end]
        else:
            reference = self.grid[..., first_query + start:first_query + stop, None]
        return self.scale[None, :, None, None] * (keys - reference)


@dataclass
class _Block:
    """What one block of query rows ``[start, stop)`` may attend to, before the bias is added."""

    start: int
    stop: int
    key_end: int  # the block attends to keys [0, key_end): the later ones are masked for all its rows
    keep: torch.Tensor | None  # bool, broadcastable to (batch, heads, rows, key_end); None: see additive
    additive: torch.Tensor | None = None  # a caller's float mask for the block (then keep is None), or None
    correction: torch.Tensor | None = None  # (batch or 1, heads, rows, key_end) float32: a position method's
    empty_rows: torch.Tensor | None = None  # (batch, 1, rows): rows with no key at all (padding)


def _dense_block(mask: torch.Tensor, start: int, stop: int, keys: int) -> _Block:
    """A block of a caller's 4-D mask, boolean (True: attend) or additive float."""
    rows = mask[:, :, start:stop] if mask.shape[2] != 1 else mask
    if rows.dtype == torch.bool:
        return _Block(start, stop, keys, rows)
    return _Block(start, stop, keys, None, additive=rows)


def _causal_block(mask: RowBlockMask | None, first_query: int, start: int, stop: int, keys: int,
                  device) -> _Block:
    """A block of causality alone (``mask`` None) or of transformers' rows."""
    key_end = keys
    if mask is None or mask.plain_causal:  # keys after the block's last query are masked for every row
        key_end = max(1, min(keys, first_query + stop))
    if mask is None:
        positions = torch.arange(key_end, device=device)
        keep = positions[None, :] <= (first_query + torch.arange(start, stop, device=device))[:, None]
        return _Block(start, stop, key_end, keep)
    full = mask.rows(start, stop)  # (batch, 1, rows, keys)
    return _Block(start, stop, key_end, full[..., :key_end], empty_rows=~full.any(dim=-1))


def _apply_position_method(block: _Block, method: AlibiPositionMethod, key_positions: torch.Tensor,
                           first_query: int) -> None:
    """Hide the keys the method hides and add its bias correction, in a block whose pairs it changes."""
    rows = block.stop - block.start
    query_positions = key_positions[:, first_query + block.start:first_query + block.stop]
    visible, block.correction = method.block(query_positions, key_positions[:, :block.key_end])
    block.keep = block.keep.reshape(-1, 1, rows, block.key_end)
    if visible is not None:
        block.keep = block.keep & visible


def _block_mask(block: _Block, alibi: AlibiBias, first_query: int | None, dtype: torch.dtype) -> torch.Tensor:
    """The block's additive float mask for SDPA: the ALiBi bias of its rows (plus a position
    method's correction), formed in float32 and rounded to ``dtype`` once, where a pair is kept;
    the dtype's lowest elsewhere. Relative to each row's query, the bias is 0 on the diagonal and
    small near it, where attention is, so that one rounding costs little in half precision."""
    bias = alibi.rows(first_query, block.start, block.stop, block.key_end)
    if block.correction is not None:
        bias = bias + block.correction
    bias = bias.to(dtype)
    if block.additive is not None:
        return bias + block.additive.to(dtype)
    return torch.where(block.keep, bias, torch.finfo(dtype).min)


def _seen_columns(block: _Block) -> torch.Tensor | None:
    """The keys some row of a position method's block sees (LM-Infinite leaves out its middle), or
    None when all or none are (none: only padding rows, filled with the mean of all values)."""
    if block.correction is None:
        return None
    seen = block.keep.reshape(-1, block.key_end).any(dim=0)
    if not bool(seen.any()) or bool(seen.all()):
        return None
    return seen.nonzero().squeeze(-1)


def _first_query(mask, keys: int, queries: int) -> int | None:
    """The index among the keys of the first query, or None when a caller's dense mask decides."""
    if mask is None:
        return keys - queries
    return mask.first_query if isinstance(mask, RowBlockMask) else None


def _method_key_positions(mask, first_query: int | None, keys: int, device, method) -> torch.Tensor:
    if first_query is None:
        raise ValueError(
            f"scaling={method.method} on ALiBi builds its mask from the 2-D attention mask and "
            "cannot combine with a dense 4-D mask (a caller's own, or a static cache's). Pass a 2-D "
            "attention_mask and use the default dynamic cache.")
    return mask.key_positions() if isinstance(mask, RowBlockMask) else torch.arange(keys, device=device)[None]


def blocked_alibi_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, alibi: AlibiBias,
                            mask, scale: float, position_method: AlibiPositionMethod | None = None) -> torch.Tensor:
    """``softmax(q k^T * scale + bias + mask) v``, a block of query rows at a time.

    Each block is one SDPA call at the model's head size, with the bias and the block's mask
    as one additive float mask ``(batch or 1, heads, rows, keys)`` (:func:`_block_mask`).

    Args:
        query: ``(batch, heads, queries, head_dim)``; key, value: ``(batch, kv_heads, keys, head_dim)``
            (``kv_heads`` dividing ``heads``). Queries are the last ``queries`` positions unless
            the mask says otherwise.
        alibi: the bias added to the scaled scores, in relative positions (:class:`AlibiBias`).
        mask: a :class:`RowBlockMask`; a 4-D tensor broadcastable to ``(batch, heads, queries,
            keys)``, boolean (True: attend) or additive float; or None (causal).
        position_method: an attention-level method (``lm_infinite``) applied on top: in the
            blocks it changes, its hidden keys join the mask and its bias correction is added;
            the keys no row of the block sees are left out of the block's SDPA call. Needs a
            :class:`RowBlockMask` or None.
    Returns:
        ``(batch, heads, queries, head_dim)``. A query row with no key to attend to (a
        padding position) gets the mean of all values, as eager attention gives it
        (every score equal to the dtype's minimum).
    """
    batch, heads, q_len, head_dim = query.shape
    keys = key.shape[-2]
    key, value = _per_query_head(key, heads), _per_query_head(value, heads)
    all_values_mean = value.mean(dim=-2, keepdim=True) if isinstance(mask, RowBlockMask) else None
    first_query = _first_query(mask, keys, q_len)
    key_positions = (None if position_method is None
                     else _method_key_positions(mask, first_query, keys, query.device, position_method))
    if isinstance(mask, RowBlockMask) and mask.plain_causal and mask.padding is None:
        mask = None  # causality alone, known from first_query: cheaper than transformers' general mask
    out = torch.empty(batch, heads, q_len, head_dim, dtype=value.dtype, device=query.device)
    step = _block_rows(batch, heads, keys)
    for start in range(0, q_len, step):
        stop = min(q_len, start + step)
        block = (_dense_block(mask, start, stop, keys) if isinstance(mask, torch.Tensor)
                 else _causal_block(mask, first_query, start, stop, keys, query.device))
        # the largest distance in the block: positions count real tokens, so never more than indices
        if position_method is not None and position_method.changes(first_query + stop - 1):
            _apply_position_method(block, position_method, key_positions, first_query)
        block_mask = _block_mask(block, alibi, first_query, query.dtype)
        block_key, block_value = key[:, :, :block.key_end], value[:, :, :block.key_end]
        columns = _seen_columns(block)
        if columns is not None:
            block_key, block_value = block_key[:, :, columns], block_value[:, :, columns]
            block_mask = block_mask[..., columns]
        out[:, :, start:stop] = F.scaled_dot_product_attention(
            query[:, :, start:stop], block_key, block_value, attn_mask=block_mask, scale=scale)
        if block.empty_rows is not None and bool(block.empty_rows.any()):
            out[:, :, start:stop] = torch.where(block.empty_rows[..., None], all_values_mean, out[:, :, start:stop])
    return out


# ----------------------------------------------------------------------------- the engine of a call
def validate_attention_choice(choice) -> str:
    """An ALiBi model's engine (:data:`lmeval_ctx.extension.flex.ALIBI_ENGINES`); the old ``blocked``
    is read as ``blocks``."""
    if isinstance(choice, str) and choice.strip().lower() == "blocked":
        return "blocks"
    return validate_engine(choice, alibi=True)


def call_engine(query: torch.Tensor, key: torch.Tensor, mask) -> str:
    """``flex`` or ``blocks`` for this call: the model's choice, where FlexAttention can run and takes
    the call's mask (:func:`lmeval_ctx.extension.alibi.flex_attention.flex_declines`). A call of
    fewer than one tile of queries (a generation step) is one SDPA call of the block path, under
    ``flex`` too: padded to a bucket it would compute a tile for one row."""
    choice = validate_attention_choice(attention_choice())
    if choice == "transformers" or query.shape[-2] < TILE or resolve_engine(choice, query.device) != "flex":
        return "blocks"
    declined = flex_declines(mask, query, key)
    if declined is None:
        return "flex"
    if choice == "flex":
        raise ValueError(f"attention_engine=flex cannot run this call: {declined}. "
                         "Use attention_engine=auto, which runs the block path for it.")
    return "blocks"


def _attend(query, key, value, alibi: AlibiBias, mask, scale, slopes: torch.Tensor):
    """The running call's attention: FlexAttention where it runs, else the blocks.

    ``slopes``: the call's slopes (:func:`lmeval_ctx.extension.alibi.scaling.active_slopes`) in
    the units of the scaled scores (the model's scaling of its bias applied)."""
    position_method = active_position_method(slopes)
    if call_engine(query, key, mask) == "flex":
        keys = key.shape[-2]
        inputs = call_inputs(lambda: flex_inputs(alibi, mask, _counted_positions(mask, keys, query.device),
                                                 position_method, *query.shape[:3], keys), mask, query, key)
        return flex_alibi_attention(query, key, value, inputs, scale)
    return blocked_alibi_attention(query, key, value, alibi, mask, scale, position_method)


def _counted_positions(mask, keys: int, device) -> torch.Tensor:
    """``(batch or 1, keys)``: BLOOM's and Falcon's ALiBi positions, real tokens before each key."""
    if isinstance(mask, RowBlockMask):
        return mask.key_positions()
    return torch.arange(keys, device=device)[None]


def _no_attention_weights(output_attentions: bool) -> None:
    if output_attentions:
        raise ValueError(
            "output_attentions=True needs the full attention weights, which the memory-efficient ALiBi "
            "attention never builds. Load the model with attention_engine=transformers to get them."
        )


# ----------------------------------------------------------------------------- per-architecture forwards
def bloom_attention_forward(self, hidden_states, residual, alibi, attention_mask, layer_past=None, use_cache=False,
                            output_attentions=False, **kwargs):
    """``BloomAttention.forward`` with the blocked core. ``alibi`` (the model's ``slope x position``,
    rounded to its dtype) is not read: the bias is formed from the call's slopes and relative positions."""
    _no_attention_weights(output_attentions)
    batch_size, q_length, _ = hidden_states.shape
    query, key, value = self._reshape(self.query_key_value(hidden_states))
    if layer_past is not None:
        key, value = layer_past.update(key, value, self.layer_idx)
    # BLOOM: alibi.baddbmm(q, k^T, beta=self.beta, alpha=1/sqrt(head_dim)): the bias is not scaled
    slopes = active_slopes(device=query.device)
    if self.beta != 1.0:
        slopes = slopes * self.beta
    bias = AlibiBias.linear(_counted_positions(attention_mask, key.shape[-2], query.device), slopes)
    context = _attend(query, key, value, bias, attention_mask, self.inv_norm_factor, slopes)
    context = context.transpose(1, 2).reshape(batch_size, q_length, self.num_heads * self.head_dim)
    if self.pretraining_tp > 1 and self.slow_but_exact:
        slices = self.hidden_size / self.pretraining_tp
        output = torch.zeros_like(context)
        for i in range(self.pretraining_tp):
            output = output + F.linear(context[:, :, int(i * slices): int((i + 1) * slices)],
                                       self.dense.weight[:, int(i * slices): int((i + 1) * slices)])
    else:
        output = self.dense(context)
    output = F.dropout(output, p=self.hidden_dropout, training=self.training) + residual
    return output, None


def mpt_attention_forward(self, hidden_states, position_bias, cache=None, attention_mask=None, **kwargs):
    """``MptAttention.forward`` with the blocked core. ``position_bias`` (``slope x (j - last key)``)
    is not read: the bias is formed from the call's slopes and relative indices, as MPT's counts them."""
    batch_size, seq_length = hidden_states.shape[:2]
    mixed_qkv = self.Wqkv(hidden_states)
    if self.clip_qkv:
        mixed_qkv = mixed_qkv.clamp(min=-self.clip_qkv, max=self.clip_qkv)
    query, key, value = mixed_qkv.chunk(3, dim=2)
    query = query.reshape(batch_size, seq_length, self.n_heads, self.head_dim).transpose(1, 2)
    key = key.reshape(batch_size, seq_length, self.n_heads, self.head_dim).transpose(1, 2)
    value = value.reshape(batch_size, seq_length, self.n_heads, self.head_dim).transpose(1, 2)
    if cache is not None:
        key, value = cache.update(key, value, self.layer_idx, kwargs=kwargs)
    slopes = active_slopes(device=query.device)
    bias = AlibiBias.linear(torch.arange(key.shape[-2], device=query.device)[None], slopes)
    if isinstance(attention_mask, torch.Tensor):
        attention_mask = ~attention_mask.to(torch.bool)  # MPT's boolean mask is True where masked
    context = _attend(query, key, value, bias, attention_mask, self.softmax_scale, slopes)
    context = context.permute(0, 2, 1, 3).reshape(batch_size, seq_length, -1)
    return self.out_proj(context), None


def falcon_alibi(slopes: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Falcon's ALiBi bias ``(batch, heads, keys)``, as its ``build_alibi_tensor`` forms it: the
    slopes rounded to bfloat16 times each key's position, in bfloat16 (whatever the model's dtype).
    This rounding is the model's definition (the same in float32); the blocked attention takes
    these values as its :class:`AlibiBias` grid and differences them per row in float32.

    ``slopes``: ``(heads,)``; ``positions``: ``(batch or 1, keys)`` integer positions."""
    return slopes[..., None].bfloat16() * positions[:, None, :]


def _falcon_qkv(self, hidden_states):
    """Falcon's fused projection split into queries ``(batch, heads, q, d)``, keys and values
    ``(batch, kv_heads, q, d)``, in its three layouts (as transformers splits it)."""
    batch, length, _ = hidden_states.shape
    fused = self.query_key_value(hidden_states).view(batch, length, -1, self.head_dim)
    if self.new_decoder_architecture:  # per key/value group: its queries, then its key and its value
        grouped = fused.view(batch, length, self.num_kv_heads, -1, self.head_dim)
        query, key, value = grouped[..., :-2, :].flatten(-3, -2), grouped[..., -2, :], grouped[..., -1, :]
    elif self.multi_query:
        query, key, value = fused.split([self.num_heads, 1, 1], dim=-2)
    else:  # query, key and value interleaved per head
        query, key, value = fused.unflatten(-2, (self.num_heads, 3)).unbind(-2)
    return query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)


def falcon_attention_forward(self, hidden_states, attention_mask=None, position_ids=None, layer_past=None,
                             use_cache=False, output_attentions=False, position_embeddings=None, alibi=None,
                             **kwargs):
    """``FalconAttention.forward`` (ALiBi) with the blocked core.

    The bias is formed here, per key, from the running call's slopes and the mask's positions
    (:func:`falcon_alibi`, in float32 whatever the model's dtype, relative to each query's own
    value, scaled by ``1/sqrt(head_dim)`` as Falcon's model scales it): during a
    blocked call the model builds none (``alibi`` is None; see
    :func:`lmeval_ctx.extension.alibi.install.falcon_slope_dispatcher`), so it folds none into a
    dense mask. Before transformers 5.25 the model passed ``alibi`` to the attention; since, the
    bias reaches the attention only through the mask."""
    _no_attention_weights(output_attentions)
    if isinstance(attention_mask, torch.Tensor):
        raise ValueError("Falcon's ALiBi positions come from a 2-D attention mask (as in transformers' Falcon, "
                         "which cannot take a 4-D one either); pass a 2-D attention_mask.")
    batch_size, query_length, _ = hidden_states.shape
    query, key, value = _falcon_qkv(self, hidden_states)
    if layer_past is not None:
        key, value = layer_past.update(key, value, self.layer_idx)
    slopes = active_slopes(bfloat16=True, device=query.device)
    grid = falcon_alibi(slopes, _counted_positions(attention_mask, key.shape[-2], query.device)).float()
    bias = AlibiBias(grid, torch.full_like(slopes, 1 / math.sqrt(self.head_dim)))
    context = _attend(query, key, value, bias, attention_mask, self.inv_norm_factor, slopes * self.inv_norm_factor)
    context = context.transpose(1, 2).reshape(batch_size, query_length, self.num_heads * self.head_dim)
    return self.dense(context), None
