"""ALiBi attention through FlexAttention: the bias as a ``score_mod``, causality, padding and
LM-Infinite's window as a ``mask_mod``, one fused kernel per layer.

FlexAttention (``torch.nn.attention.flex_attention``; Dong et al. 2024, "Flex Attention: A
Programming Model for Generating Optimized Attention Kernels", arXiv:2412.05496) computes
``softmax(q k^T * scale + score_mod) v`` in tiles, skipping the tiles its block mask leaves out,
on CPU (inference only) and on CUDA. It is compiled once per process
(:func:`lmeval_ctx.extension.flex.compiled_flex_attention`) and once per padded length: each call
is padded to a bucket (:func:`lmeval_ctx.extension.flex.padded_length` from 1,024), whose padded tiles the
block mask skips, so lengths of one bucket share one kernel. Not dynamic shapes: in torch 2.13 on
CPU, inductor fails to compile the kernel with dynamic lengths once a ``score_mod`` or
``mask_mod`` reads a captured tensor at the batch index (a C++ error, ``cur_kvSplitSize`` not
declared); and not one shape per length: every length would compile (20-40 s on CPU), and past
dynamo's recompile limit (8 per function) dynamo runs FlexAttention unfused, with
``queries x keys`` scores per head. A call whose kernel would pass that limit runs the blocks.

The bias is the blocked path's (:class:`lmeval_ctx.extension.alibi.attention.AlibiBias`):
``scale_h * (grid_h[j] - grid_h[i])``, formed inside the kernel in float32 from the grid's
values (integer positions for BLOOM and MPT, Falcon's bfloat16-rounded ``slope x position``),
for each pair, never from ``slope x absolute position`` rounded to the model's dtype (ALiBi:
Press et al. 2021, arXiv:2108.12409). LM-Infinite (Han et al. 2023, arXiv:2308.16137) adds
``m_h * max(d - L, 0)`` (the ceiling ``rel = min(d, L)``) and hides key ``j`` from query ``i``
unless ``d < n_local`` or ``p_j < n_global`` (``d = p_i - p_j``, positions counted over the
attention mask). Without LM-Infinite the same kernel runs with a ceiling and a window no
distance reaches, so one compiled kernel serves every method.

The block mask (which 128 x 128 tiles have any visible pair, and which have only visible
pairs) is built from per-tile bounds of the indices and positions, in memory linear in the
length, on the device, without a host synchronisation; nothing of size ``queries x keys`` is
built.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.masking_utils import prepare_padding_mask

from lmeval_ctx.extension.alibi.masks import RowBlockMask
from lmeval_ctx.extension.alibi.scaling import running_call
from lmeval_ctx.extension.flex import RECOMPILE_LIMIT, TILE, compiled_flex_attention, padded_length

NO_LIMIT = float(2**30)  # a window and a ceiling no distance reaches (float32-exact)
MIN_BUCKET = 1024  # the shortest padded length: shorter calls share one kernel


# The kernels compiled in this process, by (device, dtype, batch, heads, kv_heads, head size, bucket).
_KERNELS: set[tuple] = set()


def _kernel(query: torch.Tensor, key: torch.Tensor) -> tuple:
    return (query.device.type, query.dtype, *query.shape[:2], key.shape[1], query.shape[-1],
            padded_length(key.shape[-2], MIN_BUCKET))


def flex_declines(mask, query: torch.Tensor, key: torch.Tensor) -> str | None:
    """Why this call runs the block path although FlexAttention runs on its device, or None.

    One shape more than dynamo's recompile limit would not compile: dynamo would run FlexAttention
    unfused (``queries x keys`` scores per head), so the blocks run instead."""
    # the compiled function raises dynamo's limit to RECOMPILE_LIMIT while it runs (lmeval_ctx.extension.flex)
    if _kernel(query, key) not in _KERNELS and len(_KERNELS) >= RECOMPILE_LIMIT:
        return (f"{len(_KERNELS)} FlexAttention kernels compiled already, the recompile limit "
                "(lmeval_ctx.extension.flex.RECOMPILE_LIMIT)")
    if isinstance(mask, torch.Tensor):
        return "a caller's dense 4-D mask (the block path uses it as given)"
    if isinstance(mask, RowBlockMask) and not mask.plain_causal:
        return "a mask function other than causality and padding (the block path asks transformers for it)"
    if query.requires_grad and query.device.type == "cpu":
        return "gradients on CPU (FlexAttention on CPU runs for inference only)"
    return None


@dataclass
class FlexAlibi:
    """Everything the kernel's ``score_mod`` and ``mask_mod`` read, as tensors on the device.

    ``key_grid`` ``(batch, heads, keys)`` and ``query_grid`` ``(batch, heads, queries)`` float32
    (both padded to the bucket's length, as are the positions and the padding): the bias grid
    (:class:`AlibiBias`) at the keys and at the queries; ``scale`` ``(heads,)``;
    ``key_positions`` / ``query_positions`` float32 counted positions (LM-Infinite's distances);
    ``padding`` ``(batch, keys)`` bool (True: a real token); ``offset``: the first query's index
    among the keys (0-d); ``ceiling_slopes`` ``(heads,)``, ``ceiling``, ``window``, ``global_tokens``
    (0-d float32): LM-Infinite's, or zeros and :data:`NO_LIMIT`.
    """

    key_grid: torch.Tensor
    query_grid: torch.Tensor
    scale: torch.Tensor
    key_positions: torch.Tensor
    query_positions: torch.Tensor
    padding: torch.Tensor
    offset: torch.Tensor
    ceiling_slopes: torch.Tensor
    ceiling: torch.Tensor
    window: torch.Tensor
    global_tokens: torch.Tensor
    queries: int  # the real queries (the rest of the bucket is padding)
    empty_rows: torch.Tensor | None  # (batch, queries) bool: rows with no real key at or before them
    block_mask: object = None  # FlexAttention's BlockMask, built once (flex_inputs)

    def score_mod(self):
        key_grid, query_grid, scale = self.key_grid, self.query_grid, self.scale
        key_positions, query_positions = self.key_positions, self.query_positions
        ceiling_slopes, ceiling = self.ceiling_slopes, self.ceiling

        def alibi(score, b, h, q_idx, kv_idx):
            bias = scale[h] * (key_grid[b, h, kv_idx] - query_grid[b, h, q_idx])
            past = (query_positions[b, q_idx] - key_positions[b, kv_idx] - ceiling).clamp(min=0)
            return score + bias + ceiling_slopes[h] * past

        return alibi

    def mask_mod(self):
        key_positions, query_positions = self.key_positions, self.query_positions
        padding, offset = self.padding, self.offset
        window, global_tokens = self.window, self.global_tokens

        def visible(b, h, q_idx, kv_idx):
            distance = query_positions[b, q_idx] - key_positions[b, kv_idx]
            shown = (distance < window) | (key_positions[b, kv_idx] < global_tokens)
            return (kv_idx <= q_idx + offset) & padding[b, kv_idx] & shown

        return visible


def _tile_bounds(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(min, max)`` of ``values`` ``(batch, length)`` per tile of :data:`TILE` (``length`` a multiple)."""
    blocks = values.unflatten(-1, (-1, TILE))
    return blocks.amin(-1), blocks.amax(-1)


def _ordered(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``(batch, 1, q_tiles, kv_tiles)`` bool tile map as FlexAttention's counts and indices."""
    counts = dense.sum(-1, dtype=torch.int32)
    indices = torch.argsort(dense.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
    return counts, indices


def _block_mask(inputs: FlexAlibi, length: int):
    """The tiles with any visible pair (partial) and those whose pairs are all visible (full)."""
    from torch.nn.attention.flex_attention import BlockMask

    device = inputs.padding.device
    tiles = torch.arange(0, length, TILE, device=device)
    first = tiles + inputs.offset  # each query tile's first query, as an index among the keys
    causal_any = (tiles[None, :] <= (first + TILE - 1)[:, None]) & (tiles < inputs.queries)[:, None]
    causal_all = (tiles + TILE - 1)[None, :] <= first[:, None]
    pad_min, pad_max = _tile_bounds(inputs.padding.float())  # any real key: max 1; all real: min 1
    q_min, q_max = _tile_bounds(inputs.query_positions)
    k_min, k_max = _tile_bounds(inputs.key_positions)
    shown_any = ((q_min[:, :, None] - k_max[:, None, :]) < inputs.window) | (k_min[:, None, :] < inputs.global_tokens)
    shown_all = ((q_max[:, :, None] - k_min[:, None, :]) < inputs.window) | (k_max[:, None, :] < inputs.global_tokens)
    partial = causal_any[None] & (pad_max[:, None, :] > 0) & shown_any
    full = causal_all[None] & (pad_min[:, None, :] > 0) & shown_all
    counts, indices = _ordered((partial & ~full)[:, None])
    full_counts, full_indices = _ordered(full[:, None])
    return BlockMask.from_kv_blocks(counts, indices, full_counts, full_indices, BLOCK_SIZE=TILE,
                                    mask_mod=inputs.mask_mod(), seq_lengths=(length, length))


def _padded(tensor: torch.Tensor, length: int, value=0) -> torch.Tensor:
    """``tensor`` padded with ``value`` along its last dim to ``length``, contiguous."""
    return torch.nn.functional.pad(tensor, (0, length - tensor.shape[-1]), value=value).contiguous()


def _key_padding(mask, batch: int, keys: int, device) -> torch.Tensor:
    """``(batch, keys)`` bool: True for a real token (all True without padding)."""
    if isinstance(mask, RowBlockMask) and mask.padding is not None:
        padding = prepare_padding_mask(mask.padding, mask.kv_length, mask.kv_offset).to(device)
        return padding[:, mask.kv_offset:mask.kv_offset + keys].expand(batch, keys)
    return torch.ones(batch, keys, dtype=torch.bool, device=device)


def _limits(position_method, heads: int, device) -> dict:
    """LM-Infinite's slopes, ceiling, window and global tokens as tensors, or ones no pair reaches."""
    scalar = lambda value: torch.tensor(float(value), dtype=torch.float32, device=device)  # noqa: E731
    if position_method is None:
        return dict(ceiling_slopes=torch.zeros(heads, dtype=torch.float32, device=device), ceiling=scalar(NO_LIMIT),
                    window=scalar(NO_LIMIT), global_tokens=scalar(0))
    options = position_method.options
    return dict(ceiling_slopes=position_method.slopes.to(device=device, dtype=torch.float32, copy=True),
                ceiling=scalar(position_method.original_length), window=scalar(options["local_window"]),
                global_tokens=scalar(options["global_tokens"]))


def flex_inputs(alibi, mask, key_positions: torch.Tensor, position_method, batch: int, heads: int,
                queries: int, keys: int) -> FlexAlibi:
    """The kernel's tensors for one call (see :class:`FlexAlibi`), padded to its bucket (``padded_length``).

    ``key_positions`` ``(batch or 1, keys)``: the counted positions (LM-Infinite's distances);
    ``alibi``: the call's :class:`lmeval_ctx.extension.alibi.attention.AlibiBias`."""
    device, length = alibi.scale.device, padded_length(keys, MIN_BUCKET)
    offset = keys - queries if mask is None else mask.first_query
    grid = alibi.grid.to(torch.float32).expand(batch, heads, keys)
    positions = key_positions.to(torch.float32).expand(batch, keys)
    padding = _key_padding(mask, batch, keys, device)
    has_padding = isinstance(mask, RowBlockMask) and mask.padding is not None
    empty_rows = (padding.cumsum(-1)[:, offset:offset + queries] == 0) if has_padding else None
    inputs = FlexAlibi(
        key_grid=_padded(grid, length), query_grid=_padded(grid[..., offset:offset + queries], length),
        scale=alibi.scale.to(torch.float32, copy=True), key_positions=_padded(positions, length),
        query_positions=_padded(positions[:, offset:offset + queries], length),
        padding=_padded(padding, length, False), offset=torch.tensor(offset, device=device),
        queries=queries, empty_rows=empty_rows, **_limits(position_method, heads, device))
    inputs.block_mask = _block_mask(inputs, length)
    return inputs


def call_inputs(build, mask, query: torch.Tensor, key: torch.Tensor) -> FlexAlibi:
    """The running call's kernel inputs (``build()``: :func:`flex_inputs`), built by its first layer
    and shared by the others, so the block mask and the tensors reach the device once per call."""
    call = running_call()
    if call is None:
        return build()
    slot = ("flex", id(mask), query.device, tuple(query.shape), key.shape[-2])
    if slot not in call.on_device:
        call.on_device[slot] = build()
    return call.on_device[slot]


def flex_alibi_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, inputs: FlexAlibi,
                         scale: float) -> torch.Tensor:
    """``softmax(q k^T * scale + bias + mask) v`` in one FlexAttention call.

    ``query`` ``(batch, heads, queries, d)``; ``key``, ``value`` ``(batch, kv_heads, keys, d)``
    (``kv_heads`` dividing ``heads``: FlexAttention's grouped-query mode). All three are padded to
    the bucket's length (the padded tiles are skipped). A query row with no key to attend to (left
    padding) gets the mean of all values, as eager attention and the block path give it."""
    batch, heads, queries, _ = query.shape
    length = inputs.padding.shape[-1]
    # contiguous whether padded or not: a new stride would compile the kernel again
    padded = [torch.nn.functional.pad(x, (0, 0, 0, length - x.shape[-2])).contiguous() for x in (query, key, value)]
    _KERNELS.add(_kernel(query, key))
    out = compiled_flex_attention(static=True)(*padded, score_mod=inputs.score_mod(),
                                    block_mask=inputs.block_mask, scale=scale,
                                    enable_gqa=key.shape[1] != heads)[:, :, :queries]
    if inputs.empty_rows is None:
        return out
    means = value.mean(dim=-2, keepdim=True).repeat_interleave(heads // value.shape[1], dim=1)
    return torch.where(inputs.empty_rows[:, None, :, None], means.to(out.dtype), out)
