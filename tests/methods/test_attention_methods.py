"""The attention-level methods' registry: the relative positions against each paper's definition,
the identity bounds, defaults and validation."""

import itertools

import pytest
import torch
import transformers

from lmeval_ctx.extension.request import resolve_extension
from lmeval_ctx.methods.catalog import ATTENTION_METHOD_OPTIONS, ATTENTION_METHODS, ROPE_ONLY_METHODS, canonical_method
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



def rel_dual_chunk(i, j, o):
    """DCA (An et al. 2024, eqs. 2, 5, 7 and 8): the query's position set by how many chunks lie
    between query and key, the key's at j mod s."""
    s, w = o["chunk_size"], o["local_window"]
    if i // s == j // s:
        query = i % s  # P_q^Intra
    elif i // s - j // s == 1:
        query = s + i % s if i % s < w else L - 1  # P_q^Succ
    else:
        query = L - 1  # P_q^Inter
    return query - j % s


def streaming_llm_cache(i, o) -> dict:
    """StreamingLLM's cache when token i is attended (Xiao et al. 2023, §3.2): {token: slot}; every
    token until it holds n_sink + window, then the sinks and the last `window` tokens."""
    n, w = o["n_sink"], o["window"]
    tokens = list(range(i + 1)) if i < n + w else list(range(n)) + list(range(i - w + 1, i + 1))
    return {token: slot for slot, token in enumerate(tokens)}


def rel_streaming_llm(i, j, o):
    slots = streaming_llm_cache(i, o)
    return slots[i] - slots[j]


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
    # 200 positions in chunks of 24: intra-, successive- and inter-chunk pairs all occur
    "dual_chunk": (dict(chunk_size=24, local_window=8), rel_dual_chunk, None),
    # STRING (An et al. 2024, eq. 3)
    "string": (dict(shift=20, local_window=6),
               lambda i, j, o: i - j if i - j < o["shift"] else i - j - o["shift"] + o["local_window"], None),
    # the cache fills at query 33: queries before and after it
    "streaming_llm": (dict(n_sink=4, window=30), rel_streaming_llm,
                      lambda i, j, o: j in streaming_llm_cache(i, o)),
}


def test_the_registry_is_the_vocabulary():
    assert tuple(ATTENTION_METHOD_REGISTRY) == ATTENTION_METHODS == tuple(ATTENTION_METHOD_OPTIONS)
    for method in ATTENTION_METHODS:
        assert canonical_method(method, family="rope") == method
        if method in ROPE_ONLY_METHODS:
            with pytest.raises(ValueError, match=f"scaling='{method}'.*ALiBi"):
                canonical_method(method, family="alibi")
    assert "dual_chunk" in ROPE_ONLY_METHODS


@pytest.mark.parametrize("method", ATTENTION_METHODS)
def test_relative_positions_are_the_papers(method):
    options, rel, visible = DEFINITIONS[method]
    assignment = assign_positions(method, options, L, I, J)
    got = relative_positions(assignment, I, J)
    shown = CAUSAL.clone()  # the pairs whose position matters: causal and visible
    if visible is None:
        assert assignment.visible is None
    else:
        want = torch.tensor([[bool(visible(i, j, options)) for j in range(N)] for i in range(N)])
        assert torch.equal(assignment.visible.expand(N, N)[CAUSAL], want[CAUSAL])
        shown &= want
    expected = torch.zeros(N, N, dtype=torch.float64)
    for i, j in itertools.product(range(N), repeat=2):
        if shown[i, j]:
            expected[i, j] = rel(i, j, options)
    torch.testing.assert_close(got[shown], expected[shown], rtol=0, atol=1e-12)


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


def test_dual_chunk_leaves_its_first_chunk_unchanged():
    """Positions below chunk_size all lie in the first chunk: every pair keeps i - j, whatever the
    distance (the bound the attention function uses for the identity chunk_size >= length); one
    position further, a pair at distance 1 already changes when the local window is empty."""
    options = dict(chunk_size=24, local_window=0)
    assert ATTENTION_METHOD_REGISTRY["dual_chunk"].unchanged_below(options, L) == 24
    assignment = assign_positions("dual_chunk", options, L, I, J)
    unchanged = (relative_positions(assignment, I, J) == (I - J)) & CAUSAL
    assert unchanged[:24][CAUSAL[:24]].all()
    assert not unchanged[24, 23] and relative_positions(assignment, I, J)[24, 23] == L - 1 - 23
    # besides StreamingLLM's (below n_sink + window the cache holds every token), no other method has such a bound
    assert [m for m, entry in ATTENTION_METHOD_REGISTRY.items() if entry.unchanged_below] == ["dual_chunk",
                                                                                              "streaming_llm"]


def test_streaming_llm_changes_nothing_until_its_cache_fills():
    options = DEFINITIONS["streaming_llm"][0]
    assert ATTENTION_METHOD_REGISTRY["streaming_llm"].unchanged_below(options, L) == 34
    assignment = assign_positions("streaming_llm", options, L, I, J)
    unchanged = (relative_positions(assignment, I, J) == (I - J)) & assignment.visible & CAUSAL
    assert unchanged[:34][CAUSAL[:34]].all()
    assert not assignment.visible[34, 0 + 4]  # query 34: key 4 has left the window, past the sinks


