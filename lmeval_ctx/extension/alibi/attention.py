"""Exact ALiBi attention in memory linear in the length, for BLOOM, MPT and Falcon-ALiBi.

transformers runs these models' ALiBi attention on whole ``heads x queries x keys``
score tensors (BLOOM, MPT: eager attention; Falcon: a dense float mask with the bias
folded in, for SDPA). Here a block of query rows is attended at a time with
``torch.nn.functional.scaled_dot_product_attention``; the block's additive mask
(``batch x heads x rows x keys``) is built from the model's own per-key ALiBi bias
(BLOOM's and Falcon's ``alibi`` tensor, MPT's ``position_bias``, all ``heads x keys``,
computed from the slopes :mod:`lmeval_ctx.extension.alibi.install` puts in place) and the causal
and padding mask of those rows. Nothing of size ``queries x keys`` is ever built.

ALiBi's bias ``-m_h (i - j)`` equals ``m_h j`` up to a constant per query row, which
softmax ignores, so a bias per key is exact (Press et al. 2021, "Train Short, Test
Long", arXiv:2108.12409; docs/methods.md; docs/alibi_attention.md).

Each architecture's replacement forward keeps everything of the original except
the score/softmax/value part: BLOOM adds its bias unscaled (``baddbmm`` with
``beta=1``, ``alpha=1/sqrt(head_dim)``); MPT clips ``qkv`` (``clip_qkv``), scales by
``softmax_scale`` and adds ``position_bias`` unscaled; Falcon scales its bias
(bfloat16-rounded slopes times positions) by ``1/sqrt(head_dim)`` like its SDPA path.

The model's mask comes from transformers' ``create_causal_mask``, which for the
scaled model is asked (through the mask-interface name registered here) for a
:class:`RowBlockMask` instead of a dense ``batch x 1 x queries x keys`` tensor; it
builds each block's rows with transformers' own ``sdpa_mask``, so causal masking,
padding, KV-cache offsets and packed sequences are transformers' own.

On CUDA with the optional ``flash-attn`` package, a half-precision model, and a
plain causal mask without padding, flash-attn's ``alibi_slopes`` kernel is used
instead (not run in this project's CI: no GPU there).

LM-Infinite (``scaling=lm_infinite``; Han et al. 2023, arXiv:2308.16137) runs here too, as an
:class:`AlibiPositionMethod`: the relative position of
:func:`lmeval_ctx.methods.attention.lm_infinite`, ``rel = min(i - j, L)``, makes the bias
``-m_h * rel``, i.e. the model's own per-key bias plus ``m_h * (i - j - rel)`` on the pairs
past the ceiling, and its Λ-shaped mask hides the keys between the first ``global_tokens``
and the last ``local_window``. Both are built per query block only for the blocks they change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from transformers.masking_utils import (
    ALL_MASK_ATTENTION_FUNCTIONS,
    causal_mask_function,
    prepare_padding_mask,
    sdpa_mask,
)

from lmeval_ctx.methods.attention import ATTENTION_METHOD_REGISTRY, assign_positions, relative_positions

# alibi_attention= values: auto (flash-attn where it applies, else blocks), blocked, transformers.
ATTENTION_CHOICES = ("auto", "blocked", "transformers")

# Bytes one query block's mask may take (its scores inside SDPA are of the same size).
BLOCK_BYTES = 128 * 2**20
MAX_BLOCK_ROWS = 512
MIN_BLOCK_ROWS = 16

# The mask-interface name create_causal_mask is given for a scaled model (see row_block_mask_config).
ROW_BLOCK_MASK = "lmeval_ctx_alibi_row_blocks"


def validate_attention_choice(choice) -> str:
    value = "auto" if choice is None else str(choice).strip().lower()
    if value not in ATTENTION_CHOICES:
        raise ValueError(
            f"alibi_attention={choice!r} is not one of {', '.join(ATTENTION_CHOICES)}: auto (default: "
            "memory-efficient blocks, flash-attn on CUDA when installed), blocked (blocks always), "
            "transformers (transformers' own attention, which holds heads x length x length tensors)."
        )
    return value


# ----------------------------------------------------------------------------- masks
@dataclass
class RowBlockMask:
    """The ``(batch, 1, queries, keys)`` boolean mask transformers would build, row blocks on demand.

    Holds the arguments transformers' mask interface receives; :meth:`rows` calls
    transformers' ``sdpa_mask`` for a block of query rows (True: attend).
    """

    batch_size: int
    q_length: int
    kv_length: int
    q_offset: int | torch.Tensor
    kv_offset: int
    mask_function: Callable
    padding: torch.Tensor | None  # (batch, keys) bool, True for real tokens
    use_vmap: bool
    device: torch.device | str

    # Not a materialized tensor. Falcon's model forward folds ALiBi into a mask only
    # when ``mask.ndim == 4``; with None it leaves the bias to the attention.
    ndim = None

    def to(self, *args, **kwargs) -> "RowBlockMask":
        """MPT's model casts its mask with ``.to(torch.bool)``; the rows are boolean already."""
        return self

    @property
    def plain_causal(self) -> bool:
        """Only causality and padding: keys after a block's last query are masked for the whole block."""
        return self.mask_function is causal_mask_function

    @property
    def first_query(self) -> int:
        """Index among the keys of the first query (``q_offset`` is a tensor for static caches)."""
        return int(self.q_offset) - self.kv_offset

    def key_positions(self) -> torch.Tensor:
        """``(batch or 1, keys)``: each key's position, counting the real tokens before it (as BLOOM
        and Falcon count their ALiBi positions), so left padding does not move a token."""
        if self.padding is None:
            return torch.arange(self.kv_length, device=self.device)[None]
        padding = prepare_padding_mask(self.padding, self.kv_length, self.kv_offset).to(self.device)
        counted = padding.to(torch.int64).cumsum(dim=-1) - 1
        return counted[:, self.kv_offset:self.kv_offset + self.kv_length]

    def rows(self, start: int, stop: int) -> torch.Tensor:
        return sdpa_mask(
            batch_size=self.batch_size, q_length=stop - start, kv_length=self.kv_length,
            q_offset=self.q_offset + start, kv_offset=self.kv_offset, mask_function=self.mask_function,
            attention_mask=self.padding, allow_is_causal_skip=False, use_vmap=self.use_vmap, device=self.device,
        )


