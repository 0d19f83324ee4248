"""``ctx-hf``: lm-eval's HFLM with a context-extension method applied before scoring.

The method (``lmeval_ctx.methods.catalog``) is written into the config before transformers
builds the model (RoPE), or installed on the built model (ALiBi slopes on BLOOM, MPT or Falcon;
the attention-level methods' attention), by ``lmeval_ctx.extension.lifecycle``. Then lm-eval
batches and scores exactly as with ``--model hf``, except that

- a request longer than the window is an error instead of being cut from the left;
- loglikelihood requests whose tokens are a prefix of another request's tokens
  are scored from that request's forward pass (long-range perplexity at several
  lengths of one document costs one pass at the longest), unless the position
  scaling depends on the input length (dynamic NTK), in which case requests of
  different lengths are never padded into one batch either.

    lm_eval --model ctx-hf \
        --model_args pretrained=meta-llama/Llama-2-7b-hf,scaling=yarn,factor=4 \
        --tasks passkey_8k
"""

from __future__ import annotations

import inspect
import re

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import Collator
from lm_eval.models.utils_hf import pad_and_concat
from tqdm import tqdm

from lmeval_ctx.common.args import parse_bool, reject_misspelt_keys
from lmeval_ctx.common.logs import plugin_logger
from lmeval_ctx.extension.lifecycle import ExtensionRequest, ExtensionState, attach, extend, reapplication_request
from lmeval_ctx.extension.request import EXTENSION_ARGS, ContextExtension
from lmeval_ctx.extension.window import lm_eval_window
from lmeval_ctx.methods.catalog import METHODS, method_help
from lmeval_ctx.scoring import logprobs as scoring
from lmeval_ctx.scoring.prefix_sharing import plan_shared_prefixes
from lmeval_ctx.scoring.response_cache import install as install_response_cache_keys
from lmeval_ctx.scoring.response_cache import settings_digest

eval_logger = plugin_logger(__name__)  # under lm-eval's logger: the settings line reaches the console
install_response_cache_keys()


# Names close to ctx-hf's own that are lm-eval's or transformers' (HFLM hands what it does not take to
# from_pretrained), never reported as misspellings of ours; config fields among them are refused as such.
PASSED_THROUGH_ARGS = ("layer_types", "rope_scaling", "rope_parameters", "sliding_window",
                       "attn_implementation", "device_map", "low_cpu_mem_usage", "quantization_config",
                       "torch_dtype", "cache_dir", "local_files_only", "token", "variant", "use_safetensors")
# transformers' words for a keyword argument the model's constructor does not take
UNEXPECTED_KEYWORD = re.compile(r"unexpected keyword argument '(\w+)'")


