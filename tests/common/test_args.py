"""Values from --model_args and --metadata: booleans spelt as words, dtypes, and misspelt keys."""

import pytest
import torch

from lmeval_ctx.common.args import check_dtype, closest_key, parse_bool, parse_optional_bool, reject_misspelt_keys


@pytest.mark.parametrize("value", [True, 1, "true", "True", " YES ", "1"])
def test_true_spellings_are_true(value):
    assert parse_bool(value, "flag") is True


@pytest.mark.parametrize("value", [False, 0, "false", "No", "0", "no "])
def test_false_spellings_are_false(value):
    # bool("no") is True: the reason every flag goes through parse_bool
    assert parse_bool(value, "flag") is False


@pytest.mark.parametrize("value", ["maybe", "", 2, 0.5, None, "on"])
def test_anything_else_is_an_error_naming_the_argument_and_the_fix(value):
    with pytest.raises(ValueError, match=rf"truncation={value!r} is not a boolean\. Use truncation=true or "
                                         r"truncation=false \(also accepted: yes/1 and no/0\)"):
        parse_bool(value, "truncation")


def test_an_optional_flag_left_out_stays_none():
    assert parse_optional_bool(None, "add_bos_token") is None
    assert parse_optional_bool("no", "add_bos_token") is False
    with pytest.raises(ValueError, match="add_bos_token='nope'"):
        parse_optional_bool("nope", "add_bos_token")


def test_closest_key_finds_a_misspelling_and_nothing_for_a_stranger():
    known = ["scaling", "factor", "original_max_length"]
    assert closest_key("scalng", known) == "scaling"
    assert closest_key("FACTR", known) == "factor"  # compared in lower case
    assert closest_key("orig_max_length", known) == "original_max_length"
    assert closest_key("temperature", known) is None


KNOWN = ["lengths", "num_samples", "depths", "seed"]


def test_one_misspelt_key_is_named_with_its_fix():
    with pytest.raises(ValueError) as raised:
        reject_misspelt_keys({"lenghts": [1024]}, KNOWN, where="passkey --metadata")
    assert str(raised.value) == ("Unknown passkey --metadata key 'lenghts': did you mean 'lengths'? Fix the spelling "
                                 "(known keys: depths, lengths, num_samples, seed).")


def test_every_misspelt_key_is_named_in_one_message():
    given = {"lenghts": [1024], "num_sample": 2, "seed": 0, "dephts": 3}
    with pytest.raises(ValueError) as raised:
        reject_misspelt_keys(given, KNOWN, where="passkey --metadata")
    message = str(raised.value)
    assert message.startswith("Unknown passkey --metadata keys 'lenghts': did you mean 'lengths'?; "
                              "'num_sample': did you mean 'num_samples'?; 'dephts': did you mean 'depths'? "
                              "Fix the spellings")
    assert "'seed':" not in message


def test_known_accepted_and_unrelated_keys_pass():
    # accepted: another reader's keys (lm-eval's), never reported even when close to one of ours;
    # unrelated keys are left to whoever else reads the dictionary
    reject_misspelt_keys({"lengths": 1, "depth": 2, "temperature": 0.5}, KNOWN, where="passkey --metadata",
                         accepted=["depth"])


@pytest.mark.parametrize("value", [None, "auto", "float32", "bfloat16", "float16", "half", torch.bfloat16])
def test_floating_dtypes_and_auto_pass_unchanged(value):
    assert check_dtype(value) is value


@pytest.mark.parametrize("value", ["float33", "int8", "bool", "Tensor", 16])
def test_anything_else_is_not_a_dtype(value):
    with pytest.raises(ValueError, match=rf"dtype={value!r} is not a floating-point torch dtype"):
        check_dtype(value)
