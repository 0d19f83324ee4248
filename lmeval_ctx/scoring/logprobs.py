"""Log-probabilities of chosen tokens from a causal LM's final hidden states, a slice of positions at a time.

A causal LM's forward pass returns logits for every position over the whole
vocabulary: ``batch x length x vocabulary`` floats (6.4 GB for a 49k-token
vocabulary at 32k positions in float32), and lm-eval's log-softmax holds a
second copy. Scoring needs far less: the log-probability of one target token
per scored position, and whether it is the argmax. So the decoder runs once,
returning its final hidden states (``length x hidden``), and the output layer,
with whatever the model's forward does after it, is applied to a slice of the
scored positions at a time; each slice is log-softmaxed, its targets gathered
and its argmax compared, and the slice is freed before the next. Only the
scored positions go through the output layer (for a loglikelihood request, its
continuation). Peak memory is then the decoder's own, plus one slice of logits.

Which architectures can be scored this way, and what their forward does after
the output layer, is one table (:data:`AFTER_OUTPUT_LAYER`), read from
transformers' ``ForCausalLM.forward`` of each class. A model whose class is not
in it is scored from full logits, never approximated.

Precision: whatever the model's dtype, each slice is log-softmaxed in float32 (or
the explicit ``softmax_dtype``) and the log-probabilities are summed in float64.
lm-eval's HFLM log-softmaxes and sums in the logits' dtype: in bfloat16
a continuation of 2,048 tokens sums to about -7,900, where bfloat16's spacing is
32, so the sum alone is off by up to 16 nats (SmolLM2's perplexity at 2k: +0.44%).

On the device: the log-probabilities stay in the log-softmax's dtype (float32; GPUs
run float64 at a fraction of their speed, Apple's MPS not at all) where the logits
are, and come to the host in one transfer per call, where they are widened to
float64 and summed; nothing in the loop waits for the device. Where the logits are
is the output layer's device, which under accelerate's device map
(``parallelize=True``) need not be the first layer's nor the decoder's last one's.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

# Positions per slice of logits: 512 x a 49k vocabulary is 96 MiB of float32 logits.
DEFAULT_SLICE_POSITIONS = 512


def _unchanged(model: torch.nn.Module, logits: torch.Tensor) -> torch.Tensor:
    return logits


def _final_logit_softcapping(model: torch.nn.Module, logits: torch.Tensor) -> torch.Tensor:
    """Gemma 2/3: ``cap * tanh(logits / cap)`` when the config sets a cap, in the forward's order."""
    cap = model.config.final_logit_softcapping
    if cap is None:
        return logits
    logits = logits / cap
    logits = torch.tanh(logits)
    return logits * cap


def _cohere_logit_scale(model: torch.nn.Module, logits: torch.Tensor) -> torch.Tensor:
    return logits * model.logit_scale


def _granite_logits_scaling(model: torch.nn.Module, logits: torch.Tensor) -> torch.Tensor:
    return logits / model.config.logits_scaling


# Causal-LM class name -> what its forward does to the output layer's result. Each of these
# forwards runs ``model.base_model`` on the input ids, applies ``get_output_embeddings()``
# to the last hidden state, then this (transformers 5). Keyed by class, not model_type:
# the reviewed forward is the class's (a model_type may load as another class).
AFTER_OUTPUT_LAYER: dict[str, Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]] = {
    "LlamaForCausalLM": _unchanged,
    "MistralForCausalLM": _unchanged,
    "Qwen2ForCausalLM": _unchanged,
    "Qwen3ForCausalLM": _unchanged,
    "Phi3ForCausalLM": _unchanged,
    "GPTNeoXForCausalLM": _unchanged,
    "GPT2LMHeadModel": _unchanged,
    "BloomForCausalLM": _unchanged,
    "MptForCausalLM": _unchanged,
    "FalconForCausalLM": _unchanged,
    "Gemma2ForCausalLM": _final_logit_softcapping,
    "Gemma3ForCausalLM": _final_logit_softcapping,
    "CohereForCausalLM": _cohere_logit_scale,
    "GraniteForCausalLM": _granite_logits_scaling,
}


