"""Attention-level context-extension methods: the relative position each query-key pair gets.

RoPE scores depend only on the relative position of query and key:
``(R(a) q) . (R(b) k) = q . R(b - a) k``. Each method here keeps the model's frequencies
and assigns every pair (query at position i, key at position j <= i) a relative position;
some also hide keys. One function per method returns that assignment as a
:class:`PositionAssignment`:

- ``near``: the pairs that keep their true relative position ``i - j``;
- ``query_position`` and ``key_position``: for the other pairs, the positions query and key
  are rotated to, so their relative position is ``query_position - key_position`` (a
  function of i alone minus a function of j alone, which is what lets
  :mod:`lmeval_ctx.extension.attention.kernel` compute it with one extra rotation of the queries and
  one of the keys, a block of queries at a time);
- ``visible``: the keys a query may attend to (None: every earlier key).

Methods (formulas and defaults: docs/attention_methods.md):

- ``rerope`` (Su 2023, "Rectified Rotary Position Embeddings", kexue.fm/archives/9708):
  ``rel = min(i - j, w)``.
- ``leaky_rerope`` (same post): ``rel = i - j`` below ``w``, else ``w + (i - j - w) / k``.
- ``self_extend`` (Jin et al. 2024, "LLM Maybe LongLM: Self-Extend LLM Context Window
  Without Tuning", arXiv:2401.01325): ``rel = i - j`` inside the neighbour window ``w``, else
  ``floor(i/G) - floor(j/G) + w - floor(w/G)``.
- ``lm_infinite`` (Han et al. 2023, "LM-Infinite: Zero-Shot Extreme Length Generalization
  for Large Language Models", arXiv:2308.16137): key j visible iff ``j < n_global`` or
  ``i - j < n_local``; ``rel = min(i - j, L)``.
- ``dual_chunk`` (An et al. 2024, "Training-Free Long-Context Scaling of Large Language
  Models", arXiv:2402.17463; ChunkLlama): chunks of ``s`` positions; ``rel = i - j`` inside a
  chunk and for the first ``w`` queries of a chunk against the chunk before, else
  ``rel = (L - 1) - (j mod s)``.
- ``string`` (An et al. 2024, "Why Does the Effective Context Length of LLMs Fall Short?",
  arXiv:2410.18745): ``rel = i - j`` below the shift ``S``, else ``i - j - S + W``: the far pairs
  continue after a small local window ``W``, on well-trained positions.
- ``streaming_llm`` (Xiao et al. 2023, "Efficient Streaming Language Models with Attention
  Sinks", arXiv:2309.17453): the first ``n_sink`` keys and the last ``window`` keys (the query's
  own included) visible, LM-Infinite's Λ mask; positions counted inside that cache: a recent key
  keeps ``i - j``, a sink key ``j`` is at ``min(i, n_sink + window - 1) - j``.

Positions are tensors that broadcast against each other (queries ``(..., Q, 1)``, keys
``(..., 1, K)``); nothing here imports transformers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from lmeval_ctx.methods.catalog import ATTENTION_METHOD_OPTIONS, ATTENTION_METHODS


@dataclass(frozen=True)
class PositionAssignment:
    """What a method assigns to the pairs of query positions and key positions it was given."""

    near: torch.Tensor  # bool: the pair keeps its true relative position
    query_position: torch.Tensor  # the other pairs: the position the query is rotated to
    key_position: torch.Tensor  # ... and the key's
    visible: torch.Tensor | None = None  # bool: the key may be attended to (None: all earlier keys)


def moved_positions(positions: torch.Tensor) -> torch.Tensor:
    """Positions a method moves pairs to, as floats: float64 on the CPU (exact for leaky ReRoPE's
    fractional ``1/k`` steps at any length), float32 elsewhere. The attention kernels compute the
    moves from positions on the CPU (:func:`lmeval_ctx.extension.attention.kernel.moves`) and read
    only ``near`` and ``visible`` of an assignment on an accelerator, where float64 is slow or
    missing; so nothing makes float64 tensors on the device."""
    return positions.to(torch.float64 if positions.device.type == "cpu" else torch.float32)


def fixed_position(positions: torch.Tensor, value: float) -> torch.Tensor:
    """``value`` at every place of ``positions``, in :func:`moved_positions`' dtype."""
    return torch.full_like(moved_positions(positions), value)


