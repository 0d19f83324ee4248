"""Key-token perplexity (LongPPL; Fang et al. 2024, "What is Wrong with Perplexity for Long-context
Language Modeling?", ICLR 2025, arXiv:2410.23771): the model side.

Plain perplexity is dominated by tokens any short context predicts as well; LongPPL scores only
the *key tokens*, those an evaluator model predicts much better with the whole window than with
its last ``K`` tokens:

    log P(x_i | x_<i) - log P(x_i | last K tokens before i) > alpha   and   log P(x_i | x_<i) > beta

(alpha = 2, beta = -2, K = 4096 in the paper). As in the authors' code, the short contexts come
from sliding windows: windows of ``K + stride`` tokens starting every ``stride`` tokens, each
scoring its last ``stride`` tokens, so a token's short context holds ``K`` to ``K + stride - 1``
tokens; tokens before position ``K`` have no shorter context and are never key tokens.

Two halves live here: choosing key tokens with an evaluator (:func:`evaluator_logprobs`,
:func:`select_key_tokens`), and, for ``ctx-hf``, scoring a request's key tokens in the same
forward pass as the whole request (:func:`key_token_loglikelihood`): lm-eval's loglikelihood
returns one sum per request, so ctx-hf answers requests whose document lists key tokens with a
:class:`KeyTokenScore`, the usual ``(sum, is_greedy)`` plus the key tokens' sum and count.
"""

from __future__ import annotations

import math

import torch

from lmeval_ctx.scoring import logprobs as scoring
from lmeval_ctx.scoring.prefix_sharing import plan_shared_prefixes

# The document field (a list of offsets into the request's continuation tokens) that asks for key tokens.
KEY_OFFSETS_FIELD = "key_offsets"


# -- choosing key tokens --------------------------------------------------------------------------

