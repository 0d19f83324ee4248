"""Installing the attention-level methods on a model (lmeval_ctx.extension.attention.patch): scoped
to the scaled model, recorded, re-applied and removed, and kept off layers whose attention never
reaches past the trained length."""

import copy

import torch
import transformers
from attention_reference import ORIGINAL, run, tiny, with_method

from lmeval_ctx.extension.attention import kernel as attention_kernel
from lmeval_ctx.extension.attention import patch as attention_patch
from lmeval_ctx.extension.lifecycle import extend
from tiny_models import CONFIGS


def test_only_the_scaled_model_changes_and_none_restores():
    scaled, other = with_method("llama", "rerope", dict(window=20)), tiny("llama")
    assert other.config._attn_implementation == "sdpa"
    before = run(other, False)
    extend(scaled.config, {"scaling": "none"}, model=scaled)
    assert scaled.config._attn_implementation == "sdpa" and not attention_patch.installed(scaled)
    torch.testing.assert_close(run(scaled, False), before, atol=0, rtol=0)


def test_ctx_hf_runs_a_method_records_it_and_reapplies(tiny_model_dir):
    """Through ctx-hf from a saved checkpoint: the same logits as the method applied to the loaded
    model here, recorded; re-applying none gives the model its own attention back."""
    from lmeval_ctx.model_wrappers.ctx_hf import CtxHFLM

    folder = tiny_model_dir("llama")
    options = dict(group_size=3, neighbor_window=16)
    lm = CtxHFLM(pretrained=str(folder), device="cpu", dtype="float32", scaling="self_extend",
                 original_max_length=ORIGINAL, max_length=96, logn="true", **options)
    record = lm.context_extension_record
    assert record["scaling"] == "self_extend" and record["factor"] is None and record["max_length"] == 96
    assert record["options"] == {**options, "logn": True}
    assert record["attention"]["method"] == "self_extend" and record["attention"]["layers"] == [0, 1]
    loaded = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    plain = run(loaded, True)
    extend(loaded.config, {"scaling": "self_extend", "original_max_length": ORIGINAL, "logn": True, **options},
           model=loaded)
    torch.testing.assert_close(run(lm.model, True), run(loaded, True), atol=0, rtol=0)
    lm.apply_extension("none", logn=None)
    assert lm.model.config._attn_implementation == "sdpa" and "attention" not in lm.context_extension_record
    torch.testing.assert_close(run(lm.model, True), plain, atol=0, rtol=0)


def test_sliding_window_layers_keep_their_attention():
    """Qwen2 with a sliding window (16 <= the trained length) in layer 1: that layer keeps SDPA
    with its sliding mask, layer 0 (full attention) gets the method."""
    config = CONFIGS["qwen2"]()
    config.sliding_window, config.layer_types = 16, ["full_attention", "sliding_attention"]
    assert config.layer_types == ["full_attention", "sliding_attention"]
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    plain = copy.deepcopy(model)
    state = extend(model.config, {"scaling": "rerope", "window": 20, "original_max_length": ORIGINAL}, model=model)
    attention = state.record["attention"]
    assert attention["layers"] == [0] and list(attention["kept_layer_types"]) == ["sliding_attention"]
    assert attention_kernel.SETTING_ATTRIBUTE not in model.model.layers[1].self_attn.__dict__
    # the kept layer runs as before: with the method on layer 0 only, the output differs from
    # the plain model's, and equals it once layer 0's setting is taken off too
    assert not torch.allclose(run(model, False), run(plain, False), atol=1e-4)
    del model.model.layers[0].self_attn.__dict__[attention_kernel.SETTING_ATTRIBUTE]
    torch.testing.assert_close(run(model, False), run(plain, False), atol=0, rtol=0)
