"""A request longer than the window is an error, unless truncation=True."""

from contextlib import contextmanager

import pytest
import torch
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


@contextmanager
def model_inputs(lm):
    """The token ids of every forward pass of ``lm``'s model, as its embedding layer receives them."""
    seen = []
    hook = lm.model.get_input_embeddings().register_forward_pre_hook(lambda _, args: seen.append(args[0].tolist()))
    try:
        yield seen
    finally:
        hook.remove()


# printable characters without spaces, all different within 94: where a cut falls shows in the tokens
DISTINCT = "".join(chr(33 + i % 94) for i in range(200))


@pytest.fixture(scope="module")
def truncating(tiny_model_dir):
    return CtxHFLM(pretrained=str(tiny_model_dir("llama")), device="cpu", dtype="float32", max_length=64,
                   truncation=True)


def test_truncation_true_keeps_the_end_of_a_generation_prompt(truncating):
    prompt = DISTINCT[:70]  # 70 tokens; the window of 64 leaves 60 beside 4 generated tokens
    with model_inputs(truncating) as seen:
        (out,) = truncating.generate_until([generate_request(prompt, max_gen_toks=4)])
    assert isinstance(out, str)
    assert seen[0] == [truncating.tok_encode(prompt[-60:])]  # the prompt's last 60 characters, nothing else
    assert len(seen) == 4 and all(len(step[0]) == 1 for step in seen[1:])  # then one token per step


def test_truncation_true_keeps_the_end_of_a_loglikelihood_request(truncating):
    context, continuation = DISTINCT[:80], "bc"
    with model_inputs(truncating) as seen:
        ((logprob, _),) = truncating.loglikelihood([loglikelihood_request(context, continuation)])
    whole = truncating.tok_encode(context + continuation)
    kept = whole[-65:-1]  # 64 tokens read; the last token is only a target
    assert seen == [[kept]]
    # the score is that of the continuation after exactly those tokens
    with torch.no_grad():
        logits = truncating.model(torch.tensor([kept])).logits[0].double().log_softmax(-1)
    targets = whole[-2:]
    expected = float(logits[-2, targets[0]] + logits[-1, targets[1]])
    assert logprob == pytest.approx(expected, abs=1e-4)


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


def test_a_scaled_window_past_the_tokenizers_limit_raises_no_indexing_warning(tiny_model_dir, tmp_path):
    """With a method the window (512) is past the tokenizer's model_max_length (128, the trained length):
    transformers' "will result in indexing errors" warning would read as if the scaling were not applied.
    The tokenizer's limit follows the window; past the window ctx-hf refuses a request itself."""
    import logging
    import shutil

    import transformers

    folder = shutil.copytree(tiny_model_dir("llama"), tmp_path / "llama")
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    tokenizer.model_max_length = 128
    tokenizer.save_pretrained(folder)
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger("transformers").addHandler(handler)
    try:
        lm = CtxHFLM(pretrained=str(folder), device="cpu", dtype="float32", scaling="pi", factor=4)
        (score,) = lm.loglikelihood([loglikelihood_request("a" * 300, "bc")])
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    assert lm.max_length == 512 and lm.tokenizer.model_max_length == 512 and score[0] < 0
    assert not [message for message in messages if "Token indices sequence length" in message]
    with pytest.raises(ValueError, match=r"does not fit the window max_length=512"):
        lm.loglikelihood([loglikelihood_request("a" * 600, "bc")])
