"""Per-layer-type RoPE (Gemma 3 style): a method scales only the layer types whose attention reaches
beyond the trained context; the others keep their trained RoPE, bit for bit."""

import logging

import pytest
import torch
import transformers
from transformers.models.gemma4.modeling_gemma4 import Gemma4TextRotaryEmbedding

from lmeval_ctx.extension.request import resolve_extension
from lmeval_ctx.extension.rope.config import scaled_rope_parameters
from lmeval_ctx.model_wrappers.ctx_hf import CtxHFLM
from tiny_models import CONFIGS

ARCH = "gemma3_layer_types"  # sliding window 32, trained length 128, bases 1e4 (sliding) and 1e6 (full)
IDS = torch.randint(4, 100, (2, 300), generator=torch.Generator().manual_seed(5))
SLIDING, FULL = "sliding_attention", "full_attention"
BASES = {SLIDING: 10_000.0, FULL: 1_000_000.0}


def ctx_hf(folder, **args) -> CtxHFLM:
    return CtxHFLM(pretrained=str(folder), device="cpu", dtype="float32", max_length=512, **args)


def by_hand(folder, rope_parameters: dict):
    """The tiny model loaded with ``rope_parameters`` written into its config by hand."""
    config = transformers.AutoConfig.from_pretrained(folder)
    config.rope_parameters = rope_parameters
    return transformers.AutoModelForCausalLM.from_pretrained(folder, config=config, dtype=torch.float32)


def yarn(base: float) -> dict:
    return {"rope_type": "yarn", "rope_theta": base, "factor": 4.0, "original_max_position_embeddings": 128}


@torch.no_grad()
def logits(model) -> torch.Tensor:
    return model(IDS).logits


def buffers(model, layer_type: str) -> tuple[torch.Tensor, float]:
    rotary = model.model.rotary_emb
    return getattr(rotary, f"{layer_type}_inv_freq"), getattr(rotary, f"{layer_type}_attention_scaling")


@pytest.mark.slow
def test_only_the_full_attention_layers_are_scaled(tiny_model_dir, monkeypatch):
    from lmeval_ctx.model_wrappers import ctx_hf as wrapper

    folder = tiny_model_dir(ARCH)
    logged = logging.Handler(logging.INFO)
    logged.emit = lambda record: messages.append(record.getMessage())
    messages = []
    # setLevel, not the attribute: it clears the logger's cache of earlier isEnabledFor answers
    level = wrapper.eval_logger.level
    wrapper.eval_logger.setLevel(logging.INFO)
    wrapper.eval_logger.addHandler(logged)
    try:
        lm = ctx_hf(folder, scaling="yarn", factor=4)
    finally:
        wrapper.eval_logger.removeHandler(logged)
        wrapper.eval_logger.setLevel(level)
    (line,) = [message for message in messages if message.startswith("lmeval-ctx context extension")]
    assert "'scaled_layer_types': ['full_attention']" in line and "'kept_layer_types': {'sliding_attention'" in line
    reference = by_hand(folder, {SLIDING: {"rope_type": "default", "rope_theta": BASES[SLIDING]}, FULL: yarn(BASES[FULL])})
    torch.testing.assert_close(logits(lm.model), logits(reference), rtol=0, atol=1e-5)

    unscaled = ctx_hf(folder).model
    sliding, sliding_scaling = buffers(lm.model, SLIDING)
    assert torch.equal(sliding, buffers(unscaled, SLIDING)[0]) and sliding_scaling == buffers(unscaled, SLIDING)[1]
    assert not torch.equal(buffers(lm.model, FULL)[0], buffers(unscaled, FULL)[0])

    record = lm.get_model_info()["context_extension"]
    assert record["scaled_layer_types"] == [FULL]
    assert list(record["kept_layer_types"]) == [SLIDING]
    assert "sliding_window=32 <= original_max_length=128" in record["kept_layer_types"][SLIDING]


