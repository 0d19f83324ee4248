"""FlexAttention as the engine of the attention-level methods on RoPE models
(lmeval_ctx.extension.attention.flex_kernel) and the engine choice (lmeval_ctx.extension.flex):
the same logits as the block path and the brute-force reference for every method of the
registry, on tiny Llama (grouped-query) and GPT-NeoX (partial rotary) models, left padding
included; one compiled kernel for every length of a bucket; the choice validated, resolved and
recorded.

Compiling takes about 20 s per head layout, so every test here shares the two layouts (Llama's,
GPT-NeoX's) and the short inputs of attention_reference (one length bucket)."""

import dataclasses
import logging

import pytest
import torch
from attention_reference import cached_decoding, CASES, IDS, LENGTH, ORIGINAL, PAD, Reference, padded_inputs, run, tiny, with_method

from lmeval_ctx.extension import flex
from lmeval_ctx.extension.flex import padded_length
from lmeval_ctx.extension.attention import flex_kernel
from lmeval_ctx.extension.attention import function as attention_function
from lmeval_ctx.extension.attention import kernel as attention_kernel
from lmeval_ctx.extension.attention import patch as attention_patch
from lmeval_ctx.extension.lifecycle import ExtensionRequest, extend
from lmeval_ctx.methods.attention import ATTENTION_METHOD_REGISTRY

# Options for methods of the registry that attention_reference has no definition for: these are
# compared with the block path (tested against their definitions elsewhere).
EXTRA_OPTIONS = {"string": dict(shift=20, local_window=4), "streaming_llm": dict(n_sink=4, window=30)}
TOLERANCE = 1e-4  # in logits (the bound; measured: about 3e-7)


def engine_of(model, engine: str) -> None:
    """Switch the engine of every layer carrying a setting."""
    for module in attention_patch.attention_modules(model):
        setting = module.__dict__.get(attention_kernel.SETTING_ATTRIBUTE)
        if setting is not None:
            module.__dict__[attention_kernel.SETTING_ATTRIBUTE] = dataclasses.replace(setting, engine=engine)


def counted_calls(monkeypatch) -> dict:
    """How many calls each engine served."""
    calls = {"flex": 0, "blocks": 0}
    for name, engine in (("flex_method_attention", "flex"), ("moved_attention", "blocks")):
        original = getattr(attention_function, name)

        def counted(*args, _original=original, _engine=engine, **kwargs):
            calls[_engine] += 1
            return _original(*args, **kwargs)
        monkeypatch.setattr(attention_function, name, counted)
    return calls


def test_every_registry_method_has_a_case():
    assert set(ATTENTION_METHOD_REGISTRY) <= set(CASES) | set(EXTRA_OPTIONS)


@pytest.mark.parametrize("arch", ("llama", "gpt_neox"))
@pytest.mark.parametrize("method", [m for m in CASES if m != "none"] + list(EXTRA_OPTIONS))
def test_flex_equals_the_block_path_and_the_definition(arch, method, monkeypatch):
    """Grouped-query Llama and partial-rotary GPT-NeoX, plain and left-padded batches: FlexAttention
    gives the block path's logits and, for the methods with a definition, the reference's."""
    if method not in ATTENTION_METHOD_REGISTRY:
        pytest.skip(f"{method} is not in this tree's registry")
    options = CASES[method][0] if method in CASES else EXTRA_OPTIONS[method]
    model = with_method(arch, method, options, engine="flex")
    reference = None
    if method in CASES:
        reference = tiny(arch)
        Reference(reference, CASES[method][1], CASES[method][2], options, logn=False)
    calls = counted_calls(monkeypatch)
    for padded in (False, True):
        real = padded_inputs(padded)[1].bool()
        engine_of(model, "flex")
        got = run(model, padded)[real]
        engine_of(model, "blocks")
        torch.testing.assert_close(got, run(model, padded)[real], atol=TOLERANCE, rtol=0)
        if reference is not None:
            torch.testing.assert_close(got, run(reference, padded)[real], atol=TOLERANCE, rtol=0)
    assert calls == {"flex": 4, "blocks": 4}  # 2 layers x 2 batches each


def test_kv_cache_decoding_and_half_precision_through_flex():
    """A prefill past the trained length then one token at a time from the cache (queries fewer
    than keys) gives the full forward's logits; bfloat16 inputs give the float32 computation rounded."""
    model = with_method("llama", "self_extend", CASES["self_extend"][0], logn=True, engine="flex")
    steps, full = cached_decoding(model, LENGTH - 4)
    torch.testing.assert_close(steps, full, atol=TOLERANCE, rtol=0)
    model = with_method("llama", "rerope", CASES["rerope"][0], engine="flex")  # no log-n: it scales in the input dtype
    module = attention_patch.attention_modules(model)[0]
    generator = torch.Generator().manual_seed(5)
    query, key, value = (torch.randn(1, heads, LENGTH, 16, generator=generator).to(torch.bfloat16) for heads in (4, 2, 2))
    with torch.no_grad():
        half, _ = attention_function.method_attention(module, query, key, value, None, scaling=0.25,
                                                      position_ids=torch.arange(LENGTH)[None])
        full, _ = attention_function.method_attention(module, query.float(), key.float(), value.float(), None,
                                                      scaling=0.25, position_ids=torch.arange(LENGTH)[None])
    assert half.dtype == torch.bfloat16 and torch.equal(half, full.to(torch.bfloat16))


