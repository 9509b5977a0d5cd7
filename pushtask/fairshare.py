"""Fair division of the operator-wide send budget among running tasks (pure).

The seed split the budget evenly per time slot, which leaves budget unused when a task
wants less than its even part. Max-min fairness (water filling) gives every task that
wants less than its part what it wants, and splits the rest among the others, in
proportion to their weights when weights are given (by priority, for instance).

A task's demand is what it can use now (`demand_now`), not the rate it declares: nothing
outside its send window or before its audience is sealed, and no more than its workers
achieve once they have been measured.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TypeVar

K = TypeVar("K")

# A task measured below this share of its allocation is limited by something else (its
# workers, its receiver): its demand becomes what it achieves plus HEADROOM, so that the
# rest goes to others while it can still grow back tick by tick.
UNDERUSE = 0.8
HEADROOM = 1.25
MIN_SHARE = 0.05  # of its rate: a task measured at nothing still gets a little to show it


def max_min_fair(
    budget: float, demands: Mapping[K, float], weights: Mapping[K, float] | None = None
) -> dict[K, float]:
    """Allocate `budget` among `demands` max-min fairly (weighted when `weights` is given).

    A demand of `math.inf` means "as much as it can get"; negative demands count as zero.
    A missing weight counts as 1, and a task of weight 0 gets nothing. The allocations never
    exceed a demand and sum to min(budget, sum of the demands of positive weight).

    >>> max_min_fair(100, {"a": 10, "b": 100, "c": 100})
    {'a': 10, 'b': 45.0, 'c': 45.0}
    """
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    weight = {k: 1.0 if weights is None else max(0.0, weights.get(k, 1.0)) for k in demands}
    alloc: dict[K, float] = {k: 0.0 for k in demands}
    # By demand per unit of weight: each is either satisfied in full, or what is left is
    # split among it and every later one by weight.
    pending = sorted(
        (k for k in demands if weight[k] > 0), key=lambda k: max(0.0, demands[k]) / weight[k]
    )
    remaining = float(budget)
    left_weight = sum(weight[k] for k in pending)
    for i, key in enumerate(pending):
        share = remaining * weight[key] / left_weight
        want = max(0.0, demands[key])
        if want <= share:
            alloc[key] = want
            remaining -= want
            left_weight -= weight[key]
        else:
            # Everyone from here on wants more than its part of what is left.
            for other in pending[i:]:
                alloc[other] = remaining * weight[other] / left_weight
            break
    return {k: alloc[k] for k in demands}


def demand_now(
    rate: float,
    *,
    in_window: bool,
    sending: bool,
    achieved: float | None = None,
    allocated: float | None = None,
) -> float:
    """What a task can use of the budget now.

    `sending`: its run is in the delivery stage and not held (a task still building its
    audience, paused or waiting sends nothing). `achieved`: its measured send rate, None
    until a whole measurement window has passed (a new run is not judged by its start).
    `allocated`: what it was given last time.
    """
    if not in_window or not sending or rate <= 0:
        return 0.0
    if (
        achieved is not None
        and allocated is not None
        and math.isfinite(allocated)
        and achieved < UNDERUSE * allocated
    ):
        return min(rate, max(achieved * HEADROOM, MIN_SHARE * rate))
    return rate


def grantable(fair: float, budget: float, others_in_force: Iterable[float]) -> float:
    """What a task may be given now: its fair share, but never more than the budget less
    what the other tasks' senders may still be sending at.

    A task whose share shrinks (another task started) keeps sending at the old share until
    its workers read the new one; giving the difference away before then would let the
    tasks together exceed the budget at the receivers. So budget moves from one task to
    another in two steps: the first task's allocation is lowered, and once its senders
    report the lower rate, the second task's is raised.

    >>> grantable(300, 900, [450, 450])  # the others have not let go yet
    0.0
    >>> grantable(300, 900, [300, 450])
    150.0
    """
    return float(max(0.0, min(fair, budget - sum(others_in_force))))


def in_force(allocated: float | None, reported: Iterable[float]) -> float:
    """The most a task's senders may be sending at: its allocation, or a higher rate some
    sender still reports (it has not read the lower one yet)."""
    return float(max([allocated or 0.0, *reported]))
