"""The evaluation window (lmeval_ctx.extension.window): max_length, else the method's, else lm-eval's
default; ctx-hf evaluates with it and the tasks check their lengths against the same number."""

import logging

import pytest
import transformers

from lmeval_ctx.extension.request import resolve_extension
from lmeval_ctx.extension.window import evaluation_window, lm_eval_window, model_window
from lmeval_ctx.model_wrappers.ctx_hf import CtxHFLM
from tiny_models import CONFIGS, save_tiny_model

TOKENIZER_LIMIT = 96  # a tokenizer model_max_length below the tiny models' trained 128


def test_lm_eval_window_reads_the_config_then_the_tokenizer_then_2048():
    assert lm_eval_window(CONFIGS["llama"](), 96) == 128  # max_position_embeddings comes first
    mpt = CONFIGS["mpt"]()  # no field lm-eval reads (max_seq_len is MPT's own)
    assert lm_eval_window(mpt, 96) == 96
    assert lm_eval_window(mpt, None) == 2048
    assert lm_eval_window(mpt, 1000000000000000019884624838656) == 2048  # transformers' "no limit"


def test_the_window_is_max_length_or_the_methods_before_the_default():
    llama = CONFIGS["llama"]()

    def never():
        raise AssertionError("the default is not read when the extension has a window")

    assert evaluation_window(resolve_extension(llama, scaling="yarn", factor=4), never) == 512
    assert evaluation_window(resolve_extension(llama, max_length=200), never) == 200
    assert evaluation_window(resolve_extension(llama), lambda: 128) == 128
    assert evaluation_window(resolve_extension(llama), 77) == 77


@pytest.fixture(scope="module")
def limited_mpt(tmp_path_factory):
    """The tiny MPT with a tokenizer whose model_max_length is 96: its config has no length lm-eval reads,
    so lm-eval's window for it is the tokenizer's."""
    folder = save_tiny_model("mpt", tmp_path_factory.mktemp("mpt_limited"))
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    tokenizer.model_max_length = TOKENIZER_LIMIT
    tokenizer.save_pretrained(folder)
    return folder


def test_the_task_and_the_model_agree_on_the_default_window(limited_mpt):
    from lmeval_ctx.common.checkpoint import load_tokenizer

    settings = {"pretrained": str(limited_mpt), "truncation": True}
    assert model_window(settings, load_tokenizer(settings)) == (TOKENIZER_LIMIT, "the model's config")
    lm = CtxHFLM(pretrained=str(limited_mpt), device="cpu", dtype="float32")
    assert lm.max_length == TOKENIZER_LIMIT and lm.context_extension_record["max_length"] == TOKENIZER_LIMIT
    # a method's longer window raises the tokenizer's limit; lm-eval's default stays the tokenizer's own
    lm.apply_extension("ntk", factor=4, original_max_length=128)
    assert lm.max_length == 512 and lm.tokenizer.model_max_length == 512
    lm.apply_extension("none")
    assert lm.max_length == TOKENIZER_LIMIT and lm.tokenizer.model_max_length == TOKENIZER_LIMIT


def test_model_window_names_its_source(tiny_model_dir):
    folder = str(tiny_model_dir("llama"))
    assert model_window({"max_length": "300", "pretrained": folder}) == (300, "max_length=300")
    assert model_window({"pretrained": folder, "scaling": "pi", "factor": 8}) == (
        1024, "scaling=pi with factor 8 on original_max_length=128")
    assert model_window({"pretrained": folder, "truncation": "yes"}) == (128, "the model's config")
    # neither a method nor truncation: the model may be an already scaled object; ctx-hf checks each request
    assert model_window({"pretrained": folder}) is None
    assert model_window({"scaling": "pi", "factor": 2}) is None  # no checkpoint named


def test_an_unreadable_config_leaves_the_check_to_the_model(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="lmeval_ctx.extension.window"):
        assert model_window({"pretrained": str(tmp_path / "missing"), "scaling": "pi", "factor": 2}) is None
    assert "Could not read the config of" in caplog.text and "checked by the model instead" in caplog.text


def test_the_window_and_the_task_checks_need_no_hf_model_module():
    """ctx-vllm reads the default window and the tasks check their keys, where lm-eval's HF model
    module (which needs accelerate) need not import: both work with that module unimportable."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['lm_eval.models.huggingface'] = None\n"
            "from transformers import LlamaConfig\n"
            "from lmeval_ctx.extension.window import lm_eval_window\n"
            "from lmeval_ctx.taskdata.task_classes import check_task_keys\n"
            "assert lm_eval_window(LlamaConfig(max_position_embeddings=4096)) == 4096\n"
            "from types import SimpleNamespace\n"
            "assert lm_eval_window(SimpleNamespace()) == 2048\n"
            "check_task_keys({'lengths': [1024]}, ['lengths'], task='passkey_custom')\n")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-2000:]
