"""lm-eval's batched loglikelihood scoring on sliced logits, as a mixin for an ``HFLM`` subclass (``ctx-hf``).

The maths is :mod:`lmeval_ctx.scoring.logprobs`; this is the batching around it: lm-eval's
``Collator`` batches, the rows of a batch through the decoder once, each row's continuation
through the output layer a slice of positions at a time, and ``batch_size=auto``'s probe run
on that same path (docs/scoring.md).
"""

from __future__ import annotations

import torch
from lm_eval.models.utils import Collator
from lm_eval.models.utils_hf import pad_and_concat
from tqdm import tqdm

from lmeval_ctx.common.logs import plugin_logger
from lmeval_ctx.scoring import logprobs as scoring

eval_logger = plugin_logger(__name__)


class SlicedScoring:
    """Scoring from the final hidden states, a slice of positions at a time; mixed in before ``HFLM``."""

    # Positions per slice of output-layer logits (lmeval_ctx.scoring.logprobs). 0 scores from full logits as
    # HFLM does: batch x length x vocabulary floats at once (a switch for comparisons and benchmarks).
    logits_slice: int = scoring.DEFAULT_SLICE_POSITIONS
    _full_logits_noted = False
    # While batch_size=auto probes (_detect_batch_size): (output layer, positions each row scores)
    _probe: tuple | None = None

    def _output_layer(self):
        """The model's output layer for sliced scoring, or None to score from full logits."""
        if isinstance(self.logits_slice, bool) or not isinstance(self.logits_slice, int) or self.logits_slice < 0:
            raise ValueError(f"logits_slice must be a whole number of positions >= 0 (0: full logits); "
                             f"got {self.logits_slice!r}.")
        if self.logits_slice == 0 or self.backend != "causal":
            return None
        head = scoring.output_layer(self.model)
        if head is None and not self._full_logits_noted:
            eval_logger.warning(
                "lmeval-ctx: %s is not in lmeval_ctx.scoring.logprobs.AFTER_OUTPUT_LAYER; scoring from full logits "
                "(batch x length x vocabulary floats at once)", type(self.model).__name__)
            self._full_logits_noted = True
        return head

    def _autocast(self):
        """The mixed-precision context HFLM's forward pass runs in (off unless mixed_precision_dtype is set)."""
        return torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype,
                              enabled=self.mixed_precision_dtype is not None)

    def _model_call(self, inps, attn_mask=None, labels=None, final_hidden_states: bool = False):
        """HFLM's forward pass; with ``final_hidden_states``, the decoder's output instead of logits.

        While ``batch_size=auto`` probes, HFLM's plain call runs the sliced scoring of every row
        instead (:meth:`_detect_batch_size`) and returns its log-probabilities.
        """
        if self._probe is not None and not final_hidden_states and attn_mask is None:
            return self._probe_pass(inps)
        if not final_hidden_states:
            return super()._model_call(inps, attn_mask=attn_mask, labels=labels)
        with torch.no_grad(), self._autocast():
            return scoring.final_hidden_states(self.model, inps)  # (batch, length, hidden)

    def _detect_batch_size(self, requests=None, pos: int = 0):
        """``batch_size=auto``: the largest batch the scoring path really holds.

        HFLM's probe (halving from ``max_batch_size`` on each out-of-memory error, taking the
        minimum over processes) runs unchanged, but each of its forward passes is the sliced
        scoring of :meth:`_score_batches`: the decoder over the batch, then each row's scored
        positions through the output layer a slice at a time. HFLM's own pass allocates
        ``batch x length x vocabulary`` logits and their log-softmax, which sliced scoring never
        does: it would pick a batch several times smaller than fits (docs/scoring.md).
        """
        head = self._output_layer()
        if head is None:  # full logits: HFLM's probe measures what this path allocates
            return super()._detect_batch_size(requests, pos)
        positions = self.max_length  # without requests (rolling windows): every position of the window
        if requests:  # the request HFLM sizes the probe's rows by: its continuation is what a row scores
            _, context_enc, continuation_enc = requests[pos]
            positions = min(len(continuation_enc), len((context_enc + continuation_enc)[-(self.max_length + 1):]) - 1)
        self._probe = (head, positions)
        try:
            return super()._detect_batch_size(requests, pos)
        finally:
            self._probe = None

    def _probe_pass(self, inps: torch.Tensor) -> torch.Tensor:
        """One probe pass: every row's last positions scored as :meth:`_score_batches` scores them."""
        head, positions = self._probe
        hidden = self._model_call(inps, final_hidden_states=True)
        rows = []
        for row in range(hidden.shape[0]):
            targets = torch.ones((1, positions), dtype=torch.long)  # any tokens: the memory is the same
            with torch.no_grad(), self._autocast():
                rows.append(scoring.target_logprobs(head, hidden[row, -positions:], targets, self.softmax_dtype,
                                                    self.logits_slice)[0])
        return torch.cat(rows)  # (batch, positions), on the host: HFLM log-softmaxes it, cheaply

    def _score_batches(self, requests, disable_tqdm: bool = False, override_bs=None) -> list[tuple[float, bool]]:
        """lm-eval's batched loglikelihood scoring, from sliced logits where the model allows.

        Batches are HFLM's: longest first, right-padded, the batch size fixed or detected
        (``batch_size=auto``, by :meth:`_detect_batch_size` on this path); with ``logits_cache``,
        requests sharing context + continuation minus its last token (answer choices) run as one
        row. Each row's continuation positions alone go through the output layer (or, without
        one, are cut from full logits). Answers are ``(sum of log-probs, every token the argmax)``
        per request, as HFLM's, but log-softmaxed in float32 and summed in float64 on the host
        (lmeval_ctx.scoring.logprobs).
        """
        if self.backend != "causal":  # encoder-decoder models: HFLM's own scoring
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        head = self._output_layer()
        collator = Collator(
            requests,
            sort_fn=lambda request: (-len(request[1] + request[2]), tuple(request[1] + request[2])),
            group_by="contexts" if self.logits_cache else None,
            group_fn=lambda request: request[1] + request[2][:-1],  # the tokens the model reads
        )
        auto = self.batch_size == "auto"
        batch_fn = self._batch_scheduler if auto and len(collator) > 0 and not override_bs else None
        if batch_fn is not None:
            self.batch_sizes = {}  # detect again for these requests, as HFLM does
        batch_size = (override_bs if override_bs is not None else 0) if auto else self.batch_size
        answers: list[tuple[float, bool]] = []
        progress = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0,
                        desc="Running loglikelihood requests")
        for batch in collator.get_batched(n=batch_size, batch_fn=batch_fn):
            inputs = [self._scored_input(context_enc, continuation_enc) for _, context_enc, continuation_enc in batch]
            width = max(len(tokens) for tokens in inputs)
            batched = pad_and_concat(width, [torch.tensor(tokens, dtype=torch.long, device=self.device)
                                             for tokens in inputs], padding_side="right")
            # (batch, width, hidden), or without an output layer for slices (batch, width, vocabulary)
            hidden = self._model_call(batched, final_hidden_states=head is not None)
            for row, ((request_str, context_enc, continuation_enc), tokens) in enumerate(zip(batch, inputs)):
                end = len(tokens) + hidden.shape[1] - width  # after the row's last input (and any virtual tokens)
                scored = hidden[row:row + 1, end - len(continuation_enc):end]  # (1, continuation, hidden)
                # this row's request and any sharing its input (the longest continuation is this row's)
                members = [(s, c) for s, c, _ in collator.get_cache(req_str=request_str, cxt_toks=context_enc,
                                                                     cont_toks=continuation_enc, logits=scored)]
                for answer, (member_str, _) in zip(self._continuation_scores(head, scored[0], members), members,
                                                   strict=True):
                    answers.append(answer)
                    if member_str is not None:
                        self.cache_hook.add_partial("loglikelihood", member_str, answer)
                progress.update(len(members))
        progress.close()
        return collator.get_original(answers)

    def _scored_input(self, context_enc: list[int], continuation_enc: list[int]) -> list[int]:
        """The tokens a request's row reads: all but the last, cut from the left to the window."""
        assert context_enc and continuation_enc, "lm-eval sends a non-empty context and continuation"
        tokens = context_enc + continuation_enc
        if len(tokens) > self.max_length + 1:  # only reached with truncation=True
            eval_logger.warning("truncation=True: cutting %d tokens from the left of a request of %d",
                                len(tokens) - self.max_length - 1, len(tokens))
        return tokens[-(self.max_length + 1):][:-1]

    def _continuation_scores(self, head, hidden: torch.Tensor, members) -> list[tuple[float, bool]]:
        """``(log-prob sum, all argmax)`` of each ``(request, continuation)`` member from one row's
        ``hidden`` (its full logits where ``head`` is None), by lmeval_ctx.scoring.logprobs."""
        with torch.no_grad(), self._autocast():
            return scoring.continuation_scores(head, hidden, [list(c) for _, c in members],
                                               self.softmax_dtype, self.logits_slice or scoring.DEFAULT_SLICE_POSITIONS)

    @torch.no_grad()
    def _token_logprobs(self, tokens: list[int], first: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probabilities of ``tokens[first + 1:]`` given all tokens before each (float64 on the host,
        log-softmaxed in float32 or ``softmax_dtype``), and whether each is the argmax, in one forward pass.

        The output layer runs a slice of positions at a time (full logits, sliced only for the
        log-softmax, where the model is not in lmeval_ctx.scoring.logprobs's table or logits_slice=0).
        The targets stay on the host until the first slice's logits say where they are needed.
        """
        inputs = torch.tensor([tokens[:-1]], dtype=torch.long, device=self.device)
        targets = torch.tensor([tokens[first + 1:]], dtype=torch.long)
        head = self._output_layer()
        if head is None:
            logits = self._model_call(inputs)[0, first:]  # (positions, vocabulary)
            logprobs, greedy = scoring.target_logprobs(None, logits, targets, self.softmax_dtype)
        else:
            hidden = self._model_call(inputs, final_hidden_states=True)[0, first:]  # (positions, hidden)
            with self._autocast():
                logprobs, greedy = scoring.target_logprobs(head, hidden, targets, self.softmax_dtype,
                                                           self.logits_slice)
        return logprobs[0], greedy[0]
