"""The layer-span rule (lmeval_ctx.extension.layers): a layer type whose attention never reaches beyond
the trained context is left as trained, by the RoPE a method writes and by the attention-level methods;
the resolved extension carries the attention's choice to the attention patch."""

import dataclasses

import pytest
import torch
import transformers

from lmeval_ctx.extension.layers import attention_kept_layer_types, bounded_within, layer_types_to_scale
from lmeval_ctx.extension.request import resolve_extension
from tiny_models import CONFIGS

SLIDING, FULL = "sliding_attention", "full_attention"


def shared_rope(sliding_window: int):
    """Sliding and full layers sharing one RoPE (as Gemma 2, Qwen 2 do), trained on 128 tokens: the tiny
    Mistral, an architecture the attention-level methods run on."""
    config = CONFIGS["mistral"]()
    config.layer_types, config.sliding_window = [SLIDING, FULL], sliding_window
    return config


def test_a_span_within_the_trained_length_says_so():
    config = CONFIGS["gemma3_layer_types"]()  # sliding window 32
    assert bounded_within(config, SLIDING, 128) == "sliding_window=32 <= original_max_length=128"
    assert bounded_within(config, SLIDING, 31) is None  # the window reaches past a shorter trained length
    assert bounded_within(config, FULL, 128) is None
    assert bounded_within(config, SLIDING, None) is None  # no trained length known: nothing is bounded by it


def test_the_rule_compares_each_window_with_the_original_length():
    config = CONFIGS["gemma3_layer_types"]()
    scaled, kept = layer_types_to_scale(config, 128)
    assert scaled == (FULL,) and list(kept) == [SLIDING]
    config.sliding_window = 129  # a window longer than the trained context reaches beyond it
    assert layer_types_to_scale(config, 128) == ((SLIDING, FULL), {})
    config.sliding_window = 128
    assert layer_types_to_scale(config, 128)[0] == (FULL,)
    # one RoPE shared by every layer (Llama): no per-type choice to make
    assert layer_types_to_scale(CONFIGS["llama"](), 128) == ((), {})


def test_a_layer_type_of_unknown_span_is_not_guessed():
    config = CONFIGS["gemma3_layer_types"]()
    config.layer_types = [SLIDING, "linear_attention", SLIDING, FULL]
    config.rope_parameters = {**config.rope_parameters, "linear_attention": {"rope_type": "default", "rope_theta": 1e4}}
    with pytest.raises(ValueError, match=r"layer type 'linear_attention', whose attention span is not known"):
        layer_types_to_scale(config, 128)


def test_shared_rope_scales_every_layer_while_the_attention_keeps_the_short_windows():
    """One rule, two applications: a shared rotary embedding cannot leave the sliding layers out, attention can."""
    ext = resolve_extension(shared_rope(sliding_window=32), scaling="pi", factor=2, logn=True)
    assert ext.scaled_layer_types == (SLIDING, FULL) and ext.kept_layer_types == {}
    assert ext.attention_kept_layer_types == {SLIDING: "sliding_window=32 <= original_max_length=128"}
    assert resolve_extension(shared_rope(sliding_window=256), scaling="pi", factor=2, logn=True
                             ).attention_kept_layer_types == {}
    # a method that does not change attention carries no attention choice
    assert resolve_extension(shared_rope(sliding_window=32), scaling="pi", factor=2).attention_kept_layer_types == {}
    assert attention_kept_layer_types(shared_rope(sliding_window=32), 128) == ext.attention_kept_layer_types


@pytest.mark.parametrize("kept", [{}, {"full_attention": "kept for this test"}])
def test_the_attention_patch_installs_where_the_extension_says(kept):
    """The patch reads the layer types to keep from the resolved extension; it does not work them out again."""
    from lmeval_ctx.extension.attention import patch

    config = CONFIGS["mistral"]()
    config.layer_types = [FULL, FULL]
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    ext = resolve_extension(config, scaling="rerope", window=16)
    assert ext.attention_kept_layer_types == {}  # full attention reaches everything: no layer kept by the rule
    record = patch.install(model, dataclasses.replace(ext, attention_kept_layer_types=kept))
    assert record["attention"]["layers"] == ([] if kept else [0, 1])
    assert record["attention"].get("kept_layer_types", {}) == kept