def test_new_lengths_reuse_the_compiled_kernel():
    """lm-eval sends many lengths: lengths padded to one bucket run the kernel compiled for it, with
    no new graph (no recompile, no unfused fallback), and stay exact."""
    from torch._dynamo.utils import counters

    assert [padded_length(n) for n in (1, 128, 129, 257, 385, 700, 1025, 5000)] == [
        128, 128, 256, 384, 512, 768, 1536, 6144]
    assert [padded_length(n, 1024) for n in (1, 1025, 2049, 8193)] == [1024, 1536, 3072, 12288]
    model = with_method("llama", "rerope", CASES["rerope"][0], engine="flex")
    reference = tiny("llama")
    Reference(reference, CASES["rerope"][1], None, CASES["rerope"][0], logn=False)
    results = {}
    with torch.no_grad():
        model(IDS)
        graphs = counters["stats"]["unique_graphs"]
        for length in (LENGTH - 11, LENGTH - 17, LENGTH - 30):
            results[length] = (model(IDS[:, :length]).logits, reference(IDS[:, :length]).logits)
        assert counters["stats"]["unique_graphs"] == graphs
    for got, want in results.values():
        torch.testing.assert_close(got, want, atol=TOLERANCE, rtol=0)


def test_plan_is_made_once_per_forward(monkeypatch):
    """The pairs' block mask and rotations are made by the first layer and reused by the second."""
    made = []
    original = flex_kernel._block_mask
    monkeypatch.setattr(flex_kernel, "_block_mask", lambda *a, **k: made.append(1) or original(*a, **k))
    model = with_method("llama", "dual_chunk", CASES["dual_chunk"][0], engine="flex")
    run(model, True)
    run(model, True)
    assert len(made) == 2  # two forwards, two layers each


def test_auto_sends_float_masks_and_gradients_to_the_block_path(monkeypatch):
    """Where auto takes FlexAttention, a float mask (the caller's own biases) and gradients on CPU
    still go through the block path; attention_engine=flex refuses both, naming the fix."""
    monkeypatch.setattr(flex, "ROPE_AUTO_FLEX_ON_CPU", True)  # as auto on CUDA
    model = with_method("llama", "lm_infinite", CASES["lm_infinite"][0], engine="auto")
    ids, mask, positions = padded_inputs(True)
    allowed = torch.ones(LENGTH, LENGTH, dtype=torch.bool).tril()[None, None] & mask.bool()[:, None, None, :]
    additive = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    calls = counted_calls(monkeypatch)
    with torch.no_grad():
        got = model(ids, attention_mask=additive, position_ids=positions).logits
    assert calls == {"flex": 0, "blocks": 2}
    torch.testing.assert_close(got[mask.bool()], run(model, True)[mask.bool()], atol=TOLERANCE, rtol=0)
    assert calls == {"flex": 2, "blocks": 2}
    model(ids[:, :LENGTH])  # gradients enabled
    assert calls == {"flex": 2, "blocks": 4}
    engine_of(model, "flex")
    with pytest.raises(ValueError, match="attention_engine=flex cannot run this call: a float.*attention_engine=auto"):
        with torch.no_grad():
            model(ids, attention_mask=additive, position_ids=positions)
    with pytest.raises(RuntimeError, match="attention_engine=flex cannot run here: .*inference only"):
        model(ids)


# ----------------------------------------------------------------------------- the choice
def test_engine_values_are_validated():
    assert [flex.validate_engine(v) for v in (None, " AUTO ", "flex", "blocks")] == ["auto", "auto", "flex", "blocks"]
    assert flex.validate_engine("transformers", alibi=True) == "transformers"
    with pytest.raises(ValueError, match=r"attention_engine='transformers' is not an engine \(transformers applies "
                                         r"to ALiBi models only\); use one of auto, flex, blocks"):
        flex.validate_engine("transformers")
    with pytest.raises(ValueError, match=r"attention_engine='fast' is not an engine; use one of auto, flex, blocks"):
        ExtensionRequest.from_model_args({}, attention_engine="fast")


