"""Find and rebuild a loaded model's rotary embeddings after its RoPE config changed.

transformers computes the rotary frequencies when the model is built, from
``config.rope_parameters``. To apply another method to a loaded model (a sweep
over methods loads the weights once) the config is edited in place and every
rotary module is rebuilt from it: the same thing transformers would build from
that config, with no reload of the weights.

Which modules are rotary embeddings is decided by :func:`is_rotary_embedding`,
from what transformers' rotary modules hold (not from class names):

- ``config``: the config they were built from, read again when rebuilt;
- ``rope_type``: the RoPE type (a string), or for per-layer-type models (Gemma 3)
  a dict ``{layer_type: rope_type}``;
- one inverse-frequency buffer per RoPE: ``inv_freq``, or ``{layer_type}_inv_freq``
  for each layer type of a per-layer-type model.

A module is rebuilt by calling its class with that config, the way the model's
own ``__init__`` builds it, so every buffer and attention scaling it derives
(per-type buffers included) comes from the edited config.
"""

from __future__ import annotations

import torch


def inverse_frequency_buffers(module: torch.nn.Module) -> list[str] | None:
    """Names of the inverse-frequency buffers a rotary module keeps, or None if it is not one."""
    if getattr(module, "config", None) is None:
        return None
    rope_type = getattr(module, "rope_type", None)
    if isinstance(rope_type, str):
        names = ["inv_freq"]
    elif isinstance(rope_type, dict) and rope_type:
        names = [f"{layer_type}_inv_freq" for layer_type in rope_type]
    else:
        return None
    buffers = dict(module.named_buffers(recurse=False))
    return names if all(isinstance(buffers.get(name), torch.Tensor) for name in names) else None


def is_rotary_embedding(module: torch.nn.Module) -> bool:
    """True for a transformers rotary embedding module (see the module docstring for the rule)."""
    return inverse_frequency_buffers(module) is not None


def rotary_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """``(qualified name, module)`` of the model's rotary embedding modules."""
    return [(name, module) for name, module in model.named_modules() if is_rotary_embedding(module)]


def rebuild_rotary_embeddings(model: torch.nn.Module) -> int:
    """Replace each rotary module by a fresh one built from its (edited) config; return how many."""
    modules = rotary_modules(model)
    if not modules:
        raise ValueError(
            f"{type(model).__name__} has no rotary embedding module (a module with a config, a rope_type and "
            "inv_freq buffers) to rebuild; its RoPE cannot be changed after loading. Load it with the method instead."
        )
    for name, module in modules:
        device = getattr(module, inverse_frequency_buffers(module)[0]).device
        rebuilt = type(module)(config=module.config).to(device)
        parent_name, _, attribute = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attribute, rebuilt)
    return len(modules)