def relative_positions(assignment: PositionAssignment, query_positions: torch.Tensor,
                       key_positions: torch.Tensor) -> torch.Tensor:
    """The relative position of every pair: ``i - j`` where near, else the rotated positions' difference
    (in :func:`moved_positions`' dtype)."""
    true = moved_positions(query_positions - key_positions)
    return torch.where(assignment.near, true, assignment.query_position - assignment.key_position)


def rerope(query_positions, key_positions, *, window: int, original_length: int) -> PositionAssignment:
    """ReRoPE (Su 2023): ``rel = min(i - j, w)``: the query at position ``w``, the key at 0."""
    distance = query_positions - key_positions
    return PositionAssignment(distance < window,
                              fixed_position(query_positions, window),
                              fixed_position(key_positions, 0))


def leaky_rerope(query_positions, key_positions, *, window: int, leak: float,
                 original_length: int) -> PositionAssignment:
    """Leaky ReRoPE (Su 2023): beyond ``w`` the relative position grows by ``1/k`` per token:
    ``w + (i - j - w)/k = (i/k + w - w/k) - j/k``."""
    distance = query_positions - key_positions
    return PositionAssignment(distance < window,
                              moved_positions(query_positions) / leak + window - window / leak,
                              moved_positions(key_positions) / leak)


def self_extend(query_positions, key_positions, *, group_size: int, neighbor_window: int,
                original_length: int) -> PositionAssignment:
    """SelfExtend (Jin et al. 2024): exact positions inside the neighbour window; beyond it
    grouped positions ``floor(i/G)`` and ``floor(j/G)``, the queries' shifted by
    ``w - floor(w/G)`` so the grouped distances continue the window."""
    distance = query_positions - key_positions
    shift = neighbor_window - neighbor_window // group_size
    return PositionAssignment(distance < neighbor_window,
                              moved_positions(torch.div(query_positions, group_size, rounding_mode="floor")) + shift,
                              moved_positions(torch.div(key_positions, group_size, rounding_mode="floor")))


def dual_chunk(query_positions, key_positions, *, chunk_size: int, local_window: int,
               original_length: int) -> PositionAssignment:
    """Dual Chunk Attention (An et al. 2024, arXiv:2402.17463, §3): keys at ``P_k[j] = j mod s``;
    queries at ``P_q^Intra[i] = i mod s`` against keys of their own chunk, at
    ``P_q^Succ[i] = s + (i mod s)`` if ``i mod s < w`` else ``c - 1`` against the chunk just
    before (their eq. 7), and at ``P_q^Inter[i] = c - 1`` against earlier chunks (``c`` = L).

    Intra-chunk pairs get ``(i mod s) - (j mod s) = i - j``; so do the successive-chunk pairs whose
    query is among the first ``w`` of its chunk: ``s + (i mod s) - (j mod s) = i - j`` when
    ``floor(i/s) = floor(j/s) + 1``. Those are the near pairs. Every other pair has its query at
    ``c - 1``: one query position per query and one key position per key, as for the other methods."""
    query_chunk = torch.div(query_positions, chunk_size, rounding_mode="floor")
    key_chunk = torch.div(key_positions, chunk_size, rounding_mode="floor")
    in_window = query_positions - query_chunk * chunk_size < local_window
    near = (query_chunk == key_chunk) | ((query_chunk - key_chunk == 1) & in_window)
    return PositionAssignment(near,
                              fixed_position(query_positions, original_length - 1),
                              moved_positions(torch.remainder(key_positions, chunk_size)))


def lambda_mask(query_positions, key_positions, first: int, last: int) -> torch.Tensor:
    """The Λ-shaped mask of LM-Infinite and StreamingLLM: key ``j`` visible to query ``i`` iff it is
    one of the ``first`` positions (the global tokens, the attention sinks) or one of the ``last``
    keys up to the query (``i - j < last``)."""
    return (query_positions - key_positions < last) | (key_positions < first)