def _row_block_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=causal_mask_function,
                    attention_mask=None, use_vmap=False, device="cpu", **kwargs) -> RowBlockMask:
    return RowBlockMask(batch_size, q_length, kv_length, q_offset, kv_offset, mask_function, attention_mask,
                        use_vmap, device)


# Registered under a name no transformers model uses: only a config presented through
# row_block_mask_config (the scaled model's, during its forward) selects it.
ALL_MASK_ATTENTION_FUNCTIONS.register(ROW_BLOCK_MASK, _row_block_mask)


class _RowBlockMaskConfig:
    """A view of a model config that asks ``create_causal_mask`` for a :class:`RowBlockMask`."""

    _attn_implementation = ROW_BLOCK_MASK

    def __init__(self, config):
        self._config = config

    def __getattr__(self, name):
        return getattr(self._config, name)


def row_block_mask_config(config) -> _RowBlockMaskConfig:
    return _RowBlockMaskConfig(config)


# ----------------------------------------------------------------------------- attention-level methods
@dataclass(frozen=True)
class AlibiPositionMethod:
    """An attention-level method in its ALiBi form (``lm_infinite``): the bias ``-m_h * rel(i, j)``
    with the method's relative position ``rel`` (:mod:`lmeval_ctx.methods.attention`) and the
    keys it hides."""

    method: str  # a key of ATTENTION_METHOD_REGISTRY
    options: dict  # its resolved options (resolve_attention_options)
    original_length: int  # L, the trained length
    slopes: torch.Tensor  # (heads,) float32: the slopes in the units of the key bias (model's scale applied)

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
        excess = ((queries - keys).to(torch.float64) - relative_positions(assignment, queries, keys)).to(torch.float32)
        correction = self.slopes.to(excess.device)[None, :, None, None] * excess[:, None]
        visible = None if assignment.visible is None else assignment.visible[:, None]
        return visible, correction


# ----------------------------------------------------------------------------- the attention core
def _block_rows(batch: int, heads: int, keys: int, itemsize: int) -> int:
    rows = BLOCK_BYTES // max(1, batch * heads * keys * itemsize)
    return int(min(MAX_BLOCK_ROWS, max(MIN_BLOCK_ROWS, rows)))


