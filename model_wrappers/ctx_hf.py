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

from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from tqdm import tqdm

from lmeval_ctx.common.args import check_dtype, parse_bool, reject_misspelt_keys
from lmeval_ctx.common.logs import plugin_logger
from lmeval_ctx.extension.lifecycle import ExtensionRequest, ExtensionState, attach, extend, reapplication_request
from lmeval_ctx.extension.request import EXTENSION_ARGS, ContextExtension
from lmeval_ctx.extension.window import lm_eval_window
from lmeval_ctx.methods.catalog import METHODS, method_help
from lmeval_ctx.scoring.hf_batches import SlicedScoring
from lmeval_ctx.scoring.key_tokens import key_token_loglikelihood
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
class CtxHFLM(SlicedScoring, HFLM):
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
        attention_engine: what runs the attention-level methods and ALiBi: ``auto`` (default:
            FlexAttention where it runs and is faster, else the block path), ``flex``, ``blocks``,
            or on ALiBi models ``transformers`` (its own attention, ``heads x length^2``); the run's
            record says which ran (lmeval_ctx/extension/flex.py). ``alibi_attention``: its old name.
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
    CONTEXT_ARGS = (*EXTENSION_ARGS, "attention_engine", "alibi_attention", "truncation")

    def __init__(self, pretrained, attention_engine: str | None = None, alibi_attention: str | None = None,
                 max_length: int | None = None, truncation: bool | str | None = False, **kwargs) -> None:
        reject_misspelt_keys(kwargs, self.CONTEXT_ARGS, where="ctx-hf model_args",
                             accepted=(*inspect.signature(HFLM.__init__).parameters, *PASSED_THROUGH_ARGS))
        truncation = False if truncation is None else parse_bool(truncation, "truncation")
        check_dtype(kwargs.get("dtype"))
        # 1. What was asked, read before anything loads: the extension's arguments leave kwargs (the
        #    rest is HFLM's). For a checkpoint, HFLM's _get_config hook writes it into the config
        #    before the model is built from it.
        self._request = ExtensionRequest.from_model_args(
            {name: kwargs.pop(name) for name in EXTENSION_ARGS if name in kwargs},
            max_length=max_length, attention_engine=attention_engine, alibi_attention=alibi_attention)
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

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        # longppl's key-token windows (LongPPL) get their key tokens' log-probs too: lmeval_ctx.scoring.key_tokens
        return key_token_loglikelihood(self, requests, super().loglikelihood, disable_tqdm)

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


if CtxHFLM.__doc__:  # (None under python -OO) the method table's names and options, never a stale copy
    CtxHFLM.__doc__ = CtxHFLM.__doc__.format(methods=method_help(), options="; ".join(
        f"{name}: {', '.join(m.options)}" for name, m in METHODS.items() if m.options))

__all__ = ["CtxHFLM"]