def short_windows(length: int, window: int, stride: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of the short-context windows over ``length`` tokens (the authors' sliding windows):
    window ``tokens[start:stop]`` scores positions ``start + window .. stop - 1``."""
    if window < 1 or stride < 1:
        raise ValueError(f"key_window and key_stride must be positive; got {window!r} and {stride!r}.")
    return [(start, min(start + window + stride, length)) for start in range(0, max(length - window, 0), stride)]


@torch.no_grad()
def token_logprobs(model: torch.nn.Module, tokens: list[int], first: int = 0) -> torch.Tensor:
    """Log-probabilities (float64) of ``tokens[first + 1:]``, each given every token before it, in one pass;
    a slice of positions at a time through the output layer (:mod:`lmeval_ctx.scoring.logprobs`)."""
    device = next(model.parameters()).device
    inputs = torch.tensor([tokens[:-1]], dtype=torch.long, device=device)
    targets = torch.tensor([tokens[first + 1:]], dtype=torch.long, device=device)
    head = scoring.output_layer(model)
    if head is None:
        hidden = model(inputs).logits[0, first:]
    else:
        hidden = scoring.final_hidden_states(model, inputs)[0, first:]
    return scoring.target_logprobs(head, hidden, targets)[0][0].cpu()


def context_logprobs(model: torch.nn.Module, tokens: list[int], window: int, stride: int,
                     whole_prefix: bool = False) -> torch.Tensor:
    """``out[p] = log P(tokens[p] | its last window .. window + stride - 1 tokens)`` for ``p >= window``, from the
    sliding windows of :func:`short_windows`; before ``window``: NaN, or with ``whole_prefix`` given every token
    before ``p`` (one more pass, over the first ``window`` tokens)."""
    out = torch.full((len(tokens),), math.nan, dtype=torch.float64)
    head = tokens[:window]
    if whole_prefix and len(head) > 1:
        out[1:len(head)] = token_logprobs(model, head)
    for start, stop in short_windows(len(tokens), window, stride):
        out[start + window:stop] = token_logprobs(model, tokens[start:stop], first=window - 1)
    return out


def evaluator_logprobs(model: torch.nn.Module, tokens: list[int], windows: list[tuple[int, int]],
                       long: tuple[int, int] | None = None):
    """The evaluator's per-position log-probabilities: ``(full, {(K, stride): short})``.

    ``full[p] = log P(tokens[p] | tokens[:p])`` (NaN at 0), one pass over all tokens; with ``long =
    (N, stride)`` each token is given at most its last ``N`` to ``N + stride - 1`` tokens instead (every
    token before it when there are fewer), for an evaluator whose window is shorter than the tokens.
    ``short[p]`` the same given the short context of :func:`short_windows` (NaN before ``K``): ``(len - K) /
    stride`` passes of ``K + stride`` tokens for each ``(K, stride)``.
    """
    if long is None:
        full = torch.cat([torch.tensor([math.nan], dtype=torch.float64), token_logprobs(model, tokens)])
    else:
        full = context_logprobs(model, tokens, *long, whole_prefix=True)
    return full, {pair: context_logprobs(model, tokens, *pair) for pair in windows}


def select_key_tokens(full: torch.Tensor, short: torch.Tensor, alpha: float, beta: float) -> list[int]:
    """The positions LongPPL's rule selects: ``full - short > alpha`` and ``full > beta`` (NaNs never)."""
    keys = ((full - short) > alpha) & (full > beta)
    return [int(p) for p in torch.nonzero(keys).flatten()]


def load_evaluator(source: str, from_pretrained: dict, dtype: str | None, device: str | None):
    """The evaluator checkpoint as transformers builds it (no context-extension method), in eval mode."""
    from transformers import AutoModelForCausalLM

    chosen = getattr(torch, str(dtype)) if dtype not in (None, "", "auto") else torch.float32
    if not isinstance(chosen, torch.dtype):
        raise ValueError(f"dtype={dtype!r} is not a torch dtype; use float32, bfloat16 or float16.")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=chosen, **from_pretrained)
    except (OSError, ValueError) as error:
        raise ValueError(f"key tokens: could not load the evaluator {source!r}: {error}. Name a loadable "
                         "checkpoint with key_token_model=<folder or hub name>.") from error
    return model.to(device).eval()


# -- scoring the evaluated model's key tokens (ctx-hf) ----------------------------------------------

class KeyTokenScore(tuple):
    """lm-eval's ``(log-prob sum, is_greedy)`` answer, plus the key tokens' log-prob sum and count."""

    def __new__(cls, total: float, greedy: bool, key_logprob: float, key_count: int):
        answer = super().__new__(cls, (total, greedy))
        answer.key_logprob, answer.key_count = key_logprob, key_count
        return answer

    def __getnewargs__(self):  # pickling (lm-eval's request cache) rebuilds it whole
        return (*self, self.key_logprob, self.key_count)


def _key_offsets(request) -> list[int] | None:
    doc = getattr(request, "doc", None)
    return doc.get(KEY_OFFSETS_FIELD) if isinstance(doc, dict) else None


def key_token_loglikelihood(lm, requests, loglikelihood, disable_tqdm: bool = False) -> list:
    """``ctx-hf``'s loglikelihood: requests whose document lists key tokens answered with a
    :class:`KeyTokenScore` from one forward pass (requests that are prefixes of a longer one, the
    same document at several lengths, from the longer one's pass unless the method's scaling
    depends on the input length); the others by ``loglikelihood`` (HFLM's).

    ``lm`` is ctx-hf's model: its ``_encode_pair``, ``_token_logprobs``, ``max_length``,
    ``truncation``, ``_too_long`` and ``context_extension``. The answers are not put in lm-eval's
    request cache, whose key (the two texts) does not tell key-token selections apart.
    """
    keyed = [i for i, request in enumerate(requests) if _key_offsets(request) is not None]
    if not keyed:
        return loglikelihood(requests, disable_tqdm=disable_tqdm)
    answers: list = [None] * len(requests)
    rest = [i for i in range(len(requests)) if _key_offsets(requests[i]) is None]
    for i, answer in zip(rest, loglikelihood([requests[i] for i in rest], disable_tqdm=disable_tqdm) if rest else [],
                         strict=True):
        answers[i] = answer
    encoded = {i: lm._encode_pair(*requests[i].args) for i in keyed}
    for i, (context, continuation) in encoded.items():
        if len(context) + len(continuation) > lm.max_length + 1:
            raise lm._too_long(len(context) + len(continuation) - 1, lm.max_length)
    sequences = [encoded[i][0] + encoded[i][1] for i in keyed]
    groups = {} if lm.context_extension.length_dependent else plan_shared_prefixes(sequences)
    served = {member for members in groups.values() for member in members}
    groups.update({n: [n] for n in range(len(keyed)) if n not in served})
    for carrier, members in groups.items():
        first = min(len(encoded[keyed[n]][0]) for n in members) - 1  # no output layer before the first target
        logprobs, greedy = lm._token_logprobs(sequences[carrier], first=first)
        for n in members:
            context, continuation = encoded[keyed[n]]
            scored = slice(len(context) - 1 - first, len(context) + len(continuation) - 1 - first)
            offsets = torch.tensor(_key_offsets(requests[keyed[n]]), dtype=torch.long)
            if len(offsets) and int(offsets.max()) >= len(continuation):
                raise ValueError(f"{KEY_OFFSETS_FIELD}: offset {int(offsets.max())} is past the continuation's "
                                 f"{len(continuation)} tokens; the key tokens were chosen for other windows.")
            answers[keyed[n]] = KeyTokenScore(float(logprobs[scored].sum()), bool(greedy[scored].all()),
                                              float(logprobs[scored][offsets].sum()), len(offsets))
    return answers


__all__ = [
    "KEY_OFFSETS_FIELD",
    "KeyTokenScore",
    "context_logprobs",
    "evaluator_logprobs",
    "key_token_loglikelihood",
    "load_evaluator",
    "select_key_tokens",
    "short_windows",
    "token_logprobs",
]
