"""Which token sequences are served from a longer one's forward pass."""

from lmeval_ctx.scoring.prefix_sharing import MIN_SHARED_TOKENS, plan_shared_prefixes


def test_prefixes_are_served_by_the_longest_sequence_that_contains_them():
    doc_a = list(range(100))
    doc_b = list(range(1000, 1100))
    sequences = [doc_a[:40], doc_b[:50], doc_a[:100], doc_a[:70], doc_b[:100], doc_a[:40]]
    assert plan_shared_prefixes(sequences) == {2: [2, 3, 0, 5], 4: [4, 1]}


def test_no_group_without_a_prefix_relation_or_past_the_window():
    doc = list(range(200))
    diverging = doc[:50] + [999] * 50
    assert plan_shared_prefixes([doc[:100], diverging]) == {}
    assert plan_shared_prefixes([doc[:MIN_SHARED_TOKENS - 1], doc[:100]]) == {}  # too short to bother
    # a carrier longer than the window cannot be run; the shorter ones group under the next longest
    assert plan_shared_prefixes([doc[:200], doc[:100], doc[:60]], max_tokens=150) == {1: [1, 2]}
