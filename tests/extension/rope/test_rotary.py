"""Finding and rebuilding rotary modules by what they hold (lmeval_ctx.extension.rope.rotary), on every RoPE architecture."""

import copy

import pytest
import torch
import transformers

from lmeval_ctx.extension.request import apply_to_config, resolve_extension
from lmeval_ctx.extension.rope.rotary import inverse_frequency_buffers, rebuild_rotary_embeddings, rotary_modules
from tiny_models import CONFIGS

ROPE_ARCHS = ["llama", "qwen2", "gpt_neox", "phi3", "gemma3_layer_types"]


def build(config):
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)


@pytest.mark.parametrize("arch", ROPE_ARCHS)
def test_the_rule_finds_the_one_rotary_module_and_its_buffers(arch):
    model = build(CONFIGS[arch]())
    ((name, module),) = rotary_modules(model)
    assert name.endswith("rotary_emb")
    expected = (["sliding_attention_inv_freq", "full_attention_inv_freq"] if arch == "gemma3_layer_types"
                else ["inv_freq"])
    assert sorted(inverse_frequency_buffers(module)) == sorted(expected)


@pytest.mark.parametrize("arch", ROPE_ARCHS)
def test_a_rebuilt_rotary_module_is_what_transformers_builds_from_the_edited_config(arch):
    model = build(CONFIGS[arch]())
    config = model.config
    apply_to_config(config, resolve_extension(config, scaling="yarn", factor=4, scale_layer_types="all"
                                              if arch == "gemma3_layer_types" else None))
    assert rebuild_rotary_embeddings(model) == 1
    ((_, rebuilt),) = rotary_modules(model)
    ((_, reference),) = rotary_modules(build(copy.deepcopy(config)))
    rebuilt_buffers, reference_buffers = dict(rebuilt.named_buffers()), dict(reference.named_buffers())
    assert rebuilt_buffers.keys() == reference_buffers.keys()
    for key, value in reference_buffers.items():
        assert torch.equal(rebuilt_buffers[key], value), key
    for name in inverse_frequency_buffers(reference):
        scaling = name.replace("inv_freq", "attention_scaling")
        assert getattr(rebuilt, scaling) == getattr(reference, scaling) != 1.0  # YaRN's attention factor


def test_a_model_without_rotary_modules_is_a_clear_error():
    with pytest.raises(ValueError, match="has no rotary embedding module"):
        rebuild_rotary_embeddings(build(CONFIGS["gpt2"]()))
