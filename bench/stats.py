"""The few statistics every part of the benchmark reports with, written once.

Rounds that produced no figure leave ``None`` or NaN behind (a run without an
answer has no rate); a median skips them rather than turning NaN itself.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence

__all__ = ["median", "percentile", "ratio"]


def median(values: Iterable[float | None]) -> float:
    """The median of the values that are numbers (``None`` and NaN left out); NaN if none."""
    clean = [value for value in values if value is not None and value == value]
    return statistics.median(clean) if clean else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0-1): the sorted values' ``int(q * n)``-th; NaN without values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``; NaN when the denominator is 0."""
    return numerator / denominator if denominator else float("nan")
