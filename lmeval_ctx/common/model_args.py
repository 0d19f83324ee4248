"""Model arguments (``--model_args``): lm-eval's own parser, and which of them never change a result.

One decision, used by the sweep (what a resumed point must match), the report (what makes two
runs the same model) and ``ctx-vllm``'s response-cache key (what may change an answer).
"""

from __future__ import annotations

# Model arguments that place the model, size its batches or spread it over devices or processes
# without changing what it computes. Everything else a user gives (dtype, revision, tokenizer,
# max_length, the method and its options, an argument added to lm-eval later) may change a
# result and is part of a run's identity.
RESULT_NEUTRAL_MODEL_ARGS = frozenset({
    # batching (ctx-hf scores every request on its own positions whatever the batch)
    "batch_size", "max_batch_size",
    # placement: one device, or accelerate's device map over several
    "device", "parallelize", "device_map", "max_memory_per_gpu", "max_cpu_memory", "offload_folder",
    # vLLM's resources and parallelism
    "gpu_memory_utilization", "swap_space", "tensor_parallel_size", "data_parallel_size",
})


def parse_model_args(model_args: str | dict | None) -> dict:
    """``--model_args`` as lm-eval reads it (``lm_eval.utils.simple_parse_args_string``: ``true``
    becomes True, ``4`` the int 4, ``'4'`` the string), or a copy of a dict already parsed."""
    if model_args is None:
        return {}
    if isinstance(model_args, dict):
        return dict(model_args)
    if not isinstance(model_args, str):
        raise TypeError(f"model_args must be a string like 'pretrained=...,dtype=float32' or a dict; "
                        f"got {type(model_args).__name__}.")
    from lm_eval.utils import simple_parse_args_string  # here: importing lm-eval costs a third of a second

    return simple_parse_args_string(model_args)


def result_args(model_args: dict) -> dict:
    """The model arguments that may change a result (all but :data:`RESULT_NEUTRAL_MODEL_ARGS`)."""
    return {name: value for name, value in model_args.items() if name not in RESULT_NEUTRAL_MODEL_ARGS}


def neutral_args(model_args: dict) -> dict:
    """The model arguments that never change a result (placement, batching, parallelism)."""
    return {name: value for name, value in model_args.items() if name in RESULT_NEUTRAL_MODEL_ARGS}
