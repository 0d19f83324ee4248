"""Names of per-length metrics (``acc@4096``), shared by the tasks and the report.

Light on purpose: the report reads results without importing lm-eval.
"""

from __future__ import annotations


def per_length_metric(metric: str, length: int) -> str:
    """The name of ``metric`` measured at ``length`` tokens, e.g. ``acc@4096``."""
    return f"{metric}@{int(length)}"


def split_per_length_metric(name: str) -> tuple[str, int] | None:
    """``("acc", 4096)`` for ``"acc@4096"``; None for a name that is not per length."""
    metric, sep, length = name.rpartition("@")
    return (metric, int(length)) if sep and metric and length.isdigit() else None
