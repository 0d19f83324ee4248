"""A context extension's life cycle (lmeval_ctx.extension.lifecycle): resolve, write into the config,
attach to the built model, record; re-application starts from the config's own fields."""

import copy

import pytest
import torch
import transformers

from lmeval_ctx.extension.lifecycle import (
    METHOD_ARGS,
    ExtensionRequest,
    attach,
    extend,
    full_request,
    reapplication_request,
)
from lmeval_ctx.extension.request import EXTENSION_ARGS
from lmeval_ctx.methods.catalog import METHOD_OWN_OPTIONS, MODIFIER_OPTIONS
from tiny_models import CONFIGS


@pytest.fixture
def llama():
    return CONFIGS["llama"]()  # trained length 128, rope_theta 10000


def test_extend_writes_the_method_into_the_config(llama):
    state = extend(llama, {"scaling": "pi", "factor": 2})
    assert llama.rope_parameters == {"rope_theta": 10000.0, "rope_type": "linear", "factor": 2.0}
    assert state.applied["rope_parameters"] == llama.rope_parameters
    assert state.shipped["rope_parameters"] == {"rope_theta": 10000.0, "rope_type": "default"}
    assert state.record is None  # nothing is recorded before the model is attached


def test_a_bad_request_leaves_the_config_as_it_was(llama):
    before = copy.deepcopy(llama.to_dict())
    with pytest.raises(ValueError, match="must be a finite number >= 1"):
        extend(llama, {"scaling": "yarn", "factor": 0.5})
    with pytest.raises(TypeError, match="Unknown context-extension argument"):
        extend(llama, {"scaling": "pi", "factr": 2})
    assert llama.to_dict() == before


def test_a_second_method_starts_from_the_configs_own_fields(llama):
    first = extend(llama, {"scaling": "dynamic_ntk", "factor": 4, "original_max_length": 64})
    assert llama.max_position_embeddings == 64  # dynamic NTK reads the original length there
    second = extend(llama, reapplication_request(first, "yarn", {"factor": 2}), previous=first)
    assert llama.max_position_embeddings == 128  # the config's own again
    assert llama.rope_parameters == {"rope_theta": 10000.0, "rope_type": "yarn", "factor": 2.0,
                                     "original_max_position_embeddings": 64}  # one scaling, not two stacked
    assert second.created_request == first.request


def test_reapplication_drops_the_previous_methods_own_arguments(llama):
    created = extend(llama, {"scaling": "yarn", "factor": 4, "beta_fast": 16, "rope_theta": 5e5,
                             "original_max_length": 64})
    request = reapplication_request(created, "pi", {"factor": 2})
    assert request["factor"] == 2 and request["beta_fast"] is None  # YaRN's own option is not pi's
    assert request["rope_theta"] == 5e5 and request["original_max_length"] == 64  # kept for every method
    assert set(request) == set(EXTENSION_ARGS)


def test_the_method_arguments_are_read_from_the_method_table():
    assert set(METHOD_ARGS) == {"factor", *METHOD_OWN_OPTIONS}
    assert not set(METHOD_ARGS) & MODIFIER_OPTIONS  # rope_theta and logn combine with every method


def test_full_request_names_every_argument_and_refuses_unknown_ones():
    assert full_request({"scaling": "pi"}) == {name: ("pi" if name == "scaling" else None) for name in EXTENSION_ARGS}
    with pytest.raises(TypeError, match=r"Unknown context-extension argument\(s\): scalng; known: scaling"):
        full_request({"scalng": "pi"})


@pytest.mark.parametrize("spelled, value", [("no", False), ("true", True), (None, False), (True, True)])
def test_a_request_from_model_args_parses_its_flags(spelled, value):
    request = ExtensionRequest.from_model_args({"scaling": "pi", "replace_rope_scaling": spelled}, max_length=512,
                                               alibi_attention="blocked")
    assert request.arguments["replace_rope_scaling"] is value
    assert request.arguments["scaling"] == "pi" and request.arguments["max_length"] == 512
    # the deprecated alias maps to attention_engine's name
    assert request.alibi_options == {"attention": "blocks"}
    assert ExtensionRequest.from_model_args({}, attention_engine="flex").alibi_options == {"attention": "flex"}
    assert ExtensionRequest.from_model_args({}).arguments["scaling"] == "none"


def test_a_misspelt_flag_fails_before_anything_loads():
    with pytest.raises(ValueError, match=r"replace_rope_scaling='sure' is not a boolean"):
        ExtensionRequest.from_model_args({"replace_rope_scaling": "sure"})


def test_alibi_options_are_checked_against_the_model(llama):
    with pytest.raises(ValueError, match=r"attention_engine='transformers' only applies to ALiBi models.*llama"):
        extend(llama, {"scaling": "pi", "factor": 2}, alibi_options={"attention": "transformers"})
    with pytest.raises(ValueError, match=r"scaling=lm_infinite masks keys.*attention_engine='transformers'"):
        extend(CONFIGS["bloom"](), {"scaling": "lm_infinite", "original_max_length": 128},
               alibi_options={"attention": "transformers"})


def model_of(config):
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(copy.deepcopy(config), dtype=torch.float32)


def test_attach_records_the_window_lm_eval_would_use_when_nothing_sets_one(llama):
    model = model_of(llama)
    state = attach(extend(model.config, {"scaling": "none"}), model, default_window=lambda: 128)
    assert state.window == 128 and state.record["max_length"] == 128
    state = extend(model.config, {"scaling": "pi", "factor": 4}, model=model, previous=state,
                   default_window=lambda: pytest.fail("the method sets the window"))
    assert state.window == 512 and state.record["max_length"] == 512 and state.record["scaling"] == "pi"


def test_extend_on_a_built_model_rebuilds_its_rotary_frequencies(llama):
    model = model_of(llama)
    before = model.model.rotary_emb.inv_freq.clone()
    extend(model.config, {"scaling": "pi", "factor": 4}, model=model, default_window=128)
    torch.testing.assert_close(model.model.rotary_emb.inv_freq, before / 4, rtol=1e-6, atol=0)
