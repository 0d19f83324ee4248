"""A request longer than the window is an error, unless truncation=True."""

import pytest
from lm_eval.api.instance import Instance

from lmeval_ctx.model_wrappers.ctx_hf import CtxHFLM


def generate_request(prompt: str, max_gen_toks: int = 4) -> Instance:
    return Instance("generate_until", {}, (prompt, {"until": ["\n"], "max_gen_toks": max_gen_toks,
                                                   "do_sample": False}), 0)


def loglikelihood_request(context: str, continuation: str) -> Instance:
    return Instance("loglikelihood", {}, (context, continuation), 0)


@pytest.fixture(scope="module")
def windowed(tiny_model_dir):
    return CtxHFLM(pretrained=str(tiny_model_dir("llama")), device="cpu", dtype="float32", max_length=64)


def test_generation_prompt_over_the_window_is_an_error(windowed):
    # 70 characters = 70 tokens with the character tokenizer; 64 - 4 = 60 fit
    with pytest.raises(ValueError, match=r"request of 7\d tokens does not fit the window max_length=64 "
                                         r"\(4 of them reserved for generated tokens\).*truncation=True"):
        windowed.generate_until([generate_request("x" * 70)])


def test_generation_prompt_inside_the_window_runs(windowed):
    (out,) = windowed.generate_until([generate_request("x" * 50)])
    assert isinstance(out, str)


def test_loglikelihood_over_the_window_is_an_error(windowed):
    with pytest.raises(ValueError, match=r"request of \d+ tokens does not fit the window max_length=64"):
        windowed.loglikelihood([loglikelihood_request("a" * 80, "bc")])
    (result,) = windowed.loglikelihood([loglikelihood_request("a" * 40, "bc")])
    assert result[0] < 0


def test_truncation_true_restores_lm_evals_left_truncation(tiny_model_dir):
    lm = CtxHFLM(pretrained=str(tiny_model_dir("llama")), device="cpu", dtype="float32", max_length=64,
                 truncation=True)
    (out,) = lm.generate_until([generate_request("x" * 70)])
    assert isinstance(out, str)
    (result,) = lm.loglikelihood([loglikelihood_request("a" * 80, "bc")])
    assert result[0] < 0


def test_scaled_window_admits_what_the_trained_one_refuses(tiny_model_dir):
    folder = str(tiny_model_dir("llama"))  # trained length 128
    plain = CtxHFLM(pretrained=folder, device="cpu", dtype="float32", max_length=128)
    with pytest.raises(ValueError, match="max_length=128"):
        plain.generate_until([generate_request("y" * 200)])
    scaled = CtxHFLM(pretrained=folder, device="cpu", dtype="float32", scaling="yarn", factor=2)
    assert scaled.max_length == 256
    (out,) = scaled.generate_until([generate_request("y" * 200)])
    assert isinstance(out, str)


def test_learned_positions_model_with_a_method_is_an_error(tiny_model_dir):
    with pytest.raises(ValueError, match="gpt2 model has learned absolute position embeddings"):
        CtxHFLM(pretrained=str(tiny_model_dir("gpt2")), device="cpu", scaling="pi", factor=2)