def test_alibi_attention_is_a_deprecated_alias(caplog):
    with caplog.at_level(logging.WARNING):
        request = ExtensionRequest.from_model_args({}, alibi_attention="blocked")
    assert request.alibi_options == {"attention": "blocks"}
    assert "alibi_attention is deprecated; use attention_engine" in caplog.text
    assert ExtensionRequest.from_model_args({}, alibi_attention="transformers").alibi_options == {
        "attention": "transformers"}
    assert ExtensionRequest.from_model_args({}, attention_engine="flex").alibi_options == {"attention": "flex"}
    assert ExtensionRequest.from_model_args({}).alibi_options == {"attention": None}
    with pytest.raises(ValueError, match="alibi_attention='auto' and attention_engine='flex' both given"):
        ExtensionRequest.from_model_args({}, attention_engine="flex", alibi_attention="auto")


def test_transformers_engine_is_refused_on_rope_models():
    model = tiny("llama")
    with pytest.raises(ValueError, match=r"attention_engine='transformers' only applies to ALiBi models.*llama.*"
                                         r"Use attention_engine=auto, flex or blocks"):
        extend(model.config, {"scaling": "rerope", "window": 20, "original_max_length": ORIGINAL}, model=model,
               alibi_options={"attention": "transformers"})


@pytest.mark.parametrize("engine", ("auto", "flex", "blocks"))
def test_the_engine_is_recorded_and_installed(engine, monkeypatch):
    """The record says which engine runs; on CPU auto runs the block path (measured faster there)."""
    model = tiny("qwen2")
    state = extend(model.config, {"scaling": "rerope", "window": 20, "original_max_length": ORIGINAL}, model=model,
                   alibi_options={"attention": None if engine == "auto" else engine})
    record = state.record["attention_engine"]
    assert record["requested"] == engine and record["engine"] == ("flex" if engine == "flex" else "blocks")
    if engine == "flex":  # CPU: FlexAttention serves inference only
        assert "gradients enabled run the block path" in record["note"]
    if engine == "auto":
        assert "measured faster than FlexAttention on CPU" in record["note"]
    settings = {module.__dict__[attention_kernel.SETTING_ATTRIBUTE].engine
                for module in attention_patch.attention_modules(model)}
    assert settings == {engine}
    calls = counted_calls(monkeypatch)
    run(model, False)
    assert calls == ({"flex": 2, "blocks": 0} if engine == "flex" else {"flex": 0, "blocks": 2})
    plain = tiny("qwen2")
    assert "attention_engine" not in extend(plain.config, {"scaling": "yarn", "factor": 2,
                                                           "original_max_length": ORIGINAL}, model=plain).record


def test_flex_where_it_cannot_run_is_a_clear_error_and_auto_falls_back(monkeypatch):
    monkeypatch.setattr(flex, "_missing", lambda kind: "torch.compile needs a C++ compiler on CPU (install g++)")
    request = {"scaling": "self_extend", "group_size": 3, "neighbor_window": 16, "original_max_length": ORIGINAL}
    model = tiny("llama")
    with pytest.raises(RuntimeError, match=r"attention_engine=flex cannot run here: torch.compile needs a C\+\+ "
                                           r"compiler.*Use attention_engine=auto or attention_engine=blocks"):
        extend(model.config, request, model=model, alibi_options={"attention": "flex"})
    state = extend(model.config, request, model=model, alibi_options={"attention": "auto"})
    assert state.record["attention_engine"] == {
        "requested": "auto", "engine": "blocks",
        "note": "FlexAttention unavailable: torch.compile needs a C++ compiler on CPU (install g++)"}
    assert flex.resolve_engine("auto", "cpu") == "blocks"


def test_auto_choice_by_family_and_device(monkeypatch):
    """auto: the RoPE methods' block path on CPU (measured faster), FlexAttention on CUDA; ALiBi's
    record follows resolve_engine (FlexAttention where it runs)."""
    assert flex.rope_prefers_blocks("auto", "cpu") and not flex.rope_prefers_blocks("flex", "cpu")
    assert not flex.rope_prefers_blocks("auto", "cuda")
    with torch.no_grad():
        assert flex.resolve_engine("auto", "cpu") == "flex" and flex.resolve_engine("blocks", "cpu") == "blocks"
    assert flex.engine_record("auto", "cpu", "alibi")["engine"] == "flex"
    assert flex.engine_record("blocks", "cpu") == {"requested": "blocks", "engine": "blocks"}
    monkeypatch.setattr(flex, "_missing", lambda kind: None)
    assert flex.engine_record("auto", "cuda") == {"requested": "auto", "engine": "flex"}


def test_padding_rows_give_finite_outputs():
    """The left padding's rows (no key to attend to) come out finite and do not reach the real rows."""
    model = with_method("gpt_neox", "rerope", CASES["rerope"][0], engine="flex")
    logits = run(model, True)
    assert torch.isfinite(logits).all()
    with torch.no_grad():
        alone = model(IDS[1:, PAD:]).logits[0]
    torch.testing.assert_close(logits[1, PAD:], alone, atol=TOLERANCE, rtol=0)
