"""transformers' causal mask for a scaled ALiBi model, delivered a block of query rows at a time.

For a scaled model with the blocked attention, the model's ``create_causal_mask`` (replaced
by a dispatcher in :mod:`lmeval_ctx.extension.alibi.install`) is given a view of the config
(:func:`row_block_mask_config`) whose attention implementation is the mask-interface name
registered here, :data:`ROW_BLOCK_MASK`. transformers then returns a :class:`RowBlockMask`,
holding the arguments of its mask interface, instead of a dense ``batch x 1 x queries x keys``
tensor; :meth:`RowBlockMask.rows` builds a block's rows with transformers' own ``sdpa_mask``,
so causal masking, padding, KV-cache offsets and packed sequences are transformers' own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from transformers.masking_utils import (
    ALL_MASK_ATTENTION_FUNCTIONS,
    causal_mask_function,
    prepare_padding_mask,
    sdpa_mask,
)

# The mask-interface name create_causal_mask is given for a scaled model (see row_block_mask_config).
ROW_BLOCK_MASK = "lmeval_ctx_alibi_row_blocks"


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
    # key_positions(), computed by the first layer that asks and shared by the others
    _positions: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)

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
        if self._positions is None:
            if self.padding is None:
                self._positions = torch.arange(self.kv_length, device=self.device)[None]
            else:
                padding = prepare_padding_mask(self.padding, self.kv_length, self.kv_offset).to(self.device)
                counted = padding.to(torch.int64).cumsum(dim=-1) - 1
                self._positions = counted[:, self.kv_offset:self.kv_offset + self.kv_length]
        return self._positions

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