def lm_infinite(query_positions, key_positions, *, global_tokens: int, local_window: int,
                original_length: int) -> PositionAssignment:
    """LM-Infinite (Han et al. 2023): the Λ-shaped mask (the first ``global_tokens`` positions
    and the last ``local_window`` keys) and the distance ceiling ``rel = min(i - j, L)``."""
    distance = query_positions - key_positions
    return PositionAssignment(distance <= original_length,
                              fixed_position(query_positions, original_length),
                              fixed_position(key_positions, 0),
                              lambda_mask(query_positions, key_positions, global_tokens, local_window))


def string(query_positions, key_positions, *, shift: int, local_window: int, original_length: int
           ) -> PositionAssignment:
    """STRING (An et al. 2024, eq. 3): ``rel = i - j`` for ``i - j < S``, else ``i - j - S + W``: the
    query moved back to ``i - S + W``, the key where it is (as ReRoPE, with a query moved by
    ``-(S - W)`` instead of to a fixed position)."""
    return PositionAssignment(query_positions - key_positions < shift,
                              moved_positions(query_positions) - (shift - local_window),
                              moved_positions(key_positions))


def streaming_llm(query_positions, key_positions, *, n_sink: int, window: int, original_length: int
                  ) -> PositionAssignment:
    """StreamingLLM (Xiao et al. 2023, §3.2): a cache of the ``n_sink`` first tokens and the
    ``window`` most recent ones (the query's own included), positions counted inside the cache.
    A full cache puts the sinks at ``0 .. n_sink - 1`` and the query at ``n_sink + window - 1``, so
    a recent key keeps ``i - j`` and a sink key ``j`` is at ``n_sink + window - 1 - j``; until the
    cache fills (``i < n_sink + window``) every token is in it at its true position. Both cases:
    the query at ``min(i, n_sink + window - 1)`` against a sink, the key at ``j``."""
    return PositionAssignment(query_positions - key_positions < window,
                              moved_positions(torch.clamp(query_positions, max=n_sink + window - 1)),
                              moved_positions(key_positions),
                              lambda_mask(query_positions, key_positions, n_sink, window))


# Defaults from the papers: LM-Infinite's n_global = 10 (they report 10 to 100 all work) and
# n_local = the trained length.
LM_INFINITE_GLOBAL_TOKENS = 10


# StreamingLLM's four attention sinks (Xiao et al. 2023, §3.2: "four initial tokens as attention sinks").
STREAMING_LLM_SINKS = 4
# STRING's defaults (the authors' code, HKUNLP/STRING: shifted_offset = int(0.33 * L),
# small_local_value = 128); W shrinks for short trained windows so that it stays at most S / 4.
STRING_SHIFT_RATIO, STRING_LOCAL_WINDOW = 0.33, 128


def string_default_shift(original_length: int) -> int:
    """STRING's default shift for a trained length ``L``: ``S = int(0.33 L)`` (at least 1)."""
    return max(1, int(STRING_SHIFT_RATIO * original_length))


