"""ALiBi slope methods inside vLLM: BLOOM and Falcon-ALiBi with interpolated or NTK-ALiBi slopes.

ALiBi (Press et al. 2021, "Train Short, Test Long", arXiv:2108.12409) adds ``-m_h * (i - j)`` to
head ``h``'s scores; extending the context changes the slopes ``m_h``
(:mod:`lmeval_ctx.methods.alibi`: interpolation divides them by the factor, NTK-ALiBi keeps the
steepest and divides the flattest). vLLM computes the slopes once, when it builds each attention
layer, with a module-level ``_get_alibi_slopes(total_num_heads)`` in ``vllm/model_executor/models/
bloom.py`` and ``falcon.py`` (Falcon multiplies them by ``1/sqrt(head_dim)`` afterwards, as for its
own), and hands each rank its heads' share to the attention backend. So the slopes of a method
that does not depend on the input length (``pi``, ``ntk``) can be given to vLLM exactly:

1. :func:`alibi_overrides` (in the ``ctx-vllm`` process) computes the scaled slopes of every head
   with the same functions as ``ctx-hf`` and returns ``hf_overrides``: the slopes in the config
   field :data:`SLOPES_FIELD` and ``architectures`` set to this module's model class;
2. :func:`register` (vLLM's ``vllm.general_plugins`` entry point, which vLLM calls in every
   process it starts: engine core, tensor-parallel workers; and called by ``ctx-vllm`` itself)
   registers, with vLLM's ``ModelRegistry``, one subclass of vLLM's own model per architecture;
3. that subclass builds vLLM's model with ``_get_alibi_slopes`` answering the config's slopes, and
   puts the module's function back afterwards: nothing else in vLLM changes, and a model without
   the field is vLLM's own.

MPT is not here: vLLM removed its MPT model in 0.28. ``dynamic_ntk`` (slopes that follow each
input's length) and ``lm_infinite`` (a change of the attention) cannot be written into slopes
fixed at build time and are refused.
"""

from __future__ import annotations

import contextlib
import importlib

from lmeval_ctx.common.checkpoint import text_config
from lmeval_ctx.extension.architectures import alibi_architecture
from lmeval_ctx.methods.alibi import ALIBI_METHODS

# The config field that carries the scaled slopes of every head into vLLM's processes.
SLOPES_FIELD = "lmeval_ctx_alibi_slopes"
# model_type -> (vLLM's module, its model class); the registered subclass is "LmevalCtx" + the class.
VLLM_ALIBI_MODELS = {
    "bloom": ("vllm.model_executor.models.bloom", "BloomForCausalLM"),
    "falcon": ("vllm.model_executor.models.falcon", "FalconForCausalLM"),
}
VLLM_ALIBI_METHODS = ("pi", "ntk")
_PREFIX = "LmevalCtx"


def alibi_overrides(ext, config) -> dict:
    """``hf_overrides`` that make vLLM run ``ext``'s slopes on ``config``'s ALiBi model (see the module doc).

    ``ext``: the resolved :class:`lmeval_ctx.extension.request.ContextExtension` of an ALiBi model.
    """
    cfg = text_config(config)
    if ext.model_type not in VLLM_ALIBI_MODELS:
        raise ValueError(
            f"ctx-vllm applies ALiBi methods to {', '.join(VLLM_ALIBI_MODELS)}; this model is {ext.model_type} "
            "(vLLM removed its MPT model in 0.28). Run it with --model ctx-hf.")
    if ext.method not in VLLM_ALIBI_METHODS:
        raise ValueError(
            f"scaling={ext.method} on an ALiBi model is not possible in ctx-vllm: vLLM runs its own attention and "
            f"fixes the slopes when it builds the model, so only slopes that do not depend on the input "
            f"({', '.join(VLLM_ALIBI_METHODS)}) can be given to it. Use scaling=pi or scaling=ntk, or run it with "
            "--model ctx-hf.")
    base = alibi_architecture(cfg).base_slopes(cfg)
    slopes = ALIBI_METHODS[ext.method](base, ext.factor, ext.original_max_length, ext.max_length)
    return {"architectures": [_PREFIX + VLLM_ALIBI_MODELS[ext.model_type][1]], SLOPES_FIELD: list(slopes)}


@contextlib.contextmanager
def _slopes_from(module, slopes: list[float]):
    """``module._get_alibi_slopes`` answers ``slopes`` (all heads, float32) while vLLM builds the layers."""
    import torch

    original = module._get_alibi_slopes

    def _get_alibi_slopes(total_num_heads: int) -> torch.Tensor:
        if total_num_heads != len(slopes):
            raise ValueError(f"{SLOPES_FIELD} holds {len(slopes)} slopes for a model with {total_num_heads} "
                             "heads: the overrides were computed for another config.")
        return torch.tensor(slopes, dtype=torch.float32)

    module._get_alibi_slopes = _get_alibi_slopes
    try:
        yield
    finally:
        module._get_alibi_slopes = original


def _model_class(module_name: str, class_name: str) -> type:
    """vLLM's ``class_name`` building its attention layers with the config's :data:`SLOPES_FIELD` slopes."""
    module = importlib.import_module(module_name)
    base = getattr(module, class_name)

    def __init__(self, *, vllm_config, prefix: str = ""):
        slopes = getattr(vllm_config.model_config.hf_config, SLOPES_FIELD, None)
        if slopes is None:
            raise ValueError(f"{_PREFIX}{class_name} runs a model whose config names its ALiBi slopes in "
                             f"{SLOPES_FIELD}; this config has none. Load the model through ctx-vllm.")
        with _slopes_from(module, list(slopes)):
            base.__init__(self, vllm_config=vllm_config, prefix=prefix)

    return type(_PREFIX + class_name, (base,), {"__init__": __init__, "__module__": __name__})


def register() -> None:
    """Register the ALiBi model classes with vLLM (idempotent); vLLM's ``vllm.general_plugins`` entry point."""
    from vllm import ModelRegistry

    known = set(ModelRegistry.get_supported_archs())
    for module_name, class_name in VLLM_ALIBI_MODELS.values():
        if _PREFIX + class_name not in known:
            ModelRegistry.register_model(_PREFIX + class_name, _model_class(module_name, class_name))
