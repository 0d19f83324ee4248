"""Where a scaled ALiBi model's slopes come from: the running call of
:mod:`lmeval_ctx.extension.alibi.scaling`, published for the duration of the model's forward only."""

import pytest
import torch
import transformers
from transformers.models.bloom import modeling_bloom

from lmeval_ctx.extension.alibi.install import install_alibi_scaling, slopes_in_use
from lmeval_ctx.extension.alibi.scaling import (
    AlibiScaling,
    AlibiSetting,
    active_position_method,
    active_slopes,
    attention_choice,
    running,
    running_call,
)
from lmeval_ctx.methods.alibi import alibi_slopes, dynamic_ntk_slopes

TRAINED = 128
BASE = tuple(alibi_slopes(4))


def setting(method="dynamic_ntk", attention="blocked", **options) -> AlibiSetting:
    return AlibiSetting(AlibiScaling(method, 4.0, TRAINED, options), attention, BASE)


def test_nothing_runs_outside_a_scaled_forward():
    assert running_call() is None
    assert attention_choice() == "transformers"
    assert active_position_method(torch.ones(4)) is None
    with pytest.raises(RuntimeError, match="only defined during the forward pass"):
        active_slopes()


def test_a_call_publishes_the_slopes_at_its_key_length_and_a_nested_one_restores_it():
    outer, inner = setting(), setting("pi", attention="transformers")
    with running(outer, 512) as call:
        assert running_call() is call and call.key_length == 512 and call.blocked and call.scaled
        expected = dynamic_ntk_slopes(list(BASE), 4.0, TRAINED, 512)  # a = 512 / 128
        assert call.slopes == tuple(expected) != BASE
        torch.testing.assert_close(active_slopes(), torch.tensor(expected), rtol=0, atol=0)
        torch.testing.assert_close(active_slopes(bfloat16=True), torch.tensor(expected).bfloat16().float())
        with running(inner, 64):
            assert attention_choice() == "transformers" and running_call().slopes == tuple(m / 4 for m in BASE)
        assert running_call() is call
    assert running_call() is None


def test_only_lm_infinite_has_a_position_method():
    with running(setting("ntk"), 300):
        assert active_position_method(torch.ones(4)) is None
    with running(setting("lm_infinite", global_tokens=2, local_window=16), 300):
        method = active_position_method(torch.full((4,), 0.5))
        assert (method.method, method.options, method.original_length) == (
            "lm_infinite", {"global_tokens": 2, "local_window": 16}, TRAINED)
        assert method.changes(TRAINED) and not method.changes(15)


def test_the_scaled_model_reads_its_slopes_during_its_forward_only(tiny_model_dir):
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tiny_model_dir("bloom")), dtype=torch.float32)
    install_alibi_scaling(model, AlibiScaling("dynamic_ntk", None, TRAINED), attention="blocked")
    seen = []
    attention = next(m for m in model.modules() if isinstance(m, modeling_bloom.BloomAttention))
    attention.register_forward_pre_hook(lambda module, args: seen.append(running_call()))
    ids = torch.randint(4, 100, (1, 300), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(ids)
    (call,) = seen
    assert call.key_length == 300 and list(call.slopes) == slopes_in_use(model, 300)
    assert call.slopes != tuple(alibi_slopes(model.config.n_head))  # 300 > 128: dynamic NTK scales
    assert running_call() is None
    # outside the forward, transformers' slope function (now the dispatcher) is its own
    own = modeling_bloom._get_alibi_slopes.__wrapped__(model.config.n_head, "cpu")
    assert torch.equal(modeling_bloom._get_alibi_slopes(model.config.n_head, "cpu"), own)
