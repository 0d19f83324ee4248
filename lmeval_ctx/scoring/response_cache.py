"""Keep lm-eval's response cache (``--use_cache``) from mixing context-extension settings.

lm-eval keys a cached response on the request alone (``hash_args(method, args)``),
not on the model's settings, so a ``pi`` run and a ``yarn`` run pointed at the
same ``--use_cache`` path would silently reuse each other's answers; so would a
``truncation=True`` run and one that must refuse an over-long request. For models
that name their settings (``ctx-hf``'s ``response_cache_key``: the context extension
with all its parameters, the window, and every HFLM setting in
:data:`HF_RESPONSE_SETTINGS`, the dtype and a sample of the weights), the cache file
gets that key in its name: each setting has its own file, other models keep
lm-eval's path unchanged.
"""

from __future__ import annotations

import functools
import hashlib
import json

from lmeval_ctx.common.logs import plugin_logger
from lmeval_ctx.common.model_args import result_args

eval_logger = plugin_logger(__name__)


# Attributes of lm-eval's HFLM (so of ctx-hf) that change the answer to one request; the
# request itself (prompt, continuation, generation kwargs) is lm-eval's own key.
HF_RESPONSE_SETTINGS = (
    "truncation",             # cut an over-long request from the left, or refuse it
    "max_length",             # the window
    "max_gen_toks",           # the generation budget when a request names none
    "add_bos_token",          # the tokens scored
    "prefix_token_id",        # the context of a request with an empty context
    "softmax_dtype",          # the log-probabilities' precision
    "mixed_precision_dtype",  # autocast around the forward pass
    "think_end_token",        # generated text is cut after it
    "backend",                # causal or seq2seq scoring
    "revision", "peft", "delta",
)
WEIGHT_SAMPLE_VALUES = 64
# ctx-hf's scoring arithmetic (lmeval_ctx.scoring.logprobs), in the key so that answers cached before
# it changed (half precision was log-softmaxed and summed in the logits' dtype until 2026-12) are not reused
SCORING_ARITHMETIC = "log-softmax float32 (or softmax_dtype), float64 sums"


def vllm_response_settings(arguments: dict) -> dict:
    """The ``ctx-vllm`` constructor arguments that may change its answers (all but resources and
    parallelism, :data:`lmeval_ctx.common.model_args.RESULT_NEUTRAL_MODEL_ARGS`), for its
    ``response_cache_key``: an argument added to lm-eval's vLLM model later is keyed too."""
    return dict(sorted(result_args(arguments).items()))


def hf_response_settings(lm) -> dict:
    """Everything of an HFLM, beside its context extension, that decides its answers.

    The model is identified by its path, its tokenizer's, its dtype and a few weights
    (the first values of the first, middle and last parameter), so two checkpoints
    behind one path (another ``gguf_file``, ``subfolder`` or adapter) never share a key.
    """
    model = lm._model
    settings = {name: getattr(lm, name, None) for name in HF_RESPONSE_SETTINGS}
    settings["dtype"] = getattr(model, "dtype", None)
    settings["tokenizer"] = getattr(getattr(lm, "tokenizer", None), "name_or_path", None)
    settings["weights"] = weight_sample_digest(model)
    settings["scoring"] = SCORING_ARITHMETIC
    return settings


def weight_sample_digest(model) -> str | None:
    """A digest of the first values of the model's first, middle and last parameter (cheap on any device)."""
    import torch

    parameters = [p for p in model.parameters() if p.device.type != "meta" and p.numel()]
    if not parameters:
        return None
    digest = hashlib.sha256()
    for index in sorted({0, len(parameters) // 2, len(parameters) - 1}):
        first_row = parameters[index].detach()
        while first_row.dim() > 1:
            first_row = first_row[0]  # a view: nothing of the size of the parameter is copied
        values = first_row[:WEIGHT_SAMPLE_VALUES].to("cpu", torch.float32)
        digest.update(str(tuple(parameters[index].shape)).encode() + values.numpy().tobytes())
    return digest.hexdigest()[:16]


def settings_digest(model_name: str, record: dict, settings: dict | None = None) -> str:
    """A short digest of a model, its recorded context-extension settings and its other
    response-changing ``settings`` (a ``response_cache_key``)."""
    identity = {"model": model_name, "extension": record}
    if settings is not None:
        identity["settings"] = settings
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:12]


def settings_cache_path(cache_db: str, lm) -> str:
    """``cache_db`` with the model's settings key before ``.db``; unchanged for other models."""
    key = getattr(lm, "response_cache_key", None)
    if not key:
        return cache_db
    stem = cache_db[:-3] if cache_db.endswith(".db") else cache_db
    return f"{stem}_ctx-{key}.db"


def install() -> None:
    """Make ``lm_eval.api.model.CachingLM`` open a per-setting file for such models (idempotent)."""
    from lm_eval.api import model as lm_model

    original = lm_model.CachingLM.__init__
    if getattr(original, "_lmeval_ctx", False):
        return

    @functools.wraps(original)
    def __init__(self, lm, cache_db: str) -> None:
        path = settings_cache_path(cache_db, lm)
        if path != cache_db:
            eval_logger.info("lmeval-ctx: responses of these context-extension settings are cached in %s", path)
        original(self, lm, path)

    __init__._lmeval_ctx = True
    lm_model.CachingLM.__init__ = __init__
