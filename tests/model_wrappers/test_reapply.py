"""Re-applying methods to a loaded model (the sweep's one load) equals loading with each method."""

import pytest
import torch
import transformers

from lmeval_ctx.model_wrappers.ctx_hf import CtxHFLM
from lmeval_ctx.extension.rope.rotary import rotary_modules

IDS = torch.randint(4, 100, (2, 300), generator=torch.Generator().manual_seed(3))
TOL = dict(rtol=0, atol=1e-5)

SEQUENCES = {
    # arch: methods applied in turn to one loaded model, ending where it started
    "llama": ["pi", "yarn", "dynamic_ntk", "ntk", "none"],
    "gpt_neox": ["ntk", "yarn", "none"],
    "phi3": ["yarn", "pi", "none"],
    "bloom": ["ntk", "pi", "dynamic_ntk", "none"],
    "mpt": ["pi", "ntk", "none"],
    # per-layer-type RoPE: only the full-attention layers are scaled, per-type buffers rebuilt
    "gemma3_layer_types": ["yarn", "ntk", "dynamic_ntk", "none"],
}


@torch.no_grad()
def logits(lm: CtxHFLM) -> torch.Tensor:
    return lm.model(IDS).logits


def method_args(arch: str, scaling: str) -> dict:
    """Factor 4 over the trained 128 tokens; dynamic NTK-ALiBi takes no factor (its scale is each
    input's length over 128), only the window of 512 every model here is created with."""
    if scaling == "none":
        return {}
    return {"original_max_length": 128} if (arch, scaling) == ("bloom", "dynamic_ntk") else \
        {"factor": 4, "original_max_length": 128}


def fresh(folder, scaling, arch="llama") -> CtxHFLM:
    # an explicit window, so that MPT's ALiBi covers the 300 tokens with scaling=none too
    return CtxHFLM(pretrained=str(folder), device="cpu", dtype="float32", scaling=scaling, max_length=512,
                   **method_args(arch, scaling))


@pytest.mark.parametrize("arch", sorted(SEQUENCES))
def test_each_reapplied_method_gives_the_logits_of_a_fresh_load(tiny_model_dir, arch):
    folder = tiny_model_dir(arch)
    lm = fresh(folder, "none")
    weights = lm.model.get_input_embeddings().weight
    for scaling in SEQUENCES[arch]:
        record = lm.apply_extension(scaling, **method_args(arch, scaling))
        reference = fresh(folder, scaling, arch)
        torch.testing.assert_close(logits(lm), logits(reference), **TOL)
        assert record["scaling"] == scaling and lm.max_length == reference.max_length
        assert lm.get_model_info()["context_extension"] == reference.get_model_info()["context_extension"]
    assert lm.model.get_input_embeddings().weight is weights  # no reload


@pytest.mark.parametrize("arch, rotary", [("llama", "LlamaRotaryEmbedding"),
                                          ("gemma3_layer_types", "Gemma3RotaryEmbedding")])
def test_a_built_model_takes_a_method(tiny_model_dir, arch, rotary):
    folder = tiny_model_dir(arch)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    lm = CtxHFLM(pretrained=model, scaling="yarn", factor=4, device="cpu", max_length=512)
    reference = fresh(folder, "yarn")
    torch.testing.assert_close(logits(lm), logits(reference), **TOL)
    assert lm.get_model_info()["context_extension"] == reference.get_model_info()["context_extension"]
    assert [type(m).__name__ for _, m in rotary_modules(lm.model)] == [rotary]


def test_a_built_model_is_resolved_once(tiny_model_dir, monkeypatch):
    import lmeval_ctx.extension.lifecycle as lifecycle

    calls = []
    resolve = lifecycle.resolve_extension
    monkeypatch.setattr(lifecycle, "resolve_extension", lambda *a, **k: calls.append(k) or resolve(*a, **k))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tiny_model_dir("llama")), dtype=torch.float32)
    CtxHFLM(pretrained=model, scaling="pi", factor=4, device="cpu")
    assert [call["scaling"] for call in calls] == ["pi"]


def test_a_bad_method_leaves_the_model_as_it_was(tiny_model_dir):
    lm = fresh(tiny_model_dir("llama"), "none")
    lm.apply_extension("pi", factor=4)
    before = logits(lm)
    with pytest.raises(ValueError, match="factor"):
        lm.apply_extension("yarn", factor=0.5)
    torch.testing.assert_close(logits(lm), before, rtol=0, atol=0)
    assert lm.context_extension.method == "pi"