@pytest.mark.slow
def test_scale_layer_types_all_scales_both(tiny_model_dir):
    folder = tiny_model_dir(ARCH)
    lm = ctx_hf(folder, scaling="yarn", factor=4, scale_layer_types="all")
    reference = by_hand(folder, {SLIDING: yarn(BASES[SLIDING]), FULL: yarn(BASES[FULL])})
    torch.testing.assert_close(logits(lm.model), logits(reference), rtol=0, atol=1e-5)
    record = lm.context_extension_record
    assert record["scaled_layer_types"] == [SLIDING, FULL] and record["kept_layer_types"] == {}
    # naming one type is the same as the rule here
    named = ctx_hf(folder, scaling="yarn", factor=4, scale_layer_types="full_attention")
    assert named.context_extension.scaled_layer_types == (FULL,)


def test_static_ntk_base_is_resolved_per_layer_type():
    config = CONFIGS[ARCH]()
    ext = resolve_extension(config, scaling="ntk", factor=4, scale_layer_types="sliding_attention+full_attention")
    params = scaled_rope_parameters(config, ext)
    d = 16  # head_dim
    for layer_type, base in BASES.items():
        assert params[layer_type]["rope_theta"] == pytest.approx(base * 4 ** (d / (d - 2)), rel=1e-12)
    # by the rule, only the full-attention base changes
    params = scaled_rope_parameters(config, resolve_extension(config, scaling="ntk", factor=4))
    assert params[SLIDING] == {"rope_type": "default", "rope_theta": BASES[SLIDING]}
    assert params[FULL]["rope_theta"] == pytest.approx(BASES[FULL] * 4 ** (d / (d - 2)), rel=1e-12)


def test_rotary_dimension_is_resolved_per_layer_type():
    # Gemma 4 style: full-attention layers have a larger head dimension (32) than sliding ones (16)
    config = transformers.Gemma4TextConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, global_head_dim=32, max_position_embeddings=128, sliding_window=32, vocab_size=100,
        layer_types=[SLIDING, FULL],
        rope_parameters={t: {"rope_type": "default", "rope_theta": b} for t, b in BASES.items()})
    config.rope_parameters = scaled_rope_parameters(
        config, resolve_extension(config, scaling="ntk", factor=4, scale_layer_types="all"))
    rotary = Gemma4TextRotaryEmbedding(config)  # transformers' frequencies from the written config
    for layer_type, d in ((SLIDING, 16), (FULL, 32)):
        theta = BASES[layer_type] * 4 ** (d / (d - 2))
        expected = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
        torch.testing.assert_close(getattr(rotary, f"{layer_type}_inv_freq").double(), expected, rtol=1e-6, atol=0)
        # NTK-aware: the highest frequency kept, the lowest divided by the factor
        unscaled = BASES[layer_type] ** (-(d - 2) / d)
        assert float(expected[-1]) == pytest.approx(unscaled / 4, rel=1e-9)


def test_yarn_and_dynamic_write_each_scaled_type_with_the_original_length():
    config = CONFIGS[ARCH]()
    params = scaled_rope_parameters(config, resolve_extension(config, scaling="yarn", factor=2, scale_layer_types="all"))
    assert params == {t: {"rope_type": "yarn", "rope_theta": b, "factor": 2.0, "original_max_position_embeddings": 128}
                      for t, b in BASES.items()}
    params = scaled_rope_parameters(config, resolve_extension(config, scaling="dynamic", factor=2))
    assert params[FULL] == {"rope_type": "dynamic", "rope_theta": BASES[FULL], "factor": 2.0}
    assert params[SLIDING] == {"rope_type": "default", "rope_theta": BASES[SLIDING]}


@pytest.mark.parametrize("config_name, args, message", [
    (ARCH, dict(scale_layer_types="global"),
     r"scale_layer_types='global': 'global' is not a layer type.*sliding_attention, full_attention"),
    (ARCH, dict(scale_layer_types="full_attention+local"), r"'local' is not a layer type"),
    (ARCH, dict(scale_layer_types="all+full_attention"), r"mixes 'all' with layer types"),
    (ARCH, dict(scale_layer_types=" "), r"names no layer type"),
    ("llama", dict(scale_layer_types="full_attention"), r"shared by every layer"),
    ("bloom", dict(scale_layer_types="all", original_max_length=128), r"uses alibi positions. Remove it"),
])
def test_bad_scale_layer_types_are_clear_errors(config_name, args, message):
    with pytest.raises(ValueError, match=message):
        resolve_extension(CONFIGS[config_name](), scaling="pi", factor=2, **args)


