"""Rebuild a loaded model's rotary embeddings after its RoPE config changed.

transformers computes the rotary frequencies when the model is built, from
``config.rope_parameters``. To apply another method to a loaded model (a sweep
over methods loads the weights once) the config is edited in place and every
rotary module is rebuilt from it: the same thing transformers would build from
that config, with no reload of the weights.
"""

from __future__ import annotations

import torch


def rotary_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """``(qualified name, module)`` of the model's rotary embedding modules."""
    return [(name, module) for name, module in model.named_modules()
            if type(module).__name__.endswith("RotaryEmbedding") and hasattr(module, "inv_freq")]


def rebuild_rotary_embeddings(model: torch.nn.Module) -> int:
    """Replace each rotary module by a fresh one built from its (edited) config; return how many."""
    modules = rotary_modules(model)
    if not modules:
        raise ValueError(f"{type(model).__name__} has no rotary embedding module to rebuild.")
    for name, module in modules:
        config = getattr(module, "config", None)
        if config is None:
            raise ValueError(f"{type(module).__name__} keeps no config; cannot rebuild it with new RoPE parameters.")
        rebuilt = type(module)(config=config).to(module.inv_freq.device)
        parent_name, _, attribute = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attribute, rebuilt)
    return len(modules)