def blocked_alibi_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            key_bias: torch.Tensor | None, mask, scale: float,
                            position_method: AlibiPositionMethod | None = None) -> torch.Tensor:
    """``softmax(q k^T * scale + bias + mask) v``, a block of query rows at a time.

    The per-head bias rides in the dot product: ``q' = [q, 1]``, ``k' = [k, bias / scale]``
    (``v`` gets a zero column, so the three share one head size, which SDPA's fused kernels
    need), so the mask a block needs is one ``batch x 1 x rows x keys`` tensor for all
    heads. Per block the bias is shifted to 0 at the block's last key (softmax ignores a
    constant per row), so the folded values stay small where attention is, in half
    precision too.

    Args:
        query: ``(batch, heads, queries, head_dim)``; key, value: ``(batch, kv_heads, keys, head_dim)``
            (``kv_heads`` 1 or ``heads``). Queries are the last ``queries`` positions unless
            the mask says otherwise.
        key_bias: ``(batch or 1, heads, 1, keys)``, added to every query's scores; None when
            the mask already holds the bias.
        mask: a :class:`RowBlockMask`; a 4-D tensor broadcastable to ``(batch, heads, queries,
            keys)``, boolean (True: attend) or additive float; or None (causal).
        position_method: an attention-level method (``lm_infinite``) applied on top: in the
            blocks it changes, its hidden keys join the mask and its bias correction makes the
            mask per head (``batch x heads x rows x keys``); the keys no row of the block sees
            are left out of the block's SDPA call. Needs a :class:`RowBlockMask` or None.
    Returns:
        ``(batch, heads, queries, head_dim)``. A query row with no key to attend to (a
        padding position) gets the mean of all values, as eager attention gives it
        (every score equal to the dtype's minimum).
    """
    batch, heads, q_len, head_dim = query.shape
    keys = key.shape[-2]
    if key.shape[1] != heads:  # multi-query (Falcon multi_query=True): one key/value head
        key = key.expand(-1, heads, -1, -1)
        value = value.expand(-1, heads, -1, -1)
    dtype, device = query.dtype, query.device
    lowest = torch.finfo(dtype).min
    all_values_mean = value.mean(dim=-2, keepdim=True) if isinstance(mask, RowBlockMask) else None
    if key_bias is not None:
        key_bias = key_bias.to(torch.float32).expand(batch, heads, 1, keys)
        query = torch.cat([query, query.new_ones(batch, heads, q_len, 1)], dim=-1)
        value = torch.cat([value, value.new_zeros(batch, heads, keys, 1)], dim=-1)
    out = torch.empty(batch, heads, q_len, head_dim, dtype=value.dtype, device=device)
    step = _block_rows(batch, heads, keys, query.element_size())
    first_query = keys - q_len if mask is None else (mask.first_query if isinstance(mask, RowBlockMask) else None)
    key_positions = None
    if position_method is not None:
        if first_query is None:
            raise ValueError(
                f"scaling={position_method.method} on ALiBi builds its mask from the 2-D attention mask and "
                "cannot combine with a dense 4-D mask (a caller's own, or a static cache's). Pass a 2-D "
                "attention_mask and use the default dynamic cache.")
        key_positions = (mask.key_positions() if isinstance(mask, RowBlockMask)
                         else torch.arange(keys, device=device)[None])
    if isinstance(mask, RowBlockMask) and mask.plain_causal and mask.padding is None:
        mask = None  # causality alone, known from first_query: cheaper than transformers' general mask
    for start in range(0, q_len, step):
        stop = min(q_len, start + step)
        empty_rows = None
        key_end = keys
        per_head = False  # a position method's block: its mask differs per head
        if isinstance(mask, torch.Tensor):
            rows = mask[:, :, start:stop] if mask.shape[2] != 1 else mask
            block_mask = (torch.zeros((), dtype=dtype, device=device).masked_fill(~rows, lowest)
                          if rows.dtype == torch.bool else rows.to(dtype))
        else:
            if first_query is not None and (mask is None or mask.plain_causal):
                # keys after the block's last query are masked for every row of the block
                key_end = max(1, min(keys, first_query + stop))
            if mask is None:
                positions = torch.arange(key_end, device=device)
                keep = positions[None, :] <= (first_query + torch.arange(start, stop, device=device))[:, None]
            else:
                full = mask.rows(start, stop)  # (batch, 1, rows, keys)
                empty_rows = ~full.any(dim=-1)
                keep = full[..., :key_end]
            # the largest distance in the block: positions count real tokens, so never more than indices
            if position_method is not None and position_method.changes(first_query + stop - 1):
                keep = keep.reshape(-1, 1, stop - start, key_end)
                query_positions = key_positions[:, first_query + start:first_query + stop]
                visible, correction = position_method.block(query_positions, key_positions[:, :key_end])
                if visible is not None:
                    keep = keep & visible
                block_mask = correction.to(dtype).masked_fill(~keep, lowest)  # (batch or 1, heads, rows, keys)
                per_head = True
            else:
                block_mask = torch.zeros(keep.shape, dtype=dtype, device=device).masked_fill_(~keep, lowest)
        block_key, block_value = key[:, :, :key_end], value[:, :, :key_end]
        if key_bias is not None:
            bias = key_bias[..., :key_end] - key_bias[..., key_end - 1:key_end]
            block_key = torch.cat([block_key, (bias / scale).transpose(-1, -2).to(dtype)], dim=-1)
        if per_head:  # leave out the keys no row of the block sees (LM-Infinite's middle)
            seen = keep.reshape(-1, key_end).any(dim=0)
            if bool(seen.any()) and not bool(seen.all()):  # (none seen: only padding rows, filled below)
                columns = seen.nonzero().squeeze(-1)
                block_key, block_value = block_key[:, :, columns], block_value[:, :, columns]
                block_mask = block_mask[..., columns]
        attended = F.scaled_dot_product_attention(
            query[:, :, start:stop], block_key, block_value, attn_mask=block_mask, scale=scale,
        )
        out[:, :, start:stop] = attended[..., :head_dim]
        if empty_rows is not None and bool(empty_rows.any()):
            out[:, :, start:stop] = torch.where(empty_rows[..., None], all_values_mean, out[:, :, start:stop])
    return out


