"""StreamingLLM (Xiao et al. 2023, arXiv:2309.17453) on tiny Llama, Qwen2 and GPT-NeoX (partial
rotary) models: the logits against a brute-force reference built from the paper's cache (the first
n_sink tokens and the last `window` ones, positions counted inside the cache), scored with one
softmax over the visible keys; defaults, validation, the identity before the cache fills, KV-cache
decoding, and the refusals (ALiBi, a factor, ctx-vllm)."""

import pytest
import torch
import transformers
from attention_reference import cached_decoding, ARCHS, IDS, LENGTH, ORIGINAL, Reference, padded_inputs, run, tiny, with_method

from lmeval_ctx.extension.attention import kernel as attention_kernel
from lmeval_ctx.extension.attention import patch as attention_patch
from lmeval_ctx.extension.lifecycle import extend
from lmeval_ctx.extension.request import resolve_extension
from lmeval_ctx.methods.attention import resolve_attention_options
from tiny_models import CONFIGS


def cache_slots(query: int, o) -> dict:
    """The paper's cache when token ``query`` is attended: {token: position in the cache}. Until it
    holds n_sink + window tokens it holds them all; then the sinks and the `window` latest tokens."""
    sinks, window = o["n_sink"], o["window"]
    tokens = (list(range(query + 1)) if query < sinks + window
              else list(range(sinks)) + list(range(query - window + 1, query + 1)))
    return {token: slot for slot, token in enumerate(tokens)}


def _pairs(i, j, o, value):
    """Over every (row, query, key) of the broadcast positions: the cache distance, or whether the
    key is in the query's cache."""
    out = torch.zeros(torch.broadcast_shapes(i.shape, j.shape), dtype=value)
    rows, queries, keys = out.shape
    for b in range(rows):
        key_positions = j[min(b, j.shape[0] - 1), 0].tolist()
        for q, query in enumerate(i[min(b, i.shape[0] - 1), :, 0].tolist()):
            slots = cache_slots(query, o)
            for k, key in enumerate(key_positions):
                inside = key <= query and key in slots
                out[b, q, k] = inside if value is torch.bool else (slots[query] - slots[key] if inside else 0)
    return out


def streaming_positions(i, j, o):
    return _pairs(i, j, o, torch.float64)


def streaming_visible(i, j, o):
    return _pairs(i, j, o, torch.bool)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("options", [dict(n_sink=4, window=20), dict(n_sink=0, window=30), dict()])
def test_logits_match_the_brute_force_reference(arch, options):
    """72 tokens against a cache of 24, 30 or (the defaults for the trained 48) 4 + 44: queries before
    and after the cache fills, sinks inside and outside the window, padding."""
    model = with_method(arch, "streaming_llm", options)
    assert model.config._attn_implementation == attention_patch.IMPLEMENTATION
    resolved = {**dict(n_sink=4, window=ORIGINAL - 4), **options}
    reference = tiny(arch)
    Reference(reference, streaming_positions, streaming_visible, resolved, logn=False)
    for padded in (False, True):
        got, want = run(model, padded), run(reference, padded)
        real = padded_inputs(padded)[1].bool()
        assert (got[real] - want[real]).abs().max() <= 1e-5
    plain = tiny(arch)  # the method moves the later queries' logits well beyond that tolerance
    assert (run(model, False) - run(plain, False))[:, 50:].abs().max() > 1e-4


def test_the_reference_cache_puts_sinks_at_the_papers_distance():
    """A full cache: a sink key j is at n_sink + window - 1 - j from the query, a recent key at i - j."""
    o = dict(n_sink=4, window=20)
    slots = cache_slots(60, o)
    assert len(slots) == 24 and slots[60] - slots[2] == 4 + 20 - 1 - 2 and slots[60] - slots[45] == 15
    assert 10 not in slots and cache_slots(22, o)[22] - cache_slots(22, o)[0] == 22  # not yet full



def test_the_joined_path_matches_the_reference_too(monkeypatch):
    """The single-call path other devices take (queries joined with their moved copies), run here on CPU."""
    monkeypatch.setattr(attention_kernel, "SPLIT_ON_CPU", False)
    options = dict(n_sink=4, window=20)
    model = with_method("gpt_neox", "streaming_llm", options)
    reference = tiny("gpt_neox")
    Reference(reference, streaming_positions, streaming_visible, options, logn=False)
    for padded in (False, True):
        real = padded_inputs(padded)[1].bool()
        assert (run(model, padded)[real] - run(reference, padded)[real]).abs().max() <= 1e-5

def test_defaults_from_the_paper():
    """Four sinks (§3.2) and a cache as long as the trained window."""
    assert resolve_attention_options("streaming_llm", {}, 8192, None) == {"n_sink": 4, "window": 8188}
    assert resolve_attention_options("streaming_llm", {"n_sink": "1"}, 8192, None) == {"n_sink": 1, "window": 8191}
    assert resolve_attention_options("streaming_llm", {"window": 1024}, 8192, None) == {"n_sink": 4, "window": 1024}


@pytest.mark.parametrize("options, message", [
    ({"window": 45}, r"n_sink=4 with window=45 makes a cache of 49 positions, beyond original_max_length=48.*"
                     r"Use window <= 44"),
    ({"n_sink": 48}, r"n_sink=48 must be smaller than original_max_length=48"),
    ({"n_sink": -1}, r"n_sink=-1 must be a whole number >= 0"),
    ({"window": 0}, r"window=0 must be a whole number >= 1"),
    ({"window": "all"}, r"window='all' is not a whole number"),
])
def test_bad_options_name_the_argument_and_the_fix(options, message):
    with pytest.raises(ValueError, match=message):
        resolve_attention_options("streaming_llm", options, ORIGINAL, None)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_cache_that_never_fills_changes_nothing(arch):
    """Inputs shorter than n_sink + window are in the cache whole, at their positions: bit for bit the
    model as trained."""
    model, plain = tiny(arch), tiny(arch)
    extend(model.config, {"scaling": "streaming_llm", "n_sink": 4, "window": LENGTH - 4,
                          "original_max_length": LENGTH}, model=model)
    for padded in (False, True):
        assert torch.equal(run(model, padded), run(plain, padded))


def test_kv_cache_decoding_equals_a_full_forward():
    model = with_method("llama", "streaming_llm", dict(n_sink=4, window=20))
    steps, full = cached_decoding(model, LENGTH - 8)
    assert (steps - full).abs().max() <= 1e-5


def test_refusals_name_the_fix():
    llama = CONFIGS["llama"]()  # trained 128
    ext = resolve_extension(llama, scaling="streamingllm", max_length=1000)
    assert ext.method == "streaming_llm" and ext.options == {"n_sink": 4, "window": 124}
    with pytest.raises(ValueError, match="factor only applies together with a RoPE rescaling; remove it for "
                                         "scaling=streaming_llm"):
        resolve_extension(llama, scaling="streaming_llm", factor=2)
    with pytest.raises(ValueError, match=r"scaling='streaming_llm'.*ALiBi"):
        resolve_extension(transformers.BloomConfig(), scaling="streaming_llm", original_max_length=2048)
    from lmeval_ctx.extension.vllm import vllm_engine_args

    with pytest.raises(ValueError, match="scaling=streaming_llm changes the attention computation, which ctx-vllm "
                                         "cannot reach.*--model ctx-hf"):
        vllm_engine_args(llama, scaling="streaming_llm")
