"""Resolving a scaling request against a config: defaults, the double-scaling rule, errors."""

import pytest
import transformers

from lmeval_ctx.extension.request import apply_to_config, position_family, resolve_extension
from lmeval_ctx.extension.rope.config import scaled_rope_parameters


def llama(**kwargs):
    return transformers.LlamaConfig(hidden_size=64, num_attention_heads=4, max_position_embeddings=4096, **kwargs)


def test_families():
    assert position_family(llama()) == "rope"
    assert position_family(transformers.BloomConfig()) == "alibi"
    assert position_family(transformers.MptConfig()) == "alibi"
    assert position_family(transformers.FalconConfig(alibi=True)) == "alibi"
    assert position_family(transformers.FalconConfig(alibi=False)) == "rope"
    assert position_family(transformers.GPT2Config()) == "absolute"
    assert position_family(transformers.OPTConfig()) == "absolute"


def test_window_defaults_to_original_times_factor():
    ext = resolve_extension(llama(), scaling="yarn", factor=4)
    assert (ext.factor, ext.original_max_length, ext.max_length) == (4.0, 4096, 16384)


def test_factor_defaults_to_window_over_original():
    ext = resolve_extension(llama(), scaling="pi", max_length=10240)
    assert ext.factor == 2.5 and ext.max_length == 10240


def test_original_length_is_read_from_each_kind_of_config():
    assert resolve_extension(transformers.MptConfig(max_seq_len=2048), scaling="pi", factor=2).original_max_length == 2048
    assert resolve_extension(transformers.FalconConfig(alibi=True), scaling="ntk", factor=2).original_max_length == 2048
    phi3 = transformers.Phi3Config(max_position_embeddings=4096, original_max_position_embeddings=2048)
    assert resolve_extension(phi3, scaling="pi", factor=2).original_max_length == 2048
    assert resolve_extension(llama(), scaling="pi", factor=2, original_max_length=1024).max_length == 2048


@pytest.mark.parametrize("config, kwargs, message", [
    (llama(), dict(scaling="rope_magic", factor=2), r"scaling='rope_magic' is not a known.*Use one of: none, pi"),
    (llama(), dict(scaling="pi", factor=0.5), r"factor=0.5 must be a finite number >= 1"),
    (llama(), dict(scaling="pi", factor="big"), r"factor='big' is not a number"),
    (llama(), dict(scaling="ntk_alibi", factor=2), r"ntk_alibi.*this model uses RoPE.*scaling=ntk"),
    (transformers.BloomConfig(), dict(scaling="yarn", factor=2, original_max_length=2048), r"yarn.*ALiBi"),
    (transformers.BloomConfig(), dict(scaling="rerope", window=16, original_max_length=2048),
     r"scaling='rerope' changes the relative positions RoPE rotates by and has no ALiBi form.*lm_infinite"),
    (transformers.MptConfig(), dict(scaling="self_extend", group_size=4, neighbor_window=16),
     r"scaling='self_extend'.*has no ALiBi form"),
    (transformers.FalconConfig(alibi=True), dict(scaling="leaky_rerope", window=16), r"leaky_rerope.*no ALiBi form"),
    (transformers.BloomConfig(), dict(scaling="lm_infinite", original_max_length=2048, window=16),
     r"window are options for RoPE models.*scaling=lm_infinite takes global_tokens, local_window here"),
    (transformers.BloomConfig(), dict(scaling="lm_infinite", original_max_length=2048, local_window=0),
     r"local_window=0 must be a whole number >= 1"),
    (transformers.BloomConfig(), dict(scaling="lm_infinite"), r"original_max_length is required.*BLOOM"),
    (transformers.GPT2Config(), dict(scaling="pi", factor=2), r"gpt2 model has learned absolute position"),
    (transformers.OPTConfig(), dict(scaling="ntk", factor=2), r"opt model has learned absolute position"),
    (transformers.GPT2Config(n_positions=1024), dict(max_length=2048), r"max_length=2048 exceeds the 1024 learned"),
    (transformers.BloomConfig(), dict(scaling="ntk", factor=2), r"original_max_length is required.*BLOOM"),
    (llama(), dict(scaling="pi", max_length=1024), r"max_length=1024 is smaller than original_max_length=4096"),
    (llama(), dict(scaling="pi"), r"needs a scale: pass factor=.*or max_length="),
    (llama(), dict(scaling="none", factor=2), r"factor only applies together with a scaling method"),
    (llama(), dict(scaling="pi", factor=2, beta_fast=32), r"beta_fast only apply to scaling=yarn"),
    (llama(), dict(scaling="pi", factor=2, original_max_length=-3), r"original_max_length=-3 must be a positive"),
    (transformers.BloomConfig(), dict(scaling="pi", factor=2, original_max_length=2048, beta_slow=1),
     r"YaRN options for RoPE models"),
])
def test_bad_input_is_a_clear_error(config, kwargs, message):
    with pytest.raises(ValueError, match=message):
        resolve_extension(config, **kwargs)


