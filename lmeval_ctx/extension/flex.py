"""Which attention engine runs the attention-level methods and ALiBi: FlexAttention or blocks.

FlexAttention (``torch.nn.attention.flex_attention``; Dong et al. 2024, "Flex Attention: A
Programming Model for Generating Optimized Attention Kernels", arXiv:2412.05496) compiles a
``score_mod`` (ALiBi's bias) and a ``mask_mod`` (causality, windows, which rotation a pair
uses) into one fused kernel that skips fully masked tiles, on CPU (inference only) and GPU.
Where it cannot run (no ``torch.compile`` backend, an older torch, gradients on CPU), the
methods' own block paths do the same computation.

One model arg chooses, for both kinds of model: ``attention_engine`` =

- ``auto`` (default): FlexAttention where it runs and is measured at least as fast as the block
  path, else the block path (for the RoPE methods on CPU, :data:`ROPE_AUTO_FLEX_ON_CPU`);
- ``flex``: FlexAttention, or a clear error saying why it cannot run here;
- ``blocks``: the block path;
- ``transformers`` (ALiBi models only): the model's own attention with scaled slopes.

The old ``alibi_attention`` (auto, blocked, transformers) is read as ``attention_engine`` with a
deprecation warning (:func:`engine_argument`).
"""

from __future__ import annotations

import functools
import importlib.util
import shutil

import torch

from lmeval_ctx.common.logs import plugin_logger

ENGINES = ("auto", "flex", "blocks")
ALIBI_ENGINES = (*ENGINES, "transformers")
# Whether auto runs the RoPE attention-level methods through FlexAttention on CPU: no.
# benchmarks/attention_engines.py measures it slower there than the CPU block path at every length
# (4k-16k; docs/attention_methods.md, "Engines"): its side-by-side layout scores each pair at twice
# the head width, where the block path scores it once with torch's fused CPU kernel. On CUDA auto
# takes FlexAttention (fused, no host synchronisation per block). ALiBi's choice: its own module.
ROPE_AUTO_FLEX_ON_CPU = False
# Distinct compiled variants (dtypes, head sizes, grouped-query or not, static then dynamic lengths,
# ALiBi's and RoPE's) one process may hold before torch._dynamo would run FlexAttention unfused.
RECOMPILE_LIMIT = 64

TILE = 128  # FlexAttention's block-sparsity tile (its default): queries x keys per block-mask entry

logger = plugin_logger(__name__)


def padded_length(count: int, smallest: int = TILE) -> int:
    """The bucket ``count`` queries or keys are padded to: the next of ``smallest`` (a whole number of
    tiles) times 1, 2, 3, 4, 6, 8, 12, ... (at most a third of padding; padded rows and keys sit in
    tiles the block mask leaves empty, which cost no work). Kernels are compiled per bucket with
    static shapes (:func:`compiled_flex_attention`), so every length lm-eval sends runs on a few."""
    power = smallest
    while True:
        if power >= count:
            return power
        if power >= 2 * TILE and power * 3 // 2 >= count:
            return power * 3 // 2
        power *= 2


def validate_engine(choice, alibi: bool = False) -> str:
    """``choice`` as one of the engines, or a ValueError naming the accepted ones."""
    accepted = ALIBI_ENGINES if alibi else ENGINES
    value = "auto" if choice is None else str(choice).strip().lower()
    if value not in accepted:
        only = "" if alibi or value != "transformers" else " (transformers applies to ALiBi models only)"
        raise ValueError(f"attention_engine={choice!r} is not an engine{only}; use one of {', '.join(accepted)} "
                         "(auto: FlexAttention where it runs, else the block path).")
    return value


def engine_argument(attention_engine=None, alibi_attention=None) -> str | None:
    """ctx-hf's ``attention_engine``, or the deprecated ``alibi_attention`` read as it (``blocked``
    -> ``blocks``), validated for any model (``transformers`` is checked against the model later);
    None when neither is given."""
    if alibi_attention is not None:
        if attention_engine is not None:
            raise ValueError(f"alibi_attention={alibi_attention!r} and attention_engine={attention_engine!r} "
                             "both given; alibi_attention is deprecated: pass attention_engine alone.")
        logger.warning("alibi_attention is deprecated; use attention_engine=auto|flex|blocks|transformers "
                       "(alibi_attention=blocked is attention_engine=blocks).")
        blocked = isinstance(alibi_attention, str) and alibi_attention.strip().lower() == "blocked"
        attention_engine = "blocks" if blocked else alibi_attention
    return None if attention_engine is None else validate_engine(attention_engine, alibi=True)


