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


def relative_positions(assignment: PositionAssignment, query_positions: torch.Tensor,
                       key_positions: torch.Tensor) -> torch.Tensor:
    """The relative position of every pair: ``i - j`` where near, else the rotated positions' difference."""
    true = (query_positions - key_positions).to(torch.float64)
    other = (assignment.query_position - assignment.key_position).to(torch.float64)
    return torch.where(assignment.near, true, other)


def rerope(query_positions, key_positions, *, window: int, original_length: int) -> PositionAssignment:
    """ReRoPE (Su 2023): ``rel = min(i - j, w)``: the query at position ``w``, the key at 0."""
    distance = query_positions - key_positions
    return PositionAssignment(distance < window,
                              torch.full_like(query_positions, window, dtype=torch.float64),
                              torch.zeros_like(key_positions, dtype=torch.float64))


def leaky_rerope(query_positions, key_positions, *, window: int, leak: float,
                 original_length: int) -> PositionAssignment:
    """Leaky ReRoPE (Su 2023): beyond ``w`` the relative position grows by ``1/k`` per token:
    ``w + (i - j - w)/k = (i/k + w - w/k) - j/k``."""
    distance = query_positions - key_positions
    return PositionAssignment(distance < window,
                              query_positions.to(torch.float64) / leak + window - window / leak,
                              key_positions.to(torch.float64) / leak)


def self_extend(query_positions, key_positions, *, group_size: int, neighbor_window: int,
                original_length: int) -> PositionAssignment:
    """SelfExtend (Jin et al. 2024): exact positions inside the neighbour window; beyond it
    grouped positions ``floor(i/G)`` and ``floor(j/G)``, the queries' shifted by
    ``w - floor(w/G)`` so the grouped distances continue the window."""
    distance = query_positions - key_positions
    shift = neighbor_window - neighbor_window // group_size
    return PositionAssignment(distance < neighbor_window,
                              torch.div(query_positions, group_size, rounding_mode="floor").to(torch.float64) + shift,
                              torch.div(key_positions, group_size, rounding_mode="floor").to(torch.float64))


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
                              torch.full_like(query_positions, original_length - 1, dtype=torch.float64),
                              torch.remainder(key_positions, chunk_size).to(torch.float64))


def lm_infinite(query_positions, key_positions, *, global_tokens: int, local_window: int,
                original_length: int) -> PositionAssignment:
    """LM-Infinite (Han et al. 2023): the Λ-shaped mask (the first ``global_tokens`` positions
    and the last ``local_window`` keys) and the distance ceiling ``rel = min(i - j, L)``."""
    distance = query_positions - key_positions
    visible = (distance < local_window) | (key_positions < global_tokens)
    return PositionAssignment(distance <= original_length,
                              torch.full_like(query_positions, original_length, dtype=torch.float64),
                              torch.zeros_like(key_positions, dtype=torch.float64), visible)


# Defaults from the papers: LM-Infinite's n_global = 10 (they report 10 to 100 all work) and
# n_local = the trained length.
LM_INFINITE_GLOBAL_TOKENS = 10


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
