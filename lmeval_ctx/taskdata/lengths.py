"""Task lengths: their validation, and the names of per-length metrics (``acc@4096``).

Shared by the passkey and long-range perplexity tasks and the report; light on
purpose, so the report reads results without importing lm-eval.
"""

from __future__ import annotations

# The longest length a task accepts: 4M tokens (2**22), four times the longest context of
# today's released models. A length beyond it is a typo (1e9 would build gigabytes of
# prompt text before anything else failed), so it is refused before any work.
MAX_TASK_LENGTH = 2**22


def per_length_metric(metric: str, length: int) -> str:
    """The name of ``metric`` measured at ``length`` tokens, e.g. ``acc@4096``."""
    return f"{metric}@{int(length)}"


def split_per_length_metric(name: str) -> tuple[str, int] | None:
    """``("acc", 4096)`` for ``"acc@4096"``; None for a name that is not per length."""
    metric, sep, length = name.rpartition("@")
    return (metric, int(length)) if sep and metric and length.isdigit() else None


def validate_lengths(lengths) -> list[int]:
    """Positive whole numbers of tokens, each once; a single length is accepted too."""
    if isinstance(lengths, (int, str)):
        lengths = [lengths]
    out = []
    for value in lengths or []:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            if isinstance(value, str) and value.isdigit() and int(value) > 0:
                value = int(value)
            else:
                raise ValueError(f"lengths must be positive whole numbers of tokens; got {value!r}.")
        if value > MAX_TASK_LENGTH:
            raise ValueError(f"length {value} is beyond the largest length a task accepts ({MAX_TASK_LENGTH} tokens); "
                             "check the lengths for a typo.")
        out.append(value)
    if not out:
        raise ValueError('lengths is empty: pass e.g. --metadata \'{"lengths": [4096, 8192]}\'.')
    if len(set(out)) != len(out):
        raise ValueError(f"lengths has repeats: {out}. List each length once.")
    return out