# ----------------------------------------------------------------------------- flash-attn (CUDA, optional)
def _flash_attn_func():
    try:
        from flash_attn import flash_attn_func
    except ImportError:
        return None
    return flash_attn_func


def _flash_applies(choice: str, query: torch.Tensor, key: torch.Tensor, mask) -> bool:
    """flash-attn's ALiBi kernel reproduces the model only without padding and with plain causality."""
    if choice != "auto" or not query.is_cuda or query.dtype not in (torch.float16, torch.bfloat16):
        return False
    if query.shape[-1] > 256 or not isinstance(mask, RowBlockMask) or not mask.plain_causal:
        return False
    if mask.first_query != key.shape[-2] - query.shape[-2]:  # queries not at the end of the keys (static cache)
        return False
    if mask.padding is not None and not bool(mask.padding.all()):
        return False
    return _flash_attn_func() is not None


def flash_alibi_attention(query, key, value, slopes: torch.Tensor, scale: float) -> torch.Tensor:
    """flash-attn with ``alibi_slopes``: it adds ``-slope * (i - j)`` to the scaled scores (causal, bottom-right)."""
    out = _flash_attn_func()(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
        softmax_scale=scale, causal=True, alibi_slopes=slopes.to(device=query.device, dtype=torch.float32),
    )
    return out.transpose(1, 2)


def _attend(query, key, value, key_bias, mask, scale, slopes: Callable[[], torch.Tensor]):
    """``slopes()``: the slopes in the units of ``key_bias`` (the model's scaling of its bias applied)."""
    from lmeval_ctx.extension.alibi.install import active_position_method, attention_choice  # this call's setting

    position_method = active_position_method(slopes)
    if position_method is None and _flash_applies(attention_choice(), query, key, mask):
        return flash_alibi_attention(query, key, value, slopes(), scale)
    return blocked_alibi_attention(query, key, value, key_bias, mask, scale, position_method)


