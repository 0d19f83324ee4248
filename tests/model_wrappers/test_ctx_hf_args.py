"""ctx-hf's own arguments as they arrive from --model_args: booleans spelled out, misspellings
named, and HFLM's and transformers' own arguments passed through."""

import pytest
import torch
import transformers

from lmeval_ctx.model_wrappers.ctx_hf import CtxHFLM

LINEAR = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}


@pytest.fixture(scope="module")
def shipping_linear(tiny_model_dir):
    """The tiny Llama as a checkpoint that ships a linear RoPE scaling."""
    def model():
        built = transformers.AutoModelForCausalLM.from_pretrained(str(tiny_model_dir("llama")), dtype=torch.float32)
        built.config.rope_parameters = dict(LINEAR)
        return built
    return model


@pytest.mark.parametrize("spelling", ["no", "false", "0", "False"])
def test_replace_rope_scaling_spelled_false_keeps_the_shipped_scaling(shipping_linear, spelling):
    with pytest.raises(ValueError, match="already ships a RoPE scaling"):
        CtxHFLM(pretrained=shipping_linear(), device="cpu", scaling="yarn", factor=2, replace_rope_scaling=spelling)


@pytest.mark.parametrize("spelling", ["yes", "true", "1"])
def test_replace_rope_scaling_spelled_true_replaces_it(shipping_linear, spelling):
    lm = CtxHFLM(pretrained=shipping_linear(), device="cpu", scaling="yarn", factor=2, replace_rope_scaling=spelling)
    assert lm.model.config.rope_parameters["rope_type"] == "yarn"
    assert lm.context_extension_record["replaced_rope_parameters"] == LINEAR


@pytest.mark.parametrize("spelling, value", [("no", False), ("false", False), ("0", False), ("yes", True),
                                             ("True", True), (True, True)])
def test_truncation_spellings(tiny_model_dir, spelling, value):
    lm = CtxHFLM(pretrained=str(tiny_model_dir("llama")), device="cpu", truncation=spelling)
    assert lm.truncation is value


@pytest.mark.parametrize("args, message", [
    (dict(truncation="maybe"), r"truncation='maybe' is not a boolean"),
    (dict(replace_rope_scaling="sure"), r"replace_rope_scaling='sure' is not a boolean"),
    (dict(scalng="pi"), r"key 'scalng': did you mean 'scaling'"),
    (dict(scaling="pi", factr=2), r"key 'factr': did you mean 'factor'"),
    (dict(scale_layer_type="all"), r"key 'scale_layer_type': did you mean 'scale_layer_types'"),
    (dict(orig_max_length=64), r"key 'orig_max_length': did you mean 'original_max_length'"),
    (dict(truncate=True), r"key 'truncate': did you mean 'truncation'"),
    (dict(dtype="float33"), r"dtype='float33' is not a floating-point torch dtype: use dtype=auto"),
    (dict(dtype="int8"), r"dtype='int8' is not a floating-point torch dtype"),
])
def test_bad_flags_and_misspelt_keys_are_errors_naming_them(tiny_model_dir, args, message):
    with pytest.raises(ValueError, match=message):
        CtxHFLM(pretrained=str(tiny_model_dir("llama")), device="cpu", **args)


def test_hflm_and_transformers_arguments_pass(tiny_model_dir):
    lm = CtxHFLM(pretrained=str(tiny_model_dir("llama")), device="cpu", dtype="float32", max_batch_size=4,
                 revision="main", trust_remote_code=False, parallelize=False, attn_implementation="eager",
                 scaling="pi", factor=2)
    assert lm.max_batch_size == 4 and lm.context_extension.method == "pi"
    assert lm.model.config._attn_implementation == "eager"


def test_an_argument_nobody_takes_is_named_with_what_is_accepted(tiny_model_dir):
    """A key close to none of ctx-hf's goes on to HFLM and transformers' from_pretrained; where the model's
    constructor refuses it, the error names it and lists what is accepted (not a bare TypeError)."""
    folder = str(tiny_model_dir("llama"))
    with pytest.raises(ValueError, match=r"Unknown ctx-hf model_args key 'bogus_key' \(bogus_key=1\).*"
                                         r"ctx-hf takes scaling, factor, .*lm-eval's HF model takes .*max_length"):
        CtxHFLM(pretrained=folder, device="cpu", bogus_key=1)
    with pytest.raises(ValueError, match=r"'rope_scaling'.* It is a field of the model's config"):
        CtxHFLM(pretrained=folder, device="cpu", rope_scaling={"rope_type": "linear", "factor": 2.0})
    # transformers' own from_pretrained arguments pass as before
    lm = CtxHFLM(pretrained=folder, device="cpu", low_cpu_mem_usage=True, local_files_only=True, use_safetensors=True)
    assert lm.context_extension.method == "none"
