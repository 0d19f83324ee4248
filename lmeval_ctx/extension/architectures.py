"""What an architecture needs for each kind of method: the one table of architectures.

- ALiBi models (:data:`ALIBI_ARCHITECTURES`, one entry per architecture): resolution
  (:func:`lmeval_ctx.extension.request.position_family`), installation
  (:mod:`lmeval_ctx.extension.alibi.install`, :mod:`lmeval_ctx.extension.alibi.attention`) and
  the record (the slopes in use) all read it. Their attention-level method, ``lm_infinite``,
  runs in the ALiBi attention on every entry.
- RoPE models whose attention the attention-level methods and log-n scaling replace
  (:data:`ATTENTION_ARCHITECTURES`): read by the request's checks and the attention patch
  (:mod:`lmeval_ctx.extension.attention.patch`). RoPE rescalings, written into the config,
  need no entry.

It holds plain data and config readers only, so importing it costs nothing: the functions
the ALiBi entries name live in :mod:`lmeval_ctx.extension.alibi.install` (slope dispatchers)
and :mod:`lmeval_ctx.extension.alibi.attention` (attention forwards) and are looked up there
by name.

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
    attention_class: str  # attention module class (in ``module``) whose forward the blocked attention replaces
    attention_forward: str  # the replacement forward in lmeval_ctx.extension.alibi.attention
    alibi_flag: str | None = None  # config field that must be true for the model to use ALiBi (Falcon)

    def uses_alibi(self, config) -> bool:
        return self.alibi_flag is None or bool(getattr(config, self.alibi_flag, False))


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
        attention_class="BloomAttention",
        attention_forward="bloom_attention_forward",
    ),
    "mpt": AlibiArchitecture(
        model_type="mpt",
        module="transformers.models.mpt.modeling_mpt",
        slope_function="build_mpt_alibi_tensor",
        slope_dispatcher="mpt_slope_dispatcher",
        base_slopes=_mpt_slopes,
        attention_class="MptAttention",
        attention_forward="mpt_attention_forward",
    ),
    "falcon": AlibiArchitecture(
        model_type="falcon",
        module="transformers.models.falcon.modeling_falcon",
        slope_function="build_alibi_tensor",
        slope_dispatcher="falcon_slope_dispatcher",
        base_slopes=_press_slopes("num_attention_heads"),
        attention_class="FalconAttention",  # FalconFlashAttention2 subclasses it (transformers < 5.25)
        attention_forward="falcon_attention_forward",
        alibi_flag="alibi",  # Falcon uses RoPE unless alibi=True (falcon-rw-1b/7b)
    ),
}


def alibi_architecture(config) -> AlibiArchitecture | None:
    """The table entry for ``config`` (a decoder config), or None when it does not use ALiBi."""
    arch = ALIBI_ARCHITECTURES.get(getattr(config, "model_type", ""))
    return arch if arch is not None and arch.uses_alibi(config) else None


# RoPE architectures whose attention goes through transformers' attention-function registry with
# the rotate-half RoPE layout, one rotary embedding for all layers, and position_ids passed to the
# attention function: where lmeval_ctx.extension.attention.patch applies the attention-level
# methods (rerope, leaky_rerope, self_extend, lm_infinite, dual_chunk) and log-n scaling.
ATTENTION_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "gpt_neox", "phi3")


def check_attention_architecture(what: str, model_type: str) -> None:
    """ValueError unless ``model_type`` is one of :data:`ATTENTION_ARCHITECTURES`; ``what`` names the
    request (``scaling=rerope``, ``logn=true``)."""
    if model_type not in ATTENTION_ARCHITECTURES:
        raise ValueError(
            f"{what} changes attention, which is implemented here for {', '.join(ATTENTION_ARCHITECTURES)} "
            f"(transformers' attention-function registry, rotate-half RoPE, one rotary embedding); this model is "
            f"{model_type}. Use a RoPE rescaling (pi, ntk, dynamic_ntk, yarn, llama3, ntk_by_parts) instead.")