def string_default_local_window(shift: int) -> int:
    """STRING's default local window for a shift ``S``: ``W = min(128, S // 4)``: the authors' 128
    wherever ``S >= 512`` (every trained length from 1552 on, theirs included), and for the short
    windows of small models a quarter of the shift, so the far pairs still move well back."""
    return min(STRING_LOCAL_WINDOW, shift // 4)


def dual_chunk_default_chunk_size(original_length: int) -> int:
    """DCA's chunk size: 3/4 of the trained length (An et al. 2024, §4.1: 3072 for Llama 2's 4096;
    ChunkLlama's ``replace_with_chunkllama`` also takes ``pretraining_length * 3 // 4``); at least 1."""
    return max(1, original_length * 3 // 4)


def _whole(value, name: str, minimum: int) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r} is not a whole number.") from None
    if not math.isfinite(number) or number != int(number) or number < minimum:
        raise ValueError(f"{name}={value!r} must be a whole number >= {minimum}.")
    return int(number)


def _required(method: str, options: dict, name: str, example: str):
    if options.get(name) is None:
        raise ValueError(f"scaling={method} needs {name}=<...>: {example}")
    return options[name]


# -- each method's options, validated, with the papers' defaults: (options, L, max_length) -> dict
def _rerope_options(options: dict, L: int, max_length: int | None, method: str = "rerope") -> dict:
    """ReRoPE's (and Leaky ReRoPE's) ``window`` ``w``: required, a trained distance (``w < L``)."""
    window = _whole(_required(method, options, "window",
                              f"the distance beyond which relative positions are capped, below "
                              f"original_max_length={L} (e.g. window={max(1, L // 4)})."), "window", 1)
    if window >= L:
        raise ValueError(f"window={window} must be smaller than original_max_length={L}: the capped relative "
                         f"position w must be one the model was trained on. Use window <= {L - 1}.")
    return {"window": window}


def _leaky_rerope_options(options: dict, L: int, max_length: int | None) -> dict:
    """Leaky ReRoPE's ``window`` and ``leak`` ``k >= 1`` (default: the largest distance at
    ``max_length`` mapped onto ``L - 1``), checked to stay within the trained distances."""
    window = _rerope_options(options, L, max_length, method="leaky_rerope")["window"]
    leak = options.get("leak")
    if leak is None:
        if max_length is None:
            raise ValueError(
                "scaling=leaky_rerope needs leak=<k> (relative positions beyond window grow by 1/k per token), "
                "or max_length=<evaluated window>, from which k = (max_length - 1 - window)/"
                "(original_max_length - 1 - window) maps the largest distance onto the largest trained one.")
        leak = (max_length - 1 - window) / (L - 1 - window)
    try:
        leak = float(leak)
    except (TypeError, ValueError):
        raise ValueError(f"leak={options.get('leak')!r} is not a number.") from None
    if not math.isfinite(leak) or leak < 1:
        raise ValueError(f"leak={leak:g} must be a finite number >= 1 (k=1 is no change; with max_length, the "
                         "default k = (max_length - 1 - window)/(original_max_length - 1 - window) is < 1 when the "
                         "window is inside the trained length: use scaling=none there).")
    if max_length is not None and window + (max_length - 1 - window) / leak > L - 1 + 1e-9:
        raise ValueError(f"leak={leak:g} with window={window} reaches relative position "
                         f"{window + (max_length - 1 - window) / leak:.1f} at max_length={max_length}, beyond the "
                         f"trained {L - 1}. Use leak >= {(max_length - 1 - window) / (L - 1 - window):.4g}.")
    return {"window": window, "leak": leak}


def _self_extend_options(options: dict, L: int, max_length: int | None) -> dict:
    """SelfExtend's ``group_size`` ``G`` and ``neighbor_window`` ``w < L`` (both required), checked so
    that the largest grouped distance at ``max_length`` stays within the trained ones."""
    method = "self_extend"
    group = _whole(_required(method, options, "group_size", "the number of positions merged into one beyond "
                             "the neighbour window (e.g. group_size=4)."), "group_size", 1)
    neighbors = _whole(_required(method, options, "neighbor_window", "the distance inside which positions "
                                 f"stay exact, below original_max_length={L} (e.g. neighbor_window="
                                 f"{max(1, L // 8)})."), "neighbor_window", 1)
    if neighbors >= L:
        raise ValueError(f"neighbor_window={neighbors} must be smaller than original_max_length={L} (beyond it "
                         f"positions are grouped; a window of {L} or more leaves distances the model never saw).")
    if max_length is not None:
        furthest = (max_length - 1) // group + neighbors - neighbors // group
        if furthest > L - 1:
            raise ValueError(
                f"group_size={group}, neighbor_window={neighbors} reach relative position {furthest} at "
                f"max_length={max_length}, beyond the trained {L - 1}: SelfExtend's reach is about "
                f"(L - w)*G + w = {(L - neighbors) * group + neighbors}. "
                "Raise group_size or lower neighbor_window.")
    return {"group_size": group, "neighbor_window": neighbors}


def _lm_infinite_options(options: dict, L: int, max_length: int | None) -> dict:
    """LM-Infinite's ``global_tokens`` (default 10) and ``local_window`` (default ``L``)."""
    given_global, given_local = options.get("global_tokens"), options.get("local_window")
    return {"global_tokens": LM_INFINITE_GLOBAL_TOKENS if given_global is None
            else _whole(given_global, "global_tokens", 0),
            "local_window": L if given_local is None else _whole(given_local, "local_window", 1)}


def _dual_chunk_options(options: dict, L: int, max_length: int | None) -> dict:
    """DCA's chunk size ``s`` (default ``floor(3L/4)``) and local window ``w`` (default ``L - s``, the
    paper's choice "w = c - s", at most ``s``: a chunk has ``s`` queries), checked so that no relative
    position exceeds the trained ``L - 1``."""
    given_chunk, given_local = options.get("chunk_size"), options.get("local_window")
    chunk = dual_chunk_default_chunk_size(L) if given_chunk is None else _whole(given_chunk, "chunk_size", 1)
    if chunk > L:
        raise ValueError(f"chunk_size={chunk} must be at most original_max_length={L}: positions inside a chunk run "
                         f"up to chunk_size - 1, which the model must have been trained on. Use chunk_size <= {L} "
                         f"(the paper's choice: {dual_chunk_default_chunk_size(L)}, 3/4 of it).")
    local = min(L - chunk, chunk) if given_local is None else _whole(given_local, "local_window", 0)
    if local > chunk:
        raise ValueError(f"local_window={local} must be at most chunk_size={chunk}: it counts the first queries of a "
                         f"chunk that see the previous chunk at their true distance, and a chunk has {chunk}. "
                         f"Use local_window <= {min(chunk, L - chunk)}.")
    if chunk + local > L:
        raise ValueError(f"chunk_size={chunk} with local_window={local} reaches relative position {chunk + local - 1} "
                         f"(a query at chunk offset local_window - 1 against the previous chunk's first key), beyond "
                         f"the trained {L - 1}. Use chunk_size + local_window <= original_max_length={L}: "
                         f"local_window <= {L - chunk}, or chunk_size <= {L - local}.")
    return {"chunk_size": chunk, "local_window": local}


def _string_options(options: dict, L: int, max_length: int | None) -> dict:
    """STRING's shift ``S`` and local window ``W`` (defaults :func:`string_default_shift`,
    :func:`string_default_local_window`), checked so that ``W < S <= L``: the near pairs keep trained
    distances below ``S``, the far ones start at ``W``."""
    default_shift = string_default_shift(L)
    given_shift, given_local = options.get("shift"), options.get("local_window")
    shift = default_shift if given_shift is None else _whole(given_shift, "shift", 1)
    if shift > L:
        raise ValueError(f"shift={shift} must be at most original_max_length={L}: pairs closer than the shift keep "
                         f"their distance, which the model must have been trained on. Use shift <= {L} (the "
                         f"authors' default: {default_shift}, 0.33 of it).")
    local = string_default_local_window(shift) if given_local is None else _whole(given_local, "local_window", 0)
    if local >= shift:
        raise ValueError(f"local_window={local} must be smaller than shift={shift}: a far pair (distance d >= shift) "
                         f"is moved to d - shift + local_window, which must be a move back. Use local_window <= "
                         f"{shift - 1} (the authors use 128 with shift = 0.33 x the trained length).")
    return {"shift": shift, "local_window": local}


def _streaming_llm_options(options: dict, L: int, max_length: int | None) -> dict:
    """StreamingLLM's ``n_sink`` (default 4) and ``window`` (default ``L - n_sink``, a cache as long as
    the trained window), checked so that the cache's positions stay trained: ``n_sink + window <= L``."""
    given_sink, given_window = options.get("n_sink"), options.get("window")
    sinks = STREAMING_LLM_SINKS if given_sink is None else _whole(given_sink, "n_sink", 0)
    if sinks >= L:
        raise ValueError(f"n_sink={sinks} must be smaller than original_max_length={L}: the cache holds the sinks "
                         f"and a window of recent tokens within the trained length. Use n_sink={STREAMING_LLM_SINKS}.")
    window = L - sinks if given_window is None else _whole(given_window, "window", 1)
    if sinks + window > L:
        raise ValueError(f"n_sink={sinks} with window={window} makes a cache of {sinks + window} positions, beyond "
                         f"original_max_length={L}: the query would sit at position {sinks + window - 1}, which the "
                         f"model was not trained on. Use window <= {L - sinks}.")
    return {"n_sink": sinks, "window": window}


@dataclass(frozen=True)
class AttentionMethod:
    """One registry entry: the assignment, its options, and the distances it leaves as they are."""

    assign: Callable[..., PositionAssignment]
    # (options, original_length, max_length) -> the options validated, with the papers' defaults
    resolve_options: Callable[[dict, int, int | None], dict]
    # A relative distance up to which every pair keeps its true position and every key stays
    # visible (from the resolved options and the original length): an input whose distances
    # stay within it is attended exactly as without the method.
    unchanged_up_to: Callable[[dict, int], float]
    # A position below which every pair keeps its true position, whatever its distance (None: no
    # such bound): DCA changes pairs by the chunks they fall in, so an input whose queries all sit
    # in the first chunk is attended exactly as without it (the identity chunk_size >= length).
    unchanged_below: Callable[[dict, int], float] | None = None


ATTENTION_METHOD_REGISTRY: dict[str, AttentionMethod] = {
    "rerope": AttentionMethod(rerope, _rerope_options, lambda o, L: o["window"]),
    "leaky_rerope": AttentionMethod(leaky_rerope, _leaky_rerope_options, lambda o, L: o["window"]),
    "self_extend": AttentionMethod(self_extend, _self_extend_options,
                                   lambda o, L: math.inf if o["group_size"] == 1 else o["neighbor_window"] - 1),
    "lm_infinite": AttentionMethod(lm_infinite, _lm_infinite_options, lambda o, L: min(o["local_window"] - 1, L)),
    # a pair at distance d <= w keeps it wherever the chunk boundaries fall: in one chunk, or in
    # successive chunks with the query's offset i mod s <= d - 1 < w; a changed pair has d >= w + 1
    "dual_chunk": AttentionMethod(dual_chunk, _dual_chunk_options, lambda o, L: o["local_window"],
                                  unchanged_below=lambda o, L: o["chunk_size"]),
    "string": AttentionMethod(string, _string_options, lambda o, L: o["shift"] - 1),
    # until the cache fills (queries below n_sink + window) every key is in it at its true position
    "streaming_llm": AttentionMethod(streaming_llm, _streaming_llm_options, lambda o, L: o["window"] - 1,
                                     unchanged_below=lambda o, L: o["n_sink"] + o["window"]),
}
assert tuple(ATTENTION_METHOD_REGISTRY) == ATTENTION_METHODS


def assign_positions(method: str, options: dict, original_length: int, query_positions, key_positions
                     ) -> PositionAssignment:
    """``method``'s assignment for these positions, with its resolved ``options``."""
    own = {key: options[key] for key in ATTENTION_METHOD_OPTIONS[method]}
    return ATTENTION_METHOD_REGISTRY[method].assign(query_positions, key_positions, original_length=original_length,
                                                    **own)


def resolve_attention_options(method: str, options: dict, original_length: int | None,
                              max_length: int | None) -> dict:
    """``method``'s options validated, with the papers' defaults filled in; ValueError naming the fix."""
    if method not in ATTENTION_METHOD_REGISTRY:
        raise ValueError(f"scaling={method!r} is not an attention-level method; those are "
                         f"{', '.join(ATTENTION_METHOD_REGISTRY)}.")
    if original_length is None:
        raise ValueError(f"scaling={method} needs the trained context length; pass original_max_length=<tokens>.")
    return ATTENTION_METHOD_REGISTRY[method].resolve_options(options, original_length, max_length)
