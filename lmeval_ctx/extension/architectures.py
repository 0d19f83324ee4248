"""What makes a model an ALiBi model: one entry per architecture.

Resolution (:func:`lmeval_ctx.extension.request.position_family`), installation
(:mod:`lmeval_ctx.extension.alibi.install`, :mod:`lmeval_ctx.extension.alibi.attention`) and the record
(the slopes in use) all read this table. It holds plain data and config readers
only, so importing it costs nothing: the functions it names live in
:mod:`lmeval_ctx.extension.alibi.install` (slope dispatchers) and :mod:`lmeval_ctx.extension.alibi.attention`
(attention forwards) and are looked up there by name.

ALiBi: Press et al. 2021, "Train Short, Test Long", arXiv:2108.12409; the slopes
and methods are written out in docs/methods.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from lmeval_ctx.methods.alibi import alibi_slopes, mpt_alibi_slopes


@dataclass(frozen=True)
class AlibiArchitecture:
    """One ALiBi architecture as transformers implements it."""

    model_type: str
    module: str  # the transformers module holding the model's code
    slope_function: str  # the module-level function that computes the slopes, replaced by a dispatcher
    slope_dispatcher: str  # the factory in lmeval_ctx.extension.alibi.install that builds that dispatcher
    base_slopes: Callable  # config -> the architecture's own slopes (list of floats, one per head)
    heads_field: str  # config field with the number of attention heads
    window_field: str | None  # config field with the trained context length; None: the config has none
    attention_class: str  # attention module class (in ``module``) whose forward the blocked attention replaces
    attention_forward: str  # the replacement forward in lmeval_ctx.extension.alibi.attention
    alibi_flag: str | None = None  # config field that must be true for the model to use ALiBi (Falcon)

    def uses_alibi(self, config) -> bool:
        return self.alibi_flag is None or bool(getattr(config, self.alibi_flag, False))

    def num_heads(self, config) -> int:
        return int(getattr(config, self.heads_field))

    def trained_window(self, config) -> int | None:
        return getattr(config, self.window_field, None) if self.window_field else None


def _press_slopes(heads_field: str) -> Callable:
    return lambda config: alibi_slopes(int(getattr(config, heads_field)))


def _mpt_slopes(config) -> list[float]:
    # MPT's slopes depend on attn_config.alibi_bias_max (8 in every released checkpoint)
    return mpt_alibi_slopes(int(config.n_heads), config.attn_config.alibi_bias_max)


ALIBI_ARCHITECTURES: dict[str, AlibiArchitecture] = {
    "bloom": AlibiArchitecture(
        model_type="bloom",
        module="transformers.models.bloom.modeling_bloom",
        slope_function="_get_alibi_slopes",  # used by its masked path and its no-mask fast path
        slope_dispatcher="bloom_slope_dispatcher",
        base_slopes=_press_slopes("n_head"),
        heads_field="n_head",
        window_field=None,  # BLOOM's config records no length (the checkpoints were trained on 2048)
        attention_class="BloomAttention",
        attention_forward="bloom_attention_forward",
    ),
    "mpt": AlibiArchitecture(
        model_type="mpt",
        module="transformers.models.mpt.modeling_mpt",
        slope_function="build_mpt_alibi_tensor",
        slope_dispatcher="mpt_slope_dispatcher",
        base_slopes=_mpt_slopes,
        heads_field="n_heads",
        window_field="max_seq_len",
        attention_class="MptAttention",
        attention_forward="mpt_attention_forward",
    ),
    "falcon": AlibiArchitecture(
        model_type="falcon",
        module="transformers.models.falcon.modeling_falcon",
        slope_function="build_alibi_tensor",
        slope_dispatcher="falcon_slope_dispatcher",
        base_slopes=_press_slopes("num_attention_heads"),
        heads_field="num_attention_heads",
        window_field="max_position_embeddings",
        attention_class="FalconAttention",  # FalconFlashAttention2 subclasses it
        attention_forward="falcon_attention_forward",
        alibi_flag="alibi",  # Falcon uses RoPE unless alibi=True (falcon-rw-1b/7b)
    ),
}


def alibi_architecture(config) -> AlibiArchitecture | None:
    """The table entry for ``config`` (a decoder config), or None when it does not use ALiBi."""
    arch = ALIBI_ARCHITECTURES.get(getattr(config, "model_type", ""))
    return arch if arch is not None and arch.uses_alibi(config) else None