def _no_attention_weights(output_attentions: bool) -> None:
    if output_attentions:
        raise ValueError(
            "output_attentions=True needs the full attention weights, which the memory-efficient ALiBi "
            "attention never builds. Load the model with alibi_attention=transformers to get them."
        )


# ----------------------------------------------------------------------------- per-architecture forwards
def bloom_attention_forward(self, hidden_states, residual, alibi, attention_mask, layer_past=None, use_cache=False,
                            output_attentions=False, **kwargs):
    """``BloomAttention.forward`` with the blocked core; ``alibi`` is ``(batch*heads, 1, keys)``."""
    from lmeval_ctx.extension.alibi.install import active_slopes

    _no_attention_weights(output_attentions)
    batch_size, q_length, _ = hidden_states.shape
    query, key, value = self._reshape(self.query_key_value(hidden_states))
    if layer_past is not None:
        key, value = layer_past.update(key, value, self.layer_idx)
    # BLOOM: alibi.baddbmm(q, k^T, beta=self.beta, alpha=1/sqrt(head_dim)): the bias is not scaled
    key_bias = alibi.view(batch_size, self.num_heads, 1, -1)
    if self.beta != 1.0:
        key_bias = key_bias * self.beta
    context = _attend(query, key, value, key_bias, attention_mask, self.inv_norm_factor,
                      lambda: active_slopes() * self.beta)
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
    """``MptAttention.forward`` with the blocked core; ``position_bias`` is ``(heads, 1, positions)``."""
    from lmeval_ctx.extension.alibi.install import active_slopes

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
    key_length = key.shape[-2]
    if position_bias.shape[-1] < key_length:
        raise ValueError(
            f"MPT's ALiBi bias covers {position_bias.shape[-1]} positions (config.max_seq_len) but the attention "
            f"sees {key_length} keys; raise max_seq_len (ctx-hf does so from max_length)."
        )
    # as MPT slices it: the last key_length positions (distance 0 at the last key)
    key_bias = position_bias[:, :, position_bias.shape[-1] - key_length:][None]
    if isinstance(attention_mask, torch.Tensor):
        attention_mask = ~attention_mask.to(torch.bool)  # MPT's boolean mask is True where masked
    context = _attend(query, key, value, key_bias, attention_mask, self.softmax_scale, active_slopes)
    context = context.permute(0, 2, 1, 3).reshape(batch_size, seq_length, -1)
    return self.out_proj(context), None


def falcon_attention_forward(self, hidden_states, alibi, attention_mask, position_ids=None, layer_past=None,
                             use_cache=False, output_attentions=False, position_embeddings=None, **kwargs):
    """``FalconAttention.forward`` (ALiBi branch) with the blocked core; ``alibi`` is ``(batch*heads, 1, keys)``."""
    from lmeval_ctx.extension.alibi.install import active_slopes

    if alibi is None:
        raise ValueError("The ALiBi attention was installed on a Falcon model that uses RoPE (config.alibi=False).")
    _no_attention_weights(output_attentions)
    num_kv_heads = self.num_heads if self.new_decoder_architecture else self.num_kv_heads
    query, key, value = self._split_heads(self.query_key_value(hidden_states))
    batch_size, query_length, _, _ = query.shape
    query = query.transpose(1, 2).reshape(batch_size, self.num_heads, query_length, self.head_dim)
    key = key.transpose(1, 2).reshape(batch_size, num_kv_heads, query_length, self.head_dim)
    value = value.transpose(1, 2).reshape(batch_size, num_kv_heads, query_length, self.head_dim)
    if layer_past is not None:
        key, value = layer_past.update(key, value, self.layer_idx)
    if isinstance(attention_mask, torch.Tensor):
        key_bias = None  # a dense 4-D mask: FalconModel has folded alibi / sqrt(head_dim) into it
    else:
        # as FalconModel folds it for SDPA: alibi / sqrt(head_dim), added to the scaled scores
        key_bias = alibi.view(batch_size, self.num_heads, 1, -1) / math.sqrt(self.head_dim)
    context = _attend(query, key, value, key_bias, attention_mask, self.inv_norm_factor,
                      lambda: active_slopes(bfloat16=True) * self.inv_norm_factor)
    context = context.transpose(1, 2).reshape(batch_size, query_length, self.num_heads * self.head_dim)
    return self.dense(context), None
