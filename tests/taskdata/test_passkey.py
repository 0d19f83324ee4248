"""Passkey prompt construction: exact token budgets, depth, determinism, answer parsing."""

import pytest

from lmeval_ctx.taskdata.passkey import (
    NEEDLE,
    build_sample,
    count_tokens,
    fill_tolerance,
    generate_samples,
    parse_answer,
)
from lmeval_ctx.common.checkpoint import load_tokenizer
from tiny_models import char_tokenizer


@pytest.mark.parametrize("length", [1024, 2048, 3000, 8192])
def test_prompts_fit_and_fill_the_length_in_the_models_tokens(smollm2_tokenizer, length):
    sample = build_sample(smollm2_tokenizer, length, 0.5, "71432", 8)
    tokens = count_tokens(smollm2_tokenizer, sample.input)
    assert tokens == sample.prompt_tokens
    assert tokens + 8 <= length
    assert tokens + 8 >= length - fill_tolerance(length)


@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 1.0])
def test_needle_sits_at_the_depth(depth):
    sample = build_sample(char_tokenizer(), 2000, depth, "12345", 8)
    filler = sample.input.split("\n")
    needle_line = filler.index(NEEDLE.format(key="12345"))
    before = sample.input.split(NEEDLE.format(key="12345"))[0].count(".") - 3  # the description has 3 sentences
    assert before == round(depth * sample.filler_sentences)
    assert needle_line in (1, 2)
    assert sample.input.endswith("What is the pass key? The pass key is")


def test_same_seed_same_prompts_other_seed_other_keys():
    tok = char_tokenizer()
    a = generate_samples(tok, [600], num_samples=4, seed=7, gen_tokens=8)
    b = generate_samples(tok, [600], num_samples=4, seed=7, gen_tokens=8)
    c = generate_samples(tok, [600], num_samples=4, seed=8, gen_tokens=8)
    assert [s.input for s in a] == [s.input for s in b]
    assert [s.key for s in a] != [s.key for s in c]
    assert all(len(s.key) == 5 for s in a)


@pytest.mark.parametrize("text, key", [(" 71432.", "71432"), ("71432", "71432"), ("The pass key is 71432", "71432"),
                                       (" no number at all", None), ("", None)])
def test_answer_is_the_first_integer(text, key):
    assert parse_answer(text) == key


def test_bad_lengths_and_depths_are_errors():
    tok = char_tokenizer()
    with pytest.raises(ValueError, match="too short for a passkey prompt"):
        build_sample(tok, 100, 0.5, "12345", 8)
    with pytest.raises(ValueError, match="positive whole numbers"):
        generate_samples(tok, [-5], gen_tokens=8)
    with pytest.raises(ValueError, match="positive whole numbers"):
        generate_samples(tok, [1.5], gen_tokens=8)
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        generate_samples(tok, [600], depths=[1.2], gen_tokens=8)
    with pytest.raises(ValueError, match="positive number of depths"):
        generate_samples(tok, [600], depths=0, gen_tokens=8)
    with pytest.raises(ValueError, match="repeats"):
        generate_samples(tok, [600, 600], gen_tokens=8)


def test_a_depth_count_spreads_depths_evenly_and_lengths_alternate():
    tok = char_tokenizer()
    samples = generate_samples(tok, [600, 900], num_samples=4, depths=3, gen_tokens=8)
    assert [(s.length, s.depth) for s in samples] == [
        (600, 0.0), (900, 0.0), (600, 0.5), (900, 0.5), (600, 1.0), (900, 1.0), (600, 0.0), (900, 0.0)]
    # one key stream per length: adding a length leaves the other length's prompts as they were
    alone = generate_samples(tok, [900], num_samples=4, depths=3, gen_tokens=8)
    assert [s.input for s in samples if s.length == 900] == [s.input for s in alone]


def test_missing_tokenizer_says_how_to_pass_one():
    with pytest.raises(ValueError, match="pretrained=<model>"):
        load_tokenizer({})
    with pytest.raises(ValueError, match="Could not load the tokenizer of '/nonexistent/model'"):
        load_tokenizer({"pretrained": "/nonexistent/model"})