@register_model("ctx-hf")
class CtxHFLM(HFLM):
    """HFLM plus a context-extension method and its settings.

    Args (beyond HFLM's):
        scaling: the method: {methods}.
        factor: L'/L >= 1. Omitted with a method: ``max_length / original_max_length``
            (dynamic NTK-ALiBi takes none: its scale is each input's length over the trained one).
        original_max_length: the trained context; read from the config when it has one.
        the methods' own options: {options}.
        rope_theta: a RoPE base override, applied before any method (also with scaling=none).
        logn: true scales queries beyond the trained length by log_L(position) (any RoPE method).
        replace_rope_scaling: allow replacing a RoPE scaling the checkpoint already ships
            (true/false/yes/no/1/0).
        scale_layer_types: on models with per-layer-type RoPE (Gemma 2/3 style ``layer_types``),
            the layer types the method scales: ``all`` or types joined by ``+`` (e.g.
            ``full_attention``). By default the types whose attention reaches beyond the trained
            context (``lmeval_ctx.extension.layers``); the others keep their RoPE.
        alibi_attention: ALiBi models' attention: ``auto`` (default; a block of queries at a
            time, in memory linear in the length, or flash-attn's ALiBi kernel on CUDA when
            installed), ``blocked``, or ``transformers`` (its own, ``heads x length^2``).
            See docs/alibi_attention.md.
        max_length (HFLM's): the window; defaults to ``original_max_length * factor`` with a method
            (``lmeval_ctx.extension.window``).
        truncation (HFLM's): true lets lm-eval cut over-long requests from the left; by
            default such a request is an error.

    Methods and options come from ``lmeval_ctx.methods.catalog`` (docs/methods.md). A key close to
    one of these names but not HFLM's or transformers' own (``factr``) is an error naming the intended
    key; a key that neither HFLM nor transformers' ``from_pretrained`` takes is an error naming it.
    """

    # ctx-hf's own arguments, beyond those HFLM takes: the context extension's (resolve_extension's
    # keywords and the methods' options, lmeval_ctx.extension.request.EXTENSION_ARGS) and these
    CONTEXT_ARGS = (*EXTENSION_ARGS, "alibi_attention", "truncation")

    def __init__(self, pretrained, alibi_attention: str | None = None, max_length: int | None = None,
                 truncation: bool | str | None = False, **kwargs) -> None:
        reject_misspelt_keys(kwargs, self.CONTEXT_ARGS, where="ctx-hf model_args",
                             accepted=(*inspect.signature(HFLM.__init__).parameters, *PASSED_THROUGH_ARGS))
        truncation = False if truncation is None else parse_bool(truncation, "truncation")
        # 1. What was asked, read before anything loads: the extension's arguments leave kwargs (the
        #    rest is HFLM's). For a checkpoint, HFLM's _get_config hook writes it into the config
        #    before the model is built from it.
        self._request = ExtensionRequest.from_model_args(
            {name: kwargs.pop(name) for name in EXTENSION_ARGS if name in kwargs},
            max_length=max_length, alibi_attention=alibi_attention)
        self._extension: ExtensionState | None = None  # what runs: written by _get_config, attached below
        super().__init__(pretrained=pretrained, max_length=max_length, truncation=truncation, **kwargs)
        # 2. The built model: the tokenizer's own limit kept (the window may raise it), then the
        #    extension finished on the model, or (an already built model: HFLM read no config) resolved now.
        self._tokenizer_max_length = self.tokenizer.model_max_length
        if self._extension is not None:
            self._extension = attach(self._extension, self._model, default_window=self._lm_eval_window)
        else:
            self._extension = extend(self._model.config, self._request.arguments, model=self._model,
                                     default_window=self._lm_eval_window, alibi_options=self._request.alibi_options)
        self._shard_across_cpu_processes()
        self._use_extension_window()

    def _shard_across_cpu_processes(self) -> None:
        """Data parallelism for ``accelerate launch --cpu`` (gloo).

        HFLM shards documents across processes only when it counts several GPUs; on
        CPU every process would evaluate every document and write the same results.
        Give each process its rank, as HFLM does on GPUs.
        """
        accelerator = getattr(self, "accelerator", None)
        if accelerator is None or accelerator.num_processes <= 1 or self._world_size > 1:
            return
        if accelerator.device.type != "cpu":
            return
        self._rank, self._world_size = accelerator.process_index, accelerator.num_processes
        eval_logger.info("lmeval-ctx: data parallel on CPU, process %d of %d", self._rank, self._world_size)

    def apply_extension(self, scaling: str | None = "none", **request) -> dict:
        """Apply another context-extension method to the loaded model, without reloading its weights.

        Takes ``ctx-hf``'s arguments (``scaling``, ``factor``, ``original_max_length``, YaRN's
        options, ``replace_rope_scaling``, ``scale_layer_types``, ``max_length``; the ones not
        given are those the model was created with, except the method's own: factor and the
        YaRN options). The config's own RoPE fields are restored, the new method resolved and
        written in, and the rotary modules rebuilt (RoPE) or the slopes replaced (ALiBi), by
        :func:`lmeval_ctx.extension.lifecycle.extend`. Returns the record. A bad request raises
        ValueError and leaves the model as it was.
        """
        self._extension = extend(self._model.config, reapplication_request(self._extension, scaling, request),
                                 model=self._model, previous=self._extension, default_window=self._lm_eval_window)
        self._use_extension_window()
        return self.context_extension_record

    def _lm_eval_window(self) -> int:
        """The window lm-eval uses for this model when neither max_length nor a method sets one."""
        return lm_eval_window(self._model.config, self._tokenizer_max_length)

    def _use_extension_window(self) -> None:
        """Evaluate with the extension's window, let the tokenizer know it, and log what runs.

        transformers warns that a text longer than the tokenizer's ``model_max_length`` "will
        result in indexing errors", which would read as if the method were not applied; ctx-hf
        refuses any request longer than its window itself, so the tokenizer's limit is the window
        (its own where that is longer).
        """
        self._max_length = self._extension.window
        self.tokenizer.model_max_length = max(self._tokenizer_max_length, self._max_length)
        eval_logger.info("lmeval-ctx context extension: %s", self.context_extension_record)

    # -- model construction ---------------------------------------------------------------
    def _get_config(self, pretrained, **kwargs) -> None:
        super()._get_config(pretrained, **kwargs)
        # Resolved and written before transformers builds the model from this config.
        self._extension = extend(self._config, self._request.arguments, alibi_options=self._request.alibi_options)

    def _create_model(self, *args, **kwargs) -> None:
        # Build from our edited config; for GGUF checkpoints too, where transformers
        # would otherwise re-read the unscaled config from the file.
        kwargs.setdefault("config", self._config)
        try:
            super()._create_model(*args, **kwargs)
        except TypeError as error:
            # what HFLM does not take goes to from_pretrained, which hands what it does not take to
            # the model's constructor: a TypeError there names an argument nobody takes
            passed = set(kwargs) - set(inspect.signature(HFLM._create_model).parameters) - {"config"}
            unknown = UNEXPECTED_KEYWORD.search(str(error))
            if unknown is None or unknown.group(1) not in passed:
                raise
            raise self._unknown_argument(unknown.group(1), kwargs[unknown.group(1)]) from error

    def _unknown_argument(self, key: str, value) -> ValueError:
        hf = [name for name in inspect.signature(HFLM.__init__).parameters if name not in ("self", "kwargs")]
        config_field = "" if not hasattr(self._config, key) else (
            " It is a field of the model's config, which ctx-hf builds the model from after writing the method "
            "into it: config fields cannot be set through model_args here.")
        return ValueError(
            f"Unknown ctx-hf model_args key {key!r} ({key}={value!r}): ctx-hf does not take it, nor does lm-eval's "
            f"HF model, nor transformers' from_pretrained (the model's constructor refused it).{config_field} "
            f"Remove it or fix its name. ctx-hf takes {', '.join(self.CONTEXT_ARGS)}; lm-eval's HF model takes "
            f"{', '.join(hf)}; from_pretrained takes its own (device_map, attn_implementation, ...)."
        )

    @property
    def context_extension(self) -> ContextExtension:
        """The validated extension this model runs with."""
        return self._extension.extension

    @property
    def context_extension_record(self) -> dict:
        """What runs, as recorded in lm-eval's results (``config.context_extension``) and the log."""
        return self._extension.record

    @property
    def response_cache_key(self) -> str:
        """A digest of everything that decides this model's answers, for ``--use_cache`` file names:
        the model, the context extension with its parameters and window, and HFLM's own settings
        (``lmeval_ctx.scoring.response_cache.HF_RESPONSE_SETTINGS``: truncation, dtype, generation budget, ...)."""
        from lmeval_ctx.scoring.response_cache import hf_response_settings

        return settings_digest(str(getattr(self._model.config, "_name_or_path", "")), self.context_extension_record,
                               hf_response_settings(self))

    def get_model_info(self) -> dict:
        info = super().get_model_info()
        info["context_extension"] = self.context_extension_record
        return info

    # -- no silent truncation ------------------------------------------------------------
    def _too_long(self, length: int, budget: int) -> ValueError:
        reserved = self.max_length - budget
        reserve = f" ({reserved} of them reserved for generated tokens)" if reserved > 0 else ""
        return ValueError(
            f"A request of {length} tokens does not fit the window max_length={self.max_length}{reserve}; "
            "lm-eval would cut its start. Raise max_length (with a scaling method, raise factor), "
            "shorten the task's length, or pass truncation=True to accept left truncation."
        )

    def tok_encode(self, string: str, add_special_tokens=None, left_truncate_len=None, **kwargs) -> list[int]:
        encoding = super().tok_encode(string, add_special_tokens=add_special_tokens, **kwargs)
        if left_truncate_len and len(encoding) > left_truncate_len:
            if not self.truncation:
                raise self._too_long(len(encoding), left_truncate_len)
            encoding = encoding[-left_truncate_len:]
        return encoding

    def tok_batch_encode(self, strings, padding_side="left", left_truncate_len=None, truncation=False):
        input_ids, attention_mask = super().tok_batch_encode(
            strings, padding_side=padding_side, left_truncate_len=None, truncation=truncation
        )
        if left_truncate_len and input_ids.shape[1] > left_truncate_len:
            if not self.truncation:
                raise self._too_long(int(attention_mask.sum(dim=1).max()), left_truncate_len)
            eval_logger.warning(
                "truncation=True: cutting %d tokens from the left of a batch to fit the window of %d",
                input_ids.shape[1] - left_truncate_len, left_truncate_len,
            )
            input_ids = input_ids[:, -left_truncate_len:]
            attention_mask = attention_mask[:, -left_truncate_len:]
        return input_ids, attention_mask

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None):
        if not self.truncation:
            for _, context_enc, continuation_enc in requests:
                # the last token is only a target, so max_length + 1 tokens fit
                length = len(context_enc) + len(continuation_enc)
                if length > self.max_length + 1:
                    raise self._too_long(length - 1, self.max_length)
        if self.context_extension.length_dependent:
            return self._score_lengths_apart(requests, disable_tqdm, override_bs)
        groups = plan_shared_prefixes([ctx + cont for _, ctx, cont in requests], max_tokens=self.max_length + 1)
        if not groups:
            return self._score_batches(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        shared = {index for members in groups.values() for index in members}
        rest = [i for i in range(len(requests)) if i not in shared]
        results = self._in_groups(requests, [rest] if rest else [],
                                  lambda part: self._score_batches(part, disable_tqdm, override_bs))
        for carrier, members in tqdm(groups.items(), desc="Scoring shared prefixes (one pass each)",
                                     disable=disable_tqdm or self.rank != 0):
            _, ctx, cont = requests[carrier]
            # position of the first target any member scores: no output layer before it
            first = min(len(requests[i][1]) for i in members) - 1
            logprobs, greedy = self._token_logprobs(ctx + cont, first=first)
            for i in members:
                request_str, context_enc, continuation_enc = requests[i]
                # targets of continuation tokens: positions len(context) - 1 ... len(whole) - 2
                span = slice(len(context_enc) - 1 - first, len(context_enc) + len(continuation_enc) - 1 - first)
                answer = (float(logprobs[span].sum()), bool(greedy[span].all()))
                results[i] = answer
                if request_str is not None:
                    self.cache_hook.add_partial("loglikelihood", request_str, answer)
        return results

    def generate_until(self, requests, disable_tqdm: bool = False):
        if not self.context_extension.length_dependent or self.batch_size == 1:
            return super().generate_until(requests, disable_tqdm=disable_tqdm)
        # A left-padded prompt would be scaled for the longest prompt of its batch: generate
        # each prompt length in its own batches.
        by_length: dict[int, list[int]] = {}
        for i, request in enumerate(requests):
            by_length.setdefault(len(self.tok_encode(request.args[0])), []).append(i)
        generate = super().generate_until
        return self._in_groups(requests, by_length.values(), lambda part: generate(part, disable_tqdm=disable_tqdm))

    def _score_lengths_apart(self, requests, disable_tqdm, override_bs):
        """Score each input length in its own batches: padding would change the scaling."""
        by_length: dict[int, list[int]] = {}
        for i, (_, ctx, cont) in enumerate(requests):
            by_length.setdefault(len(ctx) + len(cont), []).append(i)
        return self._in_groups(requests, by_length.values(),
                               lambda part: self._score_batches(part, disable_tqdm, override_bs))

    @staticmethod
    def _in_groups(requests, groups, run) -> list:
        """``run`` on each group of request indices in turn; the answers back in request order.

        Positions in no group are left None for the caller to fill.
        """
        results: list = [None] * len(requests)
        for indices in groups:
            for i, answer in zip(indices, run([requests[i] for i in indices]), strict=True):
                results[i] = answer
        return results

    # -- scoring: log-probabilities from the final hidden states, a slice of positions at a time ------
    # Positions per slice of output-layer logits (lmeval_ctx.scoring.logprobs). 0 scores from full logits as
    # HFLM does: batch x length x vocabulary floats at once (a switch for comparisons and benchmarks).
    logits_slice: int = scoring.DEFAULT_SLICE_POSITIONS
    _full_logits_noted = False

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
        """HFLM's forward pass; with ``final_hidden_states``, the decoder's output instead of logits."""
        if not final_hidden_states:
            return super()._model_call(inps, attn_mask=attn_mask, labels=labels)
        with torch.no_grad(), self._autocast():
            return scoring.final_hidden_states(self.model, inps)  # (batch, length, hidden)

    def _score_batches(self, requests, disable_tqdm: bool = False, override_bs=None) -> list[tuple[float, bool]]:
        """lm-eval's batched loglikelihood scoring, from sliced logits where the model allows.

        Batches are HFLM's: longest first, right-padded, the batch size fixed or detected
        (``batch_size=auto``); with ``logits_cache``, requests sharing context + continuation
        minus its last token (answer choices) run as one row. Each row's continuation
        positions alone go through the output layer (or, without one, are cut from full
        logits). Answers are ``(sum of log-probs, every token the argmax)`` per request, as
        HFLM's, but log-softmaxed in float32 and summed in float64 (lmeval_ctx.scoring.logprobs).
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
        """Log-probabilities of ``tokens[first + 1:]`` given all tokens before each (float64, log-softmaxed
        in float32 or ``softmax_dtype``), and whether each is the argmax, in one forward pass.

        The output layer runs a slice of positions at a time (full logits, sliced only for the
        log-softmax, where the model is not in lmeval_ctx.scoring.logprobs's table or logits_slice=0).
        """
        inputs = torch.tensor([tokens[:-1]], dtype=torch.long, device=self.device)
        targets = torch.tensor([tokens[first + 1:]], dtype=torch.long, device=self.device)
        head = self._output_layer()
        if head is None:
            logits = self._model_call(inputs)[0, first:]  # (positions, vocabulary)
            logprobs, greedy = scoring.target_logprobs(None, logits, targets, self.softmax_dtype)
        else:
            hidden = self._model_call(inputs, final_hidden_states=True)[0, first:]  # (positions, hidden)
            with self._autocast():
                logprobs, greedy = scoring.target_logprobs(head, hidden, targets, self.softmax_dtype,
                                                           self.logits_slice)
        return logprobs[0].cpu(), greedy[0].cpu()


if CtxHFLM.__doc__:  # (None under python -OO) the method table's names and options, never a stale copy
    CtxHFLM.__doc__ = CtxHFLM.__doc__.format(methods=method_help(), options="; ".join(
        f"{name}: {', '.join(m.options)}" for name, m in METHODS.items() if m.options))

__all__ = ["CtxHFLM"]
