"""The tasks load the evaluated model's tokenizer from model args that arrive as strings."""

import pytest

from lmeval_ctx.common import checkpoint as tokenizers


@pytest.fixture
def load_calls(monkeypatch):
    """The arguments each load_tokenizer call hands to the (cached) loader."""
    calls = []
    monkeypatch.setattr(tokenizers, "_load", lambda *args: calls.append(args) or "tokenizer")
    return calls


@pytest.mark.parametrize("spelled, expected", [
    ("false", False), ("False", False), ("no", False), ("0", False), (False, False),
    ("true", True), ("yes", True), ("1", True), (True, True),
])
def test_trust_remote_code_means_what_it_says(load_calls, spelled, expected):
    tokenizers.load_tokenizer({"pretrained": "some/model", "trust_remote_code": spelled})
    (source, gguf_file, revision, trust_remote_code, subfolder), = load_calls
    assert trust_remote_code is expected
    assert (source, gguf_file, revision, subfolder) == ("some/model", None, "main", "")


def test_trust_remote_code_defaults_to_false(load_calls):
    tokenizers.load_tokenizer({"pretrained": "some/model"})
    assert load_calls[0][3] is False


def test_unreadable_trust_remote_code_is_an_error_naming_it(load_calls):
    with pytest.raises(ValueError, match=r"trust_remote_code='maybe' is not a boolean"):
        tokenizers.load_tokenizer({"pretrained": "some/model", "trust_remote_code": "maybe"})
    assert load_calls == []


@pytest.fixture
def config_loads(monkeypatch, tmp_path):
    """The tiny Llama's config saved alone, and the AutoConfig.from_pretrained calls made for it."""
    import transformers

    from tiny_models import CONFIGS

    CONFIGS["llama"]().save_pretrained(tmp_path)
    calls = []
    load = transformers.AutoConfig.from_pretrained
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained",
                        lambda *args, **kwargs: calls.append((args, kwargs)) or load(*args, **kwargs))
    tokenizers._load_config.cache_clear()
    yield tmp_path, calls
    tokenizers._load_config.cache_clear()


def test_a_config_is_read_once_and_each_caller_gets_its_own_copy(config_loads):
    folder, calls = config_loads
    first = tokenizers.load_config({"pretrained": str(folder), "trust_remote_code": "no"})
    first.max_position_embeddings = 1
    second = tokenizers.load_config({"pretrained": str(folder), "revision": None})
    assert second.max_position_embeddings == 128 and len(calls) == 1
    assert calls[0][1] == {"revision": "main", "trust_remote_code": False}


def test_a_gguf_file_and_subfolder_are_read_where_they_are_named(config_loads):
    folder, calls = config_loads
    with pytest.raises(ValueError, match=r"Could not read the config of .* \(gguf_file='model.gguf'\)"):
        tokenizers.load_config({"pretrained": str(folder), "gguf_file": "model.gguf", "subfolder": "q4"})
    assert calls[0][1] == {"revision": "main", "trust_remote_code": False, "gguf_file": "model.gguf", "subfolder": "q4"}
    with pytest.raises(ValueError, match=r"pretrained=None names no checkpoint"):
        tokenizers.load_config({"gguf_file": "model.gguf"})


def test_the_tasks_tokenizer_does_not_warn_of_indexing_errors(tiny_model_dir, tmp_path):
    """The task's tokenizer measures texts longer than its model_max_length on purpose (a scaled run's
    prompts); it never feeds the model, so transformers' "will result in indexing errors" is not printed."""
    import logging

    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_model_dir("llama"))
    tokenizer.model_max_length = 128
    tokenizer.save_pretrained(tmp_path)
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger("transformers").addHandler(handler)
    try:
        assert len(tokenizers.load_tokenizer({"pretrained": str(tmp_path)})("x" * 300).input_ids) == 300
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    assert not [message for message in messages if "Token indices sequence length" in message]
