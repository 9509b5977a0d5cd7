"""Counting sends per second at the receiver, as a rate limit is judged there."""

from __future__ import annotations

import math
from collections.abc import Iterable


def per_second(times: Iterable[float]) -> list[int]:
    """Arrivals in each whole second from the first arrival; the last, partial second is
    left out (it is cut short by the run's end, not by the limit)."""
    ordered = sorted(times)
    if not ordered:
        return []
    first = ordered[0]
    full = math.floor(ordered[-1] - first)  # seconds that ended before the last arrival
    counts = [0] * full
    for t in ordered:
        i = int(t - first)
        if i < full:
            counts[i] += 1
    return counts


def worst_window(times: Iterable[float], width: float = 1.0) -> int:
    """The most arrivals in any window of `width` seconds (sliding, not aligned)."""
    ordered = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(ordered):
        while t - ordered[lo] >= width:
            lo += 1
        best = max(best, hi - lo + 1)
    return best