@functools.cache
def _missing(kind: str) -> str | None:
    """Why FlexAttention cannot run on ``kind`` devices in this process (None: it can)."""
    if importlib.util.find_spec("torch.nn.attention.flex_attention") is None:
        return f"torch {torch.__version__} has no torch.nn.attention.flex_attention (needs torch 2.5 or later)"
    if kind == "cpu":
        if shutil.which("c++") is None and shutil.which("g++") is None:
            return "torch.compile needs a C++ compiler on CPU (install g++)"
        return None
    if kind == "cuda":
        return None if importlib.util.find_spec("triton") is not None else "torch.compile needs triton on CUDA"
    return f"FlexAttention is not supported on {kind} devices"


def flex_unavailable(device) -> str | None:
    """Why FlexAttention cannot run a call on ``device`` now, or None when it can."""
    kind = torch.device(device).type
    reason = _missing(kind)
    if reason is None and kind == "cpu" and torch.is_grad_enabled():
        return "FlexAttention on CPU runs for inference only (gradients are enabled)"
    return reason


def _wrapped(compiled):
    @functools.wraps(compiled)
    def call(*args, **kwargs):
        with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
            return compiled(*args, **kwargs)
    return call


@functools.cache
def compiled_flex_attention(static: bool = False):
    """FlexAttention compiled once per process: the first call of a variant compiles a kernel
    (about 20 s on CPU). Default: automatic dynamic shapes (callers mark their length axes
    ``torch._dynamo.maybe_mark_dynamic``; the second length compiles a dynamic kernel, later ones
    nothing). ``static=True``: a kernel per shape, for callers that pad lengths to a few buckets:
    inductor's CPU template fails to compile (undeclared ``cur_kvSplitSize`` in its C++, torch 2.13)
    a dynamic-length kernel whose ``mask_mod`` gathers through a gathered index, as the RoPE
    methods' does (lmeval_ctx.extension.attention.flex_kernel)."""
    from torch.nn.attention.flex_attention import flex_attention

    return _wrapped(torch.compile(flex_attention, dynamic=False if static else None))


def resolve_engine(choice: str, device) -> str:
    """The engine a call runs where FlexAttention is preferred: ``flex`` or ``blocks``
    (``transformers`` passes through); ``choice=flex`` where FlexAttention cannot run is a
    RuntimeError saying why."""
    if choice in ("blocks", "transformers"):
        return choice
    reason = flex_unavailable(device)
    if reason is None:
        return "flex"
    if choice == "flex":
        raise RuntimeError(f"attention_engine=flex cannot run here: {reason}. "
                           "Use attention_engine=auto or attention_engine=blocks.")
    return "blocks"


def rope_prefers_blocks(choice: str, device) -> bool:
    """auto on a device where the RoPE methods' block path is measured faster (the CPU)."""
    return choice == "auto" and torch.device(device).type == "cpu" and not ROPE_AUTO_FLEX_ON_CPU


def engine_record(choice: str | None, device, family: str = "rope") -> dict:
    """The run's record of its engine, at attach time (the model's device known): ``requested``,
    ``engine`` (``flex``, ``blocks`` or ``transformers``) and, where auto did not take FlexAttention
    or some calls run the block path anyway, ``note`` saying why."""
    choice = choice or "auto"
    kind = torch.device(device).type
    if choice in ("blocks", "transformers"):
        return {"requested": choice, "engine": choice}
    reason = _missing(kind)
    if reason is not None:
        if choice == "flex":
            raise RuntimeError(f"attention_engine=flex cannot run here: {reason}. "
                               "Use attention_engine=auto or attention_engine=blocks.")
        return {"requested": choice, "engine": "blocks", "note": f"FlexAttention unavailable: {reason}"}
    if family == "rope" and rope_prefers_blocks(choice, kind):
        return {"requested": choice, "engine": "blocks",
                "note": "the block path: measured faster than FlexAttention on CPU for the RoPE methods "
                        "(benchmarks/attention_engines.py); attention_engine=flex runs FlexAttention"}
    record = {"requested": choice, "engine": "flex"}
    if kind == "cpu":
        record["note"] = "calls with gradients enabled run the block path (FlexAttention on CPU is inference only)"
    return record
