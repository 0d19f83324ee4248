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
