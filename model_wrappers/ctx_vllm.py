"""``ctx-vllm``: lm-eval's vLLM model with a RoPE context-extension method.

    lm_eval --model ctx-vllm \
        --model_args pretrained=meta-llama/Llama-2-7b-hf,scaling=yarn,factor=4,tensor_parallel_size=2 \
        --tasks passkey_8k

Same argument names, validation and recorded settings as ``ctx-hf`` (the same
life cycle, :func:`lmeval_ctx.extension.lifecycle.extend`, on the checkpoint's config,
:func:`lmeval_ctx.common.checkpoint.load_config`, a GGUF file's own with ``gguf_file``); the method
reaches vLLM as ``hf_overrides={"rope_parameters": ...}`` and ``max_model_len``
(:mod:`lmeval_ctx.extension.vllm`). vLLM is imported only when a model is created.
"""

from __future__ import annotations

import functools
import logging

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from lmeval_ctx.common.args import parse_bool
from lmeval_ctx.common.checkpoint import load_config
from lmeval_ctx.scoring.response_cache import install as install_response_cache_keys
from lmeval_ctx.scoring.response_cache import settings_digest, vllm_response_settings
from lmeval_ctx.extension.vllm import EXTENSION_ARGS, vllm_engine_args

eval_logger = logging.getLogger(__name__)
install_response_cache_keys()


@functools.lru_cache(maxsize=1)
def _engine_class():
    """lm-eval's VLLM class with our record, built on first use (it imports vllm)."""
    try:
        from lm_eval.models.vllm_causallms import VLLM
    except ImportError as error:
        raise ImportError(
            f"ctx-vllm needs vLLM ({error}). Install it (pip install vllm, on a machine with a supported GPU) "
            "or use --model ctx-hf."
        ) from error

    class CtxVLLMEngine(VLLM):
        context_extension_record: dict = {}
        response_settings: dict = {}

        def get_model_info(self) -> dict:
            info = super().get_model_info() if hasattr(super(), "get_model_info") else {}
            return {**info, "context_extension": self.context_extension_record}

        @property
        def response_cache_key(self) -> str:
            """The model, the context extension and every argument that may change an answer."""
            return settings_digest(self.pretrained_name, self.context_extension_record, self.response_settings)

    return CtxVLLMEngine


@register_model("ctx-vllm")
class CtxVLLM(LM):
    """Creates lm-eval's ``VLLM`` with the method translated; takes ``ctx-hf``'s extension arguments."""

    def __new__(cls, pretrained: str, max_model_len: int | None = None, max_length: int | None = None,
                hf_overrides: dict | None = None, revision: str | None = None, trust_remote_code: bool = False,
                **kwargs):
        if max_model_len is not None and max_length is not None:
            raise ValueError("Pass max_model_len or max_length, not both (they are the same window).")
        request = {key: kwargs.pop(key) for key in EXTENSION_ARGS if key in kwargs}
        trust_remote_code = parse_bool(trust_remote_code, "trust_remote_code")
        config = load_config({"pretrained": pretrained, "revision": revision, "trust_remote_code": trust_remote_code,
                              "gguf_file": kwargs.get("gguf_file"), "subfolder": kwargs.get("subfolder")})
        ext, engine = vllm_engine_args(config, max_model_len=max_model_len or max_length,
                                       hf_overrides=hf_overrides, **request)
        record = ext.record({"vllm_engine_args": engine})
        eval_logger.info("lmeval-ctx context extension (vLLM): %s", record)
        engine_class = _engine_class()
        lm = engine_class(pretrained=pretrained, revision=revision, trust_remote_code=trust_remote_code,
                          **engine, **kwargs)
        lm.context_extension_record = record
        lm.pretrained_name = pretrained
        lm.response_settings = vllm_response_settings(
            {"revision": revision, "trust_remote_code": trust_remote_code, **kwargs})
        return lm


__all__ = ["CtxVLLM"]
