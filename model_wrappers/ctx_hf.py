"""``ctx-hf``: lm-eval's HFLM with a context-extension method applied before scoring.

RoPE methods (PI, NTK-aware, dynamic NTK, YaRN) are written into the config
before transformers builds the model; ALiBi methods (interpolation, NTK-ALiBi,
dynamic NTK-ALiBi) are installed on the built BLOOM, MPT or Falcon model. Then
lm-eval batches and scores exactly as with ``--model hf``, except that

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

import copy
import logging

import torch
import torch.nn.functional as F
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from tqdm import tqdm

from lmeval_ctx.alibi_patch import AlibiScaling, has_alibi_scaling, install_alibi_scaling, slopes_in_use
from lmeval_ctx.extension import (
    ContextExtension,
    apply_to_config,
    resolve_extension,
    restore_extension_fields,
    snapshot_extension_fields,
)
from lmeval_ctx.prefix_sharing import plan_shared_prefixes
from lmeval_ctx.response_cache import install as install_response_cache_keys
from lmeval_ctx.response_cache import settings_digest
from lmeval_ctx.rotary import rebuild_rotary_embeddings

eval_logger = logging.getLogger(__name__)
install_response_cache_keys()


@register_model("ctx-hf")
class CtxHFLM(HFLM):
    """HFLM plus ``scaling``, ``factor``, ``original_max_length`` and YaRN's options.

    Args (beyond HFLM's):
        scaling: none, pi (alias linear), ntk (alias ntk_alibi on ALiBi models),
            dynamic_ntk (alias dynamic) or yarn (RoPE only).
        factor: L'/L >= 1. Omitted with a method: ``max_length / original_max_length``.
        original_max_length: the trained context; read from the config when it has one.
        beta_fast, beta_slow, attention_factor: YaRN's parameters (transformers' defaults otherwise).
        replace_rope_scaling: allow replacing a RoPE scaling the checkpoint already ships.
        max_length (HFLM's): the window; defaults to ``original_max_length * factor`` with a method.
        truncation (HFLM's): True lets lm-eval cut over-long requests from the left; by
            default such a request is an error.
    """

    def __init__(
        self,
        pretrained,
        scaling: str | None = "none",
        factor: float | None = None,
        original_max_length: int | None = None,
        beta_fast: float | None = None,
        beta_slow: float | None = None,
        attention_factor: float | None = None,
        replace_rope_scaling: bool = False,
        max_length: int | None = None,
        truncation: bool | None = False,
        **kwargs,
    ) -> None:
        self._ctx_request = dict(
            scaling=scaling,
            factor=factor,
            original_max_length=original_max_length,
            max_length=max_length,
            beta_fast=beta_fast,
            beta_slow=beta_slow,
            attention_factor=attention_factor,
            replace_rope_scaling=replace_rope_scaling,
        )
        self._ctx_created_request = dict(self._ctx_request)
        self._ctx_extension: ContextExtension | None = None
        self._ctx_applied: dict = {}
        self._ctx_shipped: dict = {}  # the config's own RoPE/length fields, for re-application
        self._ctx_user_max_length = max_length
        built = not isinstance(pretrained, str)
        if built:
            # An already built model gets its method after HFLM's set-up, like a sweep's re-application.
            resolve_extension(pretrained.config, **self._ctx_request)  # fail before any work on bad arguments
            self._ctx_shipped = snapshot_extension_fields(pretrained.config)
            self._ctx_extension = resolve_extension(pretrained.config, scaling="none", max_length=max_length,
                                                    original_max_length=original_max_length)
        super().__init__(pretrained=pretrained, max_length=max_length, truncation=truncation, **kwargs)
        self._shard_across_cpu_processes()
        if built:
            self.apply_extension(**{k: v for k, v in self._ctx_request.items() if k != "max_length"})
        else:
            self._finish_extension()

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
        options, ``replace_rope_scaling``, ``max_length``; the ones not given are those the
        model was created with, except the method's own: factor and the YaRN options). The
        config's own RoPE fields are restored, the new method resolved and written in, and
        the rotary modules rebuilt (RoPE) or the slopes replaced (ALiBi). Returns the record.
        """
        full = {**self._ctx_created_request, "factor": None, "beta_fast": None, "beta_slow": None,
                "attention_factor": None, "max_length": self._ctx_user_max_length, **request, "scaling": scaling}
        config = self._model.config
        probe = copy.deepcopy(config)  # resolve on a copy: a bad request must leave the model as it was
        restore_extension_fields(probe, self._ctx_shipped)
        extension = resolve_extension(probe, **full)
        restore_extension_fields(config, self._ctx_shipped)
        self._ctx_applied = apply_to_config(config, extension)
        if extension.family == "rope":
            rebuild_rotary_embeddings(self._model)
        self._ctx_extension, self._ctx_request = extension, full
        self._max_length = self._ctx_user_max_length
        self._finish_extension()
        return self._ctx_record

    def _finish_extension(self) -> None:
        """Set the window, install ALiBi slopes and record what runs."""
        ext = self._ctx_extension
        if ext.max_length is not None:
            self._max_length = ext.max_length
        if ext.family == "alibi" and (ext.method != "none" or has_alibi_scaling(self._model)):
            install_alibi_scaling(self._model, AlibiScaling(ext.method, ext.factor, ext.original_max_length))
            if ext.method != "none":
                self._ctx_applied["alibi_slopes"] = slopes_in_use(self._model, self.max_length)
            if ext.length_dependent:
                self._ctx_applied["alibi_slopes_note"] = "at the full window; recomputed from each input's length"
        self._ctx_record = ext.record({**self._ctx_applied, "max_length": self.max_length})
        eval_logger.info("lmeval-ctx context extension: %s", self._ctx_record)

    # -- model construction ---------------------------------------------------------------
    def _get_config(self, pretrained, **kwargs) -> None:
        super()._get_config(pretrained, **kwargs)
        self._ctx_shipped = snapshot_extension_fields(self._config)
        self._ctx_extension = resolve_extension(self._config, **self._ctx_request)
        self._ctx_applied = apply_to_config(self._config, self._ctx_extension)

    def _create_model(self, *args, **kwargs) -> None:
        # Build from our edited config; for GGUF checkpoints too, where transformers
        # would otherwise re-read the unscaled config from the file.
        kwargs.setdefault("config", self._config)
        super()._create_model(*args, **kwargs)

    @property
    def context_extension(self) -> ContextExtension:
        """The validated extension this model runs with."""
        return self._ctx_extension

    @property
    def response_cache_key(self) -> str:
        """A digest of the model and its context-extension settings, for ``--use_cache`` file names."""
        return settings_digest(str(getattr(self._model.config, "_name_or_path", "")), self._ctx_record)

    def get_model_info(self) -> dict:
        info = super().get_model_info()
        info["context_extension"] = self._ctx_record
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
        if self._ctx_extension.length_dependent:
            return self._score_lengths_apart(requests, disable_tqdm, override_bs)
        groups = plan_shared_prefixes([ctx + cont for _, ctx, cont in requests], max_tokens=self.max_length + 1)
        if not groups:
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        shared = {index for members in groups.values() for index in members}
        rest = [i for i in range(len(requests)) if i not in shared]
        score = super()._loglikelihood_tokens
        results = self._in_groups(requests, [rest] if rest else [],
                                  lambda part: score(part, disable_tqdm=disable_tqdm, override_bs=override_bs))
        for carrier, members in tqdm(groups.items(), desc="Scoring shared prefixes (one pass each)",
                                     disable=disable_tqdm or self.rank != 0):
            _, ctx, cont = requests[carrier]
            logprobs, greedy = self._token_logprobs(ctx + cont)
            for i in members:
                request_str, context_enc, continuation_enc = requests[i]
                # targets of continuation tokens: positions len(context) - 1 ... len(whole) - 2
                span = slice(len(context_enc) - 1, len(context_enc) + len(continuation_enc) - 1)
                answer = (float(logprobs[span].sum()), bool(greedy[span].all()))
                results[i] = answer
                if request_str is not None:
                    self.cache_hook.add_partial("loglikelihood", request_str, answer)
        return results

    def generate_until(self, requests, disable_tqdm: bool = False):
        if not self._ctx_extension.length_dependent or self.batch_size == 1:
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
        score = super()._loglikelihood_tokens
        return self._in_groups(requests, by_length.values(),
                               lambda part: score(part, disable_tqdm=disable_tqdm, override_bs=override_bs))

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

    @torch.no_grad()
    def _token_logprobs(self, tokens: list[int], chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probability of each token after the first, and whether it is the argmax, in one pass.

        Computed as HFLM does (log-softmax in ``softmax_dtype``), a slice of positions
        at a time so no second vocabulary-sized copy of the logits is held.
        """
        inputs = torch.tensor([tokens[:-1]], dtype=torch.long, device=self.device)
        targets = torch.tensor(tokens[1:], dtype=torch.long, device=self.device)
        logits = self._model_call(inputs)[0]
        logprobs, greedy = [], []
        for start in range(0, logits.shape[0], chunk):
            part = F.log_softmax(logits[start:start + chunk], dim=-1, dtype=self.softmax_dtype)
            target = targets[start:start + chunk]
            logprobs.append(part.gather(-1, target[:, None])[:, 0])
            greedy.append(part.argmax(dim=-1) == target)
        return torch.cat(logprobs).cpu(), torch.cat(greedy).cpu()


__all__ = ["CtxHFLM"]