def test_dual_chunk_relative_positions_stay_below_the_trained_length():
    """With the default local window (the largest validation allows: chunk_size + local_window = L,
    or the whole chunk when it is below L/2), every pair's relative position is one the model was
    trained on: 0 <= rel <= L - 1."""
    for chunk_size, local_window in ((1, 1), (16, 16), (32, 32), (48, 16), (64, 0)):
        options = resolve_attention_options("dual_chunk", {"chunk_size": chunk_size}, L, None)
        assert options == {"chunk_size": chunk_size, "local_window": local_window}
        rel = relative_positions(assign_positions("dual_chunk", options, L, I, J), I, J)[CAUSAL]
        assert rel.min() >= 0 and rel.max() == L - 1


def test_defaults_from_the_papers():
    # LM-Infinite: n_global = 10, n_local = the trained length
    assert resolve_attention_options("lm_infinite", {}, L, None) == {"global_tokens": LM_INFINITE_GLOBAL_TOKENS,
                                                                     "local_window": L}
    # Leaky ReRoPE: k = (L' - 1 - w)/(L - 1 - w) maps the largest distance onto the largest trained one
    options = resolve_attention_options("leaky_rerope", {"window": 16}, L, 256)
    assert options["leak"] == pytest.approx((255 - 16) / (L - 1 - 16))
    assert 16 + (256 - 1 - 16) / options["leak"] == pytest.approx(L - 1)
    # DCA: chunk size 3/4 of the trained length (§4.1: 3072 for Llama 2's 4096), local window
    # w = c - s (§3.3), each default filled in from the other when one is given
    assert resolve_attention_options("dual_chunk", {}, 4096, None) == {"chunk_size": 3072, "local_window": 1024}
    assert resolve_attention_options("dual_chunk", {}, L, None) == {"chunk_size": 48, "local_window": 16}
    assert resolve_attention_options("dual_chunk", {"chunk_size": "40"}, L, None) == {"chunk_size": 40,
                                                                                      "local_window": 24}
    assert resolve_attention_options("dual_chunk", {"local_window": 4}, L, None) == {"chunk_size": 48,
                                                                                     "local_window": 4}


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
    ("dual_chunk", {"chunk_size": 0}, None, r"chunk_size=0 must be a whole number >= 1"),
    ("dual_chunk", {"chunk_size": "1k"}, None, r"chunk_size='1k' is not a whole number"),
    ("dual_chunk", {"local_window": -1}, None, r"local_window=-1 must be a whole number >= 0"),
    ("dual_chunk", {"local_window": 2.5}, None, r"local_window=2.5 must be a whole number >= 0"),
    ("dual_chunk", {"chunk_size": 65}, None, r"chunk_size=65 must be at most original_max_length=64.*"
                                             r"Use chunk_size <= 64"),
    ("dual_chunk", {"chunk_size": 20, "local_window": 30}, None, r"local_window=30 must be at most chunk_size=20"
                                                                 r".*Use local_window <= 20"),
    ("dual_chunk", {"chunk_size": 48, "local_window": 20}, None, r"chunk_size=48 with local_window=20 reaches "
                                                                 r"relative position 67.*beyond the trained 63.*"
                                                                 r"local_window <= 16, or chunk_size <= 44"),
    ("dual_chunk", {"local_window": 20}, None, r"chunk_size=48 with local_window=20 reaches"),
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
    with pytest.raises(ValueError, match="window only apply to scaling=rerope or leaky_rerope or streaming_llm, "
                                         "not scaling=none"):
        resolve_extension(llama, window=16)
    with pytest.raises(ValueError, match=r"scaling='dual_chunk'.*ALiBi"):
        resolve_extension(transformers.BloomConfig(), scaling="dual_chunk", original_max_length=2048)
    with pytest.raises(ValueError, match="logn=true changes attention.*this model is cohere"):
        resolve_extension(CONFIGS["cohere"](), scaling="pi", factor=2, logn=True)
    with pytest.raises(ValueError, match="logn='maybe'"):
        resolve_extension(llama, logn="maybe")
    ext = resolve_extension(llama, scaling="dual_chunk", local_window="8")
    assert ext.attention_level and (ext.options["chunk_size"], ext.options["local_window"]) == (96, 8)
    ext = resolve_extension(llama, scaling="dual_chunk", chunk_size="40", local_window=8)
    assert (ext.options["chunk_size"], ext.options["local_window"]) == (40, 8)
    with pytest.raises(ValueError, match="chunk_size only apply to scaling=dual_chunk, not scaling=rerope"):
        resolve_extension(llama, scaling="rerope", window=16, chunk_size=8)
    with pytest.raises(ValueError, match="neighbor_window only apply to scaling=self_extend, not scaling=dual_chunk"):
        resolve_extension(llama, scaling="dual_chunk", neighbor_window=8)
    with pytest.raises(ValueError, match="factor only applies together with a RoPE rescaling; remove it for "
                                         "scaling=dual_chunk"):
        resolve_extension(llama, scaling="dual_chunk", factor=2)
