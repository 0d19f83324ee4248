"""Serve token sequences that are prefixes of longer ones from the longer one's forward pass.

In a causal model a token's log-probability depends only on the tokens before it,
as long as position scaling does not depend on the input length. Then scoring
the first 2k tokens of a document and scoring its first 8k tokens need one
forward pass over 8k tokens, not two (long-range perplexity at several lengths).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

# sequences are bucketed by their first tokens; shorter ones are not worth sharing
MIN_SHARED_TOKENS = 16


def plan_shared_prefixes(sequences: Sequence[Sequence[int]], max_tokens: int | None = None) -> dict[int, list[int]]:
    """Group the sequences that are prefixes of another one under that longest one.

    Returns ``{carrier: [indices it serves, itself included]}`` for every carrier
    that serves at least one other sequence; sequences not listed are run as usual.
    A carrier is never longer than ``max_tokens`` (when given). Deterministic.
    """
    order = sorted(range(len(sequences)), key=lambda i: (-len(sequences[i]), i))
    buckets: dict[tuple, list[int]] = defaultdict(list)
    served: dict[int, list[int]] = {}
    for index in order:
        sequence = list(sequences[index])
        if len(sequence) < MIN_SHARED_TOKENS or (max_tokens is not None and len(sequence) > max_tokens):
            continue
        key = tuple(sequence[:MIN_SHARED_TOKENS])
        for carrier in buckets[key]:
            if list(sequences[carrier][: len(sequence)]) == sequence:
                served[carrier].append(index)
                break
        else:
            buckets[key].append(index)
            served[index] = [index]
    return {carrier: members for carrier, members in served.items() if len(members) > 1}