LLAMA31 = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
           "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def test_a_shipped_rope_scaling_is_not_scaled_twice():
    config = llama(rope_parameters=dict(LLAMA31))
    config.max_position_embeddings = 131072
    with pytest.raises(ValueError, match=r"already ships a RoPE scaling \(rope_type=llama3, factor=8.0\).*twice"):
        resolve_extension(config, scaling="yarn", factor=2)
    # as shipped: allowed, nothing changes
    ext = resolve_extension(config, scaling="none")
    assert apply_to_config(config, ext)["rope_parameters"] == LLAMA31


def test_replace_rope_scaling_starts_from_the_shipped_original_length():
    config = llama(rope_parameters=dict(LLAMA31))
    config.max_position_embeddings = 131072
    ext = resolve_extension(config, scaling="yarn", factor=4, replace_rope_scaling=True)
    assert ext.original_max_length == 8192 and ext.max_length == 32768
    assert scaled_rope_parameters(config, ext) == {
        "rope_theta": 500000.0, "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8192}
    assert ext.record()["replaced_rope_parameters"] == LLAMA31


def test_dynamic_ntk_keeps_max_position_embeddings_at_the_original_length():
    config = llama()
    ext = resolve_extension(config, scaling="dynamic", factor=2, original_max_length=2048)
    apply_to_config(config, ext)
    assert config.max_position_embeddings == 2048  # transformers reads the original length there
    assert config.rope_parameters["rope_type"] == "dynamic"
    assert ext.length_dependent


def test_per_layer_type_rope_parameters_scale_the_types_reaching_beyond_the_trained_context():
    # transformers' Gemma 3 defaults: sliding window 4096, here equal to the trained length
    config = transformers.Gemma3TextConfig(hidden_size=64, num_attention_heads=4, head_dim=16,
                                           max_position_embeddings=4096)
    ext = resolve_extension(config, scaling="pi", factor=2)
    params = scaled_rope_parameters(config, ext)
    assert set(params) == set(config.rope_parameters)
    assert params["full_attention"]["rope_type"] == "linear" and params["full_attention"]["factor"] == 2.0
    assert params["sliding_attention"] == config.rope_parameters["sliding_attention"]
    assert ext.record()["scaled_layer_types"] == ["full_attention"]
    assert list(ext.record()["kept_layer_types"]) == ["sliding_attention"]


def test_mpt_max_seq_len_is_raised_to_the_window():
    config = transformers.MptConfig(max_seq_len=2048)
    applied = apply_to_config(config, resolve_extension(config, scaling="ntk", factor=4))
    assert config.max_seq_len == 8192 and applied["mpt_max_seq_len"] == {"from": 2048, "to": 8192}


@pytest.mark.parametrize("config", [transformers.BloomConfig(), transformers.MptConfig(max_seq_len=2048),
                                    transformers.FalconConfig(alibi=True)])
def test_lm_infinite_resolves_on_alibi_models(config):
    ext = resolve_extension(config, scaling="lm_infinite", original_max_length=2048, global_tokens=4)
    assert (ext.family, ext.method, ext.factor) == ("alibi", "lm_infinite", None)
    assert ext.options == {"global_tokens": 4, "local_window": 2048}  # local_window: the trained length
    assert not ext.attention_level  # runs in the ALiBi attention, not RoPE's attention patch
    assert ext.record()["alibi_positions"]["visible_keys"].startswith("the first 4 tokens and the last 2048 keys")


@pytest.mark.parametrize("config", [transformers.BloomConfig(), transformers.MptConfig(max_seq_len=2048),
                                    transformers.FalconConfig(alibi=True)])
def test_dynamic_ntk_alibi_takes_its_scale_from_the_length_not_a_factor(config):
    """Dynamic NTK-ALiBi scales each input by length / original_max_length (docs/methods.md): a factor
    would have no effect, so it is refused; the window is max_length, and the factor recorded the scale there."""
    with pytest.raises(ValueError, match=r"factor=4 has no effect with scaling=dynamic_ntk on this .* ALiBi model.*"
                                         r"a = max\(1, length / original_max_length=2048\).*pass the window instead"):
        resolve_extension(config, scaling="dynamic_ntk", factor=4, original_max_length=2048)
    ext = resolve_extension(config, scaling="dynamic", max_length=8192, original_max_length=2048)
    assert (ext.method, ext.factor, ext.max_length) == ("dynamic_ntk", 4.0, 8192)
    with pytest.raises(ValueError, match=r"needs max_length=<evaluated window>"):
        resolve_extension(config, scaling="dynamic_ntk", original_max_length=2048)
    with pytest.raises(ValueError, match=r"max_length=1024 is smaller than original_max_length=2048, so no input"):
        resolve_extension(config, scaling="dynamic_ntk", max_length=1024, original_max_length=2048)
    # RoPE's dynamic NTK reads its factor (transformers' rope_type dynamic)
    assert resolve_extension(llama(), scaling="dynamic_ntk", factor=4).factor == 4.0
