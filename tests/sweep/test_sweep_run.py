"""The sweep's loop (lmeval_ctx/sweep/run.py): one source for the batch size and the device. Full runs:
tests/e2e/test_sweep.py."""

import pytest

from lmeval_ctx.sweep import run
from lmeval_ctx.sweep.run import lm_eval_default, load_model, load_settings


@pytest.mark.parametrize("model_args, flags, expected", [
    ({}, {}, (1, "cuda:0")),  # lm_eval's defaults
    ({}, {"batch_size": "4", "device": "cpu"}, (4, "cpu")),
    ({"batch_size": 2, "device": "cpu"}, {}, (2, "cpu")),
    ({"batch_size": 2, "device": "cpu"}, {"batch_size": "2", "device": "cpu"}, (2, "cpu")),  # the same twice
    ({"batch_size": "auto:4"}, {}, ("auto:4", "cuda:0")),
])
def test_the_batch_size_and_the_device_come_from_the_flags_or_the_model_args(model_args, flags, expected):
    assert load_settings({"pretrained": "m", **model_args}, **flags) == expected


def test_the_defaults_are_lm_eval_s():
    assert (lm_eval_default("batch_size"), lm_eval_default("device")) == (1, "cuda:0")


@pytest.mark.parametrize("name, given, flag", [("batch_size", 2, "4"), ("device", "cpu", "cuda:0")])
def test_differing_values_in_the_flag_and_the_model_args_are_an_error_naming_both(name, given, flag):
    with pytest.raises(ValueError) as error:
        load_settings({"pretrained": "m", name: given}, **{name: flag})
    assert str(error.value) == (f"--{name} {flag} and --model_args {name}={given} differ: give the {name} once, "
                                f"either as --{name} or in --model_args.")


@pytest.mark.parametrize("batch_size", ["abc", "0", "-1", "auto:x"])
def test_a_bad_batch_size_is_an_error_before_loading(batch_size):
    with pytest.raises(ValueError, match=rf"batch_size='{batch_size}' is not a batch size: give a whole number"):
        load_settings({"pretrained": "m"}, batch_size=batch_size)


def test_the_model_gets_the_batch_size_and_the_device_once(monkeypatch):
    built = []
    monkeypatch.setattr(run, "CtxHFLM", lambda **arguments: built.append(arguments))
    load_model({"pretrained": "m", "dtype": "float32", "batch_size": 2, "device": "cpu"}, 2, "cpu")
    assert built == [{"pretrained": "m", "dtype": "float32", "batch_size": 2, "device": "cpu"}]
