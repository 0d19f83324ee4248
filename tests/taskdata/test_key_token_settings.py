"""Key-token perplexity's settings, its evaluator's window, its key-token file, and its refusals."""

import json

import pytest

from lmeval_ctx.taskdata.key_tokens import (KeyTokenSettings, _read, add_key_offsets, check_evaluator,
                                            key_token_settings)
from tiny_models import char_tokenizer


def test_defaults_are_the_papers_with_k_a_quarter_of_short_lengths():
    key = key_token_settings({"key_tokens": "true"}, stride=None)
    assert (key.alpha, key.beta, key.model, key.file) == (2.0, -2.0, None, None)
    assert key.short_context(2048) == (512, 128)
    assert key.short_context(32768) == (4096, 1024)  # the authors' 4096 and 1024
    custom = key_token_settings({"key_tokens": True, "key_window": 100, "key_stride": 7, "key_alpha": "1.5"}, None)
    assert custom.short_context(2048) == (100, 7) and custom.alpha == 1.5


def test_key_tokens_off_by_default_and_options_without_it_refused():
    assert key_token_settings({}, stride=None) is None
    with pytest.raises(ValueError, match=r"key_alpha=3.*\"key_tokens\": true"):
        key_token_settings({"key_alpha": 3}, stride=None)


@pytest.mark.parametrize("settings, message", [
    ({"key_window": 0}, r"key_window=0 must be a positive whole number"),
    ({"key_stride": 2.5}, r"key_stride=2.5 must be a positive whole number"),
    ({"key_beta": "low"}, r"key_beta='low' must be a number"),
    ({"key_tokens": "maybe"}, r"key_tokens"),
])
def test_bad_settings_name_the_key(settings, message):
    with pytest.raises(ValueError, match=message):
        key_token_settings({"key_tokens": True, **settings}, stride=None)


def test_sliding_windows_and_too_long_a_short_context_are_refused():
    with pytest.raises(ValueError, match="truncation variant only; remove stride"):
        key_token_settings({"key_tokens": True}, stride=256)
    with pytest.raises(ValueError, match="key_window=512 must be at least 1 and below the length 512"):
        KeyTokenSettings(512, None, 2.0, -2.0, None, None).short_context(512)


def test_evaluator_beyond_its_trained_window_is_refused(tiny_model_dir):
    folder = str(tiny_model_dir("llama"))  # trained to 128 tokens
    key = key_token_settings({"key_tokens": True}, stride=None)
    assert check_evaluator(key, {"pretrained": folder, "dtype": "float32"}, 128, char_tokenizer()) == \
        {"pretrained": folder}
    with pytest.raises(ValueError, match=r"length 256: the evaluator \(the evaluated checkpoint .* trained to 128 "
                                         r"tokens.*key_token_model="):
        check_evaluator(key, {"pretrained": folder, "scaling": "yarn", "factor": 2}, 256, char_tokenizer())


def test_a_capped_evaluator_context_reads_within_its_window(tiny_model_dir):
    folder = str(tiny_model_dir("llama"))  # trained to 128 tokens
    key = key_token_settings({"key_tokens": True, "key_long_window": 96}, stride=None)
    assert key.long_context() == (96, 24) and key.evaluator_reach(256) == 119 and key.evaluator_reach(64) == 64
    assert key.largest_long_window(128) == 103  # 103 + 25 - 1 = 127 tokens at once; 104 + 26 - 1 = 129
    assert check_evaluator(key, {"pretrained": folder}, 256, char_tokenizer()) == {"pretrained": folder}
    too_long = key_token_settings({"key_tokens": True, "key_long_window": 120}, stride=None)
    with pytest.raises(ValueError, match=r"key_long_window=120: .* read 149 tokens at once .* trained 128\. "
                                         r"Give key_long_window=103 or less"):
        check_evaluator(too_long, {"pretrained": folder}, 256, char_tokenizer())
    with pytest.raises(ValueError, match=r"or cap its context with key_long_window=103"):
        check_evaluator(key_token_settings({"key_tokens": True}, None), {"pretrained": folder}, 256, char_tokenizer())
    with pytest.raises(ValueError, match=r"key_window=96 must be below key_long_window=96"):
        key_token_settings({"key_tokens": True, "key_long_window": 96, "key_window": 96}, None).short_context(256)
    with pytest.raises(ValueError, match=r"key_long_window=0 must be a positive whole number"):
        key_token_settings({"key_tokens": True, "key_long_window": 0}, None)


def test_a_key_token_file_of_other_settings_is_refused(tmp_path):
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"identity": {"alpha": 2.0, "beta": -2.0}, "key_tokens": {"0:64": [40]}}))
    assert _read(path, {"alpha": 2.0, "beta": -2.0}) == {"0:64": [40]}
    with pytest.raises(ValueError, match="chosen with other alpha; name a new file"):
        _read(path, {"alpha": 1.0, "beta": -2.0})
    assert _read(tmp_path / "absent.json", {}) is None


def test_key_positions_become_offsets_into_the_scored_tokens():
    rows = [{"doc_index": 0, "length": 64, "window_tokens": 64, "scored_tokens": 62}]
    add_key_offsets(rows, {"0:64": [1, 2, 40, 63]})  # position 1 is unscored context
    assert rows[0]["key_offsets"] == [0, 38, 61]


def test_a_model_without_key_token_answers_is_refused():
    import importlib.util

    from lmeval_ctx.common.paths import tasks_path

    spec = importlib.util.spec_from_file_location("longppl_utils", tasks_path() / "longppl" / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    doc = {"scored_tokens": 10, "words": 2, "bytes": 12, "first_of_document": True}
    assert "key_tokens" not in utils.process_results(doc, [(-20.0, False)])
    with pytest.raises(ValueError, match="Run with --model ctx-hf"):
        utils.process_results({**doc, "key_offsets": [3]}, [(-20.0, False)])
    assert utils.key_token_perplexity([(-4.0, 2), (0.0, 0)]) == pytest.approx(7.389056, rel=1e-6)
    assert utils.key_token_perplexity([(0.0, 0)]) != utils.key_token_perplexity([(0.0, 0)])  # NaN