def output_layer(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """``hidden (..., hidden_size) -> logits (..., vocabulary)`` exactly as ``model``'s forward computes
    them, or None when the model's class is not in :data:`AFTER_OUTPUT_LAYER`."""
    after = AFTER_OUTPUT_LAYER.get(type(model).__name__)
    head = model.get_output_embeddings() if after is not None else None
    if head is None or model.base_model is model:
        return None
    return lambda hidden: after(model, head(hidden))


def final_hidden_states(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """The decoder's output for ``input_ids`` (batch, length): what the output layer receives.

    Called as the causal LM's forward calls it for ``model(input_ids)``, but without a
    key/value cache, which scoring never reads (at 32k tokens it would hold every
    layer's keys and values: 1.5 GB for SmolLM2-135M).
    """
    return model.base_model(input_ids=input_ids, use_cache=False).last_hidden_state  # (batch, length, hidden)


def log_softmax_dtype(logits_dtype: torch.dtype, softmax_dtype: torch.dtype | None = None) -> torch.dtype:
    """The dtype scoring log-softmaxes in: ``softmax_dtype`` when set (a model arg, honoured as
    given), else at least float32 (float64 logits stay float64), never the half precision of
    bfloat16 or float16 logits, whose rounding of each log-probability would bias a sum of them."""
    return softmax_dtype if softmax_dtype is not None else torch.promote_types(logits_dtype, torch.float32)


def sliced_logprobs(head: Callable[[torch.Tensor], torch.Tensor] | None, hidden: torch.Tensor, targets: torch.Tensor,
                    softmax_dtype: torch.dtype | None = None,
                    slice_positions: int = DEFAULT_SLICE_POSITIONS) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`target_logprobs` left on the device: in the log-softmax's dtype, where the logits are.

    The targets follow the logits: the output layer's device, which under a device map
    (accelerate's hooks move each layer's inputs to it) may be neither ``hidden``'s nor the targets'.
    """
    if slice_positions < 1:
        raise ValueError(f"slice_positions must be a positive number of positions; got {slice_positions!r}.")
    if hidden.shape[0] == 0:
        raise ValueError("hidden holds no positions: there is nothing to score.")
    if targets.dim() != 2 or targets.shape[1] != hidden.shape[0]:
        raise ValueError(f"targets must be (rows, {hidden.shape[0]}) for {hidden.shape[0]} positions; "
                         f"got shape {tuple(targets.shape)}.")
    log_probs = is_argmax = None
    for start in range(0, hidden.shape[0], slice_positions):
        stop = start + slice_positions
        logits = hidden[start:stop] if head is None else head(hidden[start:stop])  # (slice, vocabulary)
        part = F.log_softmax(logits, dim=-1, dtype=log_softmax_dtype(logits.dtype, softmax_dtype))
        del logits
        if log_probs is None:
            # Allocated once, on the logits' device: small tensors kept from every slice would sit in
            # the holes freed slices leave, so that each new slice needed fresh memory (the heap grew
            # by a slice of logits per slice on glibc).
            targets = targets.to(part.device, non_blocking=True)
            log_probs = torch.empty(targets.shape, dtype=part.dtype, device=part.device)
            is_argmax = torch.empty(targets.shape, dtype=torch.bool, device=part.device)
        wanted = targets[:, start:stop].T  # (slice, rows)
        log_probs[:, start:stop] = part.gather(-1, wanted).T
        is_argmax[:, start:stop] = (part.argmax(dim=-1)[:, None] == wanted).T
        del part
    return log_probs, is_argmax


def target_logprobs(head: Callable[[torch.Tensor], torch.Tensor] | None, hidden: torch.Tensor, targets: torch.Tensor,
                    softmax_dtype: torch.dtype | None = None,
                    slice_positions: int = DEFAULT_SLICE_POSITIONS) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of target tokens and whether each is the argmax, a slice of positions at a time.

    ``hidden`` (positions, hidden_size) are the final hidden states of the scored
    positions, or their logits when ``head`` is None (a model scored from full logits);
    ``targets`` (rows, positions) the tokens each row asks about at them (several rows
    share one pass, e.g. answer choices that differ in their last token). Log-softmax runs in
    :func:`log_softmax_dtype` (float32 for half-precision logits) on the logits' device
    (:func:`sliced_logprobs`); the log-probabilities come back on the host in float64, in one
    transfer, so that any sum of them is exact to float64 rounding.
    Returns ``(log_probs, is_argmax)``, both (rows, positions), on the CPU.
    """
    log_probs, is_argmax = sliced_logprobs(head, hidden, targets, softmax_dtype, slice_positions)
    # one transfer (one wait for the device) for both: the argmax flags ride along as 0/1 values
    host = torch.stack((log_probs, is_argmax.to(log_probs.dtype))).cpu()
    return host[0].double(), host[1].bool()


def continuation_scores(head: Callable[[torch.Tensor], torch.Tensor] | None, hidden: torch.Tensor,
                        continuations: list[list[int]], softmax_dtype: torch.dtype | None = None,
                        slice_positions: int = DEFAULT_SLICE_POSITIONS) -> list[tuple[float, bool]]:
    """``(log-probability sum, every token the argmax)`` of each continuation, aligned to the end of ``hidden``.

    ``hidden`` (positions, hidden_size) holds the positions of the longest continuation
    (or their logits, ``head`` None); a shorter one is scored at the last positions,
    where its tokens are. Sums are float64 on the host (:func:`target_logprobs`: one transfer for
    all the continuations), as Python floats.
    """
    longest = max(continuations, key=len)
    positions = len(longest)
    if positions != hidden.shape[0]:
        raise ValueError(f"hidden must hold the longest continuation's {positions} positions; "
                         f"got {hidden.shape[0]}.")
    # a shorter continuation's row starts with the longest's first tokens: unscored filler
    # made on the host: sliced_logprobs moves them once to where the logits are
    targets = torch.tensor([longest[:positions - len(c)] + list(c) for c in continuations],
                           dtype=torch.long)  # (continuations, positions)
    log_probs, greedy = target_logprobs(head, hidden, targets, softmax_dtype, slice_positions)
    return [(float(log_probs[m, positions - len(c):].sum()), bool(greedy[m, positions - len(c):].all()))
            for m, c in enumerate(continuations)]


__all__ = [
    "AFTER_OUTPUT_LAYER",
    "DEFAULT_SLICE_POSITIONS",
    "continuation_scores",
    "final_hidden_states",
    "log_softmax_dtype",
    "output_layer",
    "sliced_logprobs",
    "target_logprobs",
]
