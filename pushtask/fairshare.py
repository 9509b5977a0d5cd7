"""Max-min fair division of the operator-wide send budget among running tasks (pure).

The seed split the budget evenly per time slot, which leaves budget unused when a task
wants less than its even part. Max-min fairness (water filling) gives every task that
wants less than an equal part what it wants, and splits the rest evenly among the others.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TypeVar

K = TypeVar("K")


def max_min_fair(budget: float, demands: Mapping[K, float]) -> dict[K, float]:
    """Allocate `budget` among `demands` max-min fairly.

    A demand of `math.inf` means "as much as it can get". Negative demands count as zero.
    The allocations never exceed a demand and sum to min(budget, sum(demands)).

    >>> max_min_fair(100, {"a": 10, "b": 100, "c": 100})
    {'a': 10, 'b': 45.0, 'c': 45.0}
    """
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    alloc: dict[K, float] = {k: 0.0 for k in demands}
    # Smallest demands first: each is either satisfied in full, or the remaining budget
    # is split evenly among it and every larger one.
    pending = sorted(demands.items(), key=lambda kv: max(0.0, kv[1]))
    remaining = float(budget)
    for i, (key, demand) in enumerate(pending):
        share = remaining / (len(pending) - i)
        want = max(0.0, demand)
        if want <= share:
            alloc[key] = want if not math.isinf(want) else share
            remaining -= alloc[key]
        else:
            # Everyone from here on wants more than an equal part of what is left.
            for other, _ in pending[i:]:
                alloc[other] = share
            break
    return {k: alloc[k] for k in demands}
