"""STRING (An et al. 2024, arXiv:2410.18745) on tiny Llama, Qwen2 and GPT-NeoX (partial rotary)
models: the logits against a brute-force reference that rotates every query by its pair's relative
position from the paper's matrix (``i - j`` below the shift S, ``i - j - S + W`` from it on) and
takes one softmax over all keys; defaults, validation, the identity, KV-cache decoding, and the
refusals (ALiBi, a factor, ctx-vllm)."""

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


def string_matrix(i, j, o):
    """The paper's relative position matrix (their Figure 5 / eq. 3), pair by pair as a tensor."""
    shift, local = o["shift"], o["local_window"]
    return torch.where(i - j < shift, i - j, i - j - shift + local)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("options", [dict(shift=20, local_window=5), dict(shift=9, local_window=0),
                                     dict()])  # {}: the defaults for the trained 48, S = 15, W = 3
def test_logits_match_the_brute_force_reference(arch, options):
    model = with_method(arch, "string", options)
    assert model.config._attn_implementation == attention_patch.IMPLEMENTATION
    resolved = {**dict(shift=15, local_window=3), **options}
    reference = tiny(arch)
    Reference(reference, string_matrix, None, resolved, logn=False)
    for padded in (False, True):
        got, want = run(model, padded), run(reference, padded)
        real = padded_inputs(padded)[1].bool()
        assert (got[real] - want[real]).abs().max() <= 1e-5
    plain = tiny(arch)  # the method moves the far queries' logits well beyond that tolerance
    assert (run(model, False) - run(plain, False))[:, 20:].abs().max() > 1e-4



def test_the_joined_path_matches_the_reference_too(monkeypatch):
    """The single-call path other devices take (queries joined with their moved copies), run here on CPU."""
    monkeypatch.setattr(attention_kernel, "SPLIT_ON_CPU", False)
    options = dict(shift=20, local_window=5)
    model = with_method("gpt_neox", "string", options)
    reference = tiny("gpt_neox")
    Reference(reference, string_matrix, None, options, logn=False)
    for padded in (False, True):
        real = padded_inputs(padded)[1].bool()
        assert (run(model, padded)[real] - run(reference, padded)[real]).abs().max() <= 1e-5

def test_defaults_are_the_authors_scaled_to_the_window():
    """S = int(0.33 L) (the authors' shifted_offset), W = 128 where S / 4 allows it (every L from 1552
    on), else S // 4, and W is filled in from a given S."""
    assert resolve_attention_options("string", {}, 8192, None) == {"shift": 2703, "local_window": 128}
    assert resolve_attention_options("string", {}, 131072, None) == {"shift": 43253, "local_window": 128}
    assert resolve_attention_options("string", {}, 2048, None) == {"shift": 675, "local_window": 128}
    assert resolve_attention_options("string", {}, ORIGINAL, None) == {"shift": 15, "local_window": 3}
    assert resolve_attention_options("string", {"shift": "100"}, 8192, None) == {"shift": 100, "local_window": 25}
    assert resolve_attention_options("string", {"local_window": 512}, 8192, None) == {"shift": 2703,
                                                                                      "local_window": 512}


@pytest.mark.parametrize("options, message", [
    ({"shift": 49}, r"shift=49 must be at most original_max_length=48.*Use shift <= 48"),
    ({"shift": 0}, r"shift=0 must be a whole number >= 1"),
    ({"shift": 2.5}, r"shift=2.5 must be a whole number >= 1"),
    ({"shift": 20, "local_window": 20}, r"local_window=20 must be smaller than shift=20.*local_window <= 19"),
    ({"local_window": -1}, r"local_window=-1 must be a whole number >= 0"),
    ({"local_window": "wide"}, r"local_window='wide' is not a whole number"),
])
def test_bad_options_name_the_argument_and_the_fix(options, message):
    with pytest.raises(ValueError, match=message):
        resolve_attention_options("string", options, ORIGINAL, None)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_shift_as_long_as_the_input_changes_nothing(arch):
    """Every distance below the shift keeps its position: bit for bit the model as trained."""
    model, plain = tiny(arch), tiny(arch)
    extend(model.config, {"scaling": "string", "shift": LENGTH, "original_max_length": 2 * LENGTH}, model=model)
    for padded in (False, True):
        assert torch.equal(run(model, padded), run(plain, padded))


def test_kv_cache_decoding_equals_a_full_forward():
    model = with_method("qwen2", "string", dict(shift=20, local_window=5))
    steps, full = cached_decoding(model, LENGTH - 8)
    assert (steps - full).abs().max() <= 1e-5


def test_refusals_name_the_fix():
    llama = CONFIGS["llama"]()
    ext = resolve_extension(llama, scaling="string", max_length=300)
    assert ext.attention_level and ext.factor is None and ext.options == {"shift": 42, "local_window": 10}
    with pytest.raises(ValueError, match="factor only applies together with a RoPE rescaling; remove it for "
                                         "scaling=string"):
        resolve_extension(llama, scaling="string", factor=2)
    with pytest.raises(ValueError, match=r"scaling='string'.*ALiBi"):
        resolve_extension(transformers.BloomConfig(), scaling="string", original_max_length=2048)
    with pytest.raises(ValueError, match="shift only apply to scaling=string, not scaling=rerope"):
        resolve_extension(llama, scaling="rerope", window=16, shift=8)
    from lmeval_ctx.extension.vllm import vllm_engine_args

    with pytest.raises(ValueError, match="scaling=string changes the attention computation, which ctx-vllm cannot "
                                         "reach.*--model ctx-hf"):
        vllm_engine_args(llama, scaling="string")
