"""The metrics the chart's alerts and dashboard read: set where the value is known, and
gone with the task (operator); store calls timed and their errors counted (worker)."""

from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY
from pymongo import errors as mongo_errors

from pushtask.models import PushTaskStatus
from pushtask_operator import metrics as op_metrics
from pushtask_worker.resilience import Backoff, CircuitBreaker, StoreGuard


def value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_operator_gauges_follow_the_task_and_go_with_it() -> None:
    task = {"namespace": "shop", "task": "metered"}
    status = PushTaskStatus.model_validate(
        {"counts": {"sent": 5, "pending": 95}, "rate": 12.5, "workers": {"live": 2}}
    )
    op_metrics.observe(
        "shop", "metered", "Started", status,
        limit=50, allocation=20, delivering=True, in_window=False,
    )  # fmt: skip
    op_metrics.observe_budget(100, {"shop/metered": 50, "shop/other": 80})
    assert value("pushtask_task_rate_limit_per_second", **task) == 50
    assert value("pushtask_task_allocation_per_second", **task) == 20
    assert value("pushtask_task_delivering", **task) == 1
    assert value("pushtask_task_outside_window", **task) == 1
    assert value("pushtask_send_budget_per_second") == 100
    assert value("pushtask_send_budget_demand_per_second") == 130
    # Paused: no allocation, not holding for a window.
    op_metrics.observe("shop", "metered", "Paused", status, limit=50, in_window=False)
    assert value("pushtask_task_allocation_per_second", **task) == 0
    assert value("pushtask_task_outside_window", **task) == 0
    op_metrics.forget("shop", "metered")
    for name in ("pushtask_task_rate_limit_per_second", "pushtask_task_allocation_per_second"):
        assert value(name, **task) is None


def test_store_calls_are_timed_and_transient_errors_counted() -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise mongo_errors.AutoReconnect("primary stepped down")
        return "ok"

    guard = StoreGuard(
        breaker=CircuitBreaker(threshold=2, cooldown=0.01),
        backoff=Backoff(initial=0.001, maximum=0.002),
    )
    op = "metrics test call"
    before = value("pushtask_worker_store_seconds_count", op=op) or 0
    assert asyncio.run(guard.call(flaky, op)) == "ok"
    assert value("pushtask_worker_store_seconds_count", op=op) == before + 3
    assert value("pushtask_worker_store_errors_total", op=op, error="AutoReconnect") == 2
    assert value("pushtask_worker_store_circuit_open") == 0