def test_a_method_that_would_scale_no_layer_is_an_error():
    config = CONFIGS[ARCH]()
    config.layer_types = [SLIDING] * 4
    config.rope_parameters = {SLIDING: {"rope_type": "default", "rope_theta": 1e4}}
    with pytest.raises(ValueError, match=r"would change nothing.*sliding_window=32.*scale_layer_types=all"):
        resolve_extension(config, scaling="yarn", factor=2)
    assert resolve_extension(config, scaling="yarn", factor=2, scale_layer_types="all").scaled_layer_types == (SLIDING,)


def test_a_shipped_scaling_on_a_kept_layer_type_is_not_in_the_way():
    config = CONFIGS[ARCH]()
    config.rope_parameters[SLIDING] = {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}
    ext = resolve_extension(config, scaling="yarn", factor=2)  # only full_attention is written
    assert scaled_rope_parameters(config, ext)[SLIDING] == config.rope_parameters[SLIDING]
    with pytest.raises(ValueError, match=r"already ships a RoPE scaling \(sliding_attention: rope_type=linear"):
        resolve_extension(config, scaling="yarn", factor=2, scale_layer_types="all")


def test_a_kept_length_dependent_scaling_keeps_the_model_length_dependent():
    config = CONFIGS[ARCH]()
    assert not resolve_extension(config, scaling="yarn", factor=2).length_dependent
    config.rope_parameters[SLIDING] = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}
    assert resolve_extension(config, scaling="yarn", factor=2).length_dependent  # the sliding layers keep it
    assert resolve_extension(config, scaling="none").length_dependent


def test_a_base_layout_rope_type_is_not_overwritten():
    config = CONFIGS[ARCH]()
    config.rope_parameters[FULL] = {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1e6}
    with pytest.raises(ValueError, match=r"cannot be written over.*full_attention: rope_type=proportional"):
        resolve_extension(config, scaling="pi", factor=2, replace_rope_scaling=True)


def test_a_shared_rope_with_sliding_layers_is_recorded_as_scaling_them():
    # Gemma 2 keeps one RoPE for its sliding and full layers: nothing can be kept, and the record says so
    config = transformers.Gemma2Config(hidden_size=64, num_attention_heads=4, head_dim=16,
                                       max_position_embeddings=128, sliding_window=32)
    record = resolve_extension(config, scaling="pi", factor=2).record()
    assert record["scaled_layer_types"] == [SLIDING, FULL] and record["kept_layer_types"] == {}
    assert "sliding-window layers are scaled too" in record["layer_types_note"]


@pytest.mark.slow
def test_a_sweep_point_equals_a_separate_run(tiny_model_dir, tmp_path):
    import json

    import lm_eval

    from lmeval_ctx.sweep.points import sweep_points
    from lmeval_ctx.sweep.run import run_sweep

    folder = tiny_model_dir(ARCH)
    model_args = {"pretrained": str(folder), "dtype": "float32", "max_length": 512}
    metadata = {"lengths": [384], "num_docs": 1}  # past the trained 128 and the window 32
    outcomes = run_sweep(model_args, sweep_points("yarn", "4"), ["longppl"], tmp_path, device="cpu", limit=1,
                         metadata=metadata, log=lambda message: None)
    assert [o["status"] for o in outcomes] == ["done"]
    (path,) = (tmp_path / "yarn_x4").rglob("results_*.json")
    swept = json.loads(path.read_text())
    assert swept["config"]["context_extension"]["scaled_layer_types"] == [FULL]
    separate = lm_eval.simple_evaluate(model="ctx-hf", model_args={**model_args, "scaling": "yarn", "factor": 4},
                                       tasks=["longppl"], limit=1, metadata=metadata, device="cpu")
    assert separate["config"]["context_extension"] == swept["config"]["context_extension"]
    metrics = {m: v for m, v in separate["results"]["longppl"].items() if isinstance(v, float) and v == v}
    assert any(metric.startswith("token_perplexity@384") for metric in metrics)
    for metric, value in metrics.items():
        assert swept["results"]["longppl"][metric] == pytest.approx(value, rel=1e-6), metric
