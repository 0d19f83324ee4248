"""The attention-level methods' registry: the relative positions against each paper's definition,
the identity bounds, defaults and validation."""

import itertools

import pytest
import torch
import transformers

from lmeval_ctx.extension import resolve_extension
from lmeval_ctx.methods import ATTENTION_METHOD_OPTIONS, ATTENTION_METHODS, canonical_method
from lmeval_ctx.methods.attention import (
    ATTENTION_METHOD_REGISTRY,
    LM_INFINITE_GLOBAL_TOKENS,
    assign_positions,
    relative_positions,
    resolve_attention_options,
)
from tiny_models import CONFIGS

L = 64
N = 200  # evaluated length: every pair (i, j), j <= i < N
I, J = torch.arange(N)[:, None], torch.arange(N)[None, :]
CAUSAL = J <= I

# (options, rel(i, j) as each paper defines it, visible(i, j) or None), written pair by pair
DEFINITIONS = {
    "rerope": (dict(window=16), lambda i, j, o: min(i - j, o["window"]), None),
    "leaky_rerope": (dict(window=16, leak=4.0),
                     lambda i, j, o: i - j if i - j < o["window"] else o["window"] + (i - j - o["window"]) / o["leak"],
                     None),
    "self_extend": (dict(group_size=4, neighbor_window=12),
                    lambda i, j, o: i - j if i - j < o["neighbor_window"] else
                    i // o["group_size"] - j // o["group_size"] + o["neighbor_window"]
                    - o["neighbor_window"] // o["group_size"], None),
    "lm_infinite": (dict(global_tokens=3, local_window=20), lambda i, j, o: min(i - j, L),
                    lambda i, j, o: i - j < o["local_window"] or j < o["global_tokens"]),
}


def test_the_registry_is_the_vocabulary():
    assert tuple(ATTENTION_METHOD_REGISTRY) == ATTENTION_METHODS == tuple(ATTENTION_METHOD_OPTIONS)
    for method in ATTENTION_METHODS:
        assert canonical_method(method, family="rope") == method
        with pytest.raises(ValueError, match=f"scaling='{method}'.*ALiBi"):
            canonical_method(method, family="alibi")


@pytest.mark.parametrize("method", ATTENTION_METHODS)
def test_relative_positions_are_the_papers(method):
    options, rel, visible = DEFINITIONS[method]
    assignment = assign_positions(method, options, L, I, J)
    got = relative_positions(assignment, I, J)
    pairs = [(i, j) for i, j in itertools.product(range(N), repeat=2) if j <= i]
    expected = torch.zeros(N, N, dtype=torch.float64)
    for i, j in pairs:
        expected[i, j] = rel(i, j, options)
    torch.testing.assert_close(got[CAUSAL], expected[CAUSAL], rtol=0, atol=1e-12)
    if visible is None:
        assert assignment.visible is None
    else:
        want = torch.tensor([[bool(visible(i, j, options)) for j in range(N)] for i in range(N)])
        assert torch.equal(assignment.visible.expand(N, N)[CAUSAL], want[CAUSAL])


@pytest.mark.parametrize("method", ATTENTION_METHODS)
def test_unchanged_up_to_is_the_last_distance_left_as_it_is(method):
    """Every pair within the bound keeps i - j and stays visible; the inputs here go beyond it."""
    options = DEFINITIONS[method][0]
    bound = ATTENTION_METHOD_REGISTRY[method].unchanged_up_to(options, L)
    assignment = assign_positions(method, options, L, I, J)
    unchanged = (relative_positions(assignment, I, J) == (I - J)) & CAUSAL
    if assignment.visible is not None:
        unchanged &= assignment.visible
    distance = I - J
    assert unchanged[CAUSAL & (distance <= bound)].all()
    assert not unchanged[CAUSAL].all() and bound < N - 1


def test_self_extend_with_group_size_one_changes_nothing():
    unchanged_up_to = ATTENTION_METHOD_REGISTRY["self_extend"].unchanged_up_to
    assert unchanged_up_to(dict(group_size=1, neighbor_window=8), L) == float("inf")
    assignment = assign_positions("self_extend", dict(group_size=1, neighbor_window=8), L, I, J)
    assert torch.equal(relative_positions(assignment, I, J)[CAUSAL], (I - J).double().expand(N, N)[CAUSAL])


def test_defaults_from_the_papers():
    # LM-Infinite: n_global = 10, n_local = the trained length
    assert resolve_attention_options("lm_infinite", {}, L, None) == {"global_tokens": LM_INFINITE_GLOBAL_TOKENS,
                                                                     "local_window": L}
    # Leaky ReRoPE: k = (L' - 1 - w)/(L - 1 - w) maps the largest distance onto the largest trained one
    options = resolve_attention_options("leaky_rerope", {"window": 16}, L, 256)
    assert options["leak"] == pytest.approx((255 - 16) / (L - 1 - 16))
    assert 16 + (256 - 1 - 16) / options["leak"] == pytest.approx(L - 1)


@pytest.mark.parametrize("method, options, max_length, message", [
    ("rerope", {}, None, r"scaling=rerope needs window=<\.\.\.>"),
    ("rerope", {"window": 64}, None, r"window=64 must be smaller than original_max_length=64"),
    ("rerope", {"window": 2.5}, None, r"window=2.5 must be a whole number >= 1"),
    ("leaky_rerope", {"window": 16}, None, r"needs leak=<k>.*or max_length"),
    ("leaky_rerope", {"window": 16, "leak": 0.5}, None, r"leak=0.5 must be a finite number >= 1"),
    ("leaky_rerope", {"window": 16, "leak": 2}, 512, r"reaches relative position .* beyond the trained 63"),
    ("self_extend", {"neighbor_window": 8}, None, r"needs group_size"),
    ("self_extend", {"group_size": 0, "neighbor_window": 8}, None, r"group_size=0 must be a whole number >= 1"),
    ("self_extend", {"group_size": 4, "neighbor_window": 64}, None, r"neighbor_window=64 must be smaller than "
                                                                    r"original_max_length=64"),
    ("self_extend", {"group_size": 2, "neighbor_window": 16}, 512, r"reach relative position .* beyond the trained "
                                                                   r"63.*\(L - w\)\*G \+ w = 112"),
    ("lm_infinite", {"local_window": 0}, None, r"local_window=0 must be a whole number >= 1"),
])
def test_bad_options_name_the_argument_and_the_fix(method, options, max_length, message):
    with pytest.raises(ValueError, match=message):
        resolve_attention_options(method, options, L, max_length)


def test_requests_through_resolve_extension():
    llama = CONFIGS["llama"]()  # trained length 128
    ext = resolve_extension(llama, scaling="self_extend", group_size="4", neighbor_window="32", max_length=400)
    assert ext.factor is None and ext.attention_level and ext.max_length == 400
    assert (ext.options["group_size"], ext.options["neighbor_window"]) == (4, 32)
    assert resolve_extension(llama, scaling="yarn", factor=2, logn="true").attention_level
    with pytest.raises(ValueError, match="factor only applies together with a RoPE rescaling; remove it for "
                                         "scaling=rerope"):
        resolve_extension(llama, scaling="rerope", window=16, factor=2)
    with pytest.raises(ValueError, match="group_size only apply to scaling=self_extend, not scaling=rerope"):
        resolve_extension(llama, scaling="rerope", window=16, group_size=2)
    with pytest.raises(ValueError, match="window only apply to scaling=rerope or leaky_rerope, not scaling=none"):
        resolve_extension(llama, window=16)
    with pytest.raises(ValueError, match=r"scaling='lm_infinite'.*ALiBi"):
        resolve_extension(transformers.BloomConfig(), scaling="lm_infinite", original_max_length=2048)
    with pytest.raises(ValueError, match="logn=true changes attention.*this model is cohere"):
        resolve_extension(CONFIGS["cohere"](), scaling="pi", factor=2, logn=True)
    with pytest.raises(ValueError, match="logn='maybe'"):
        resolve_extension(llama, logn="maybe")
