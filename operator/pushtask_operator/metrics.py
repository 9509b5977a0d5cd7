"""Prometheus metrics of the operator: per task, what `kubectl get pushtasks` shows.

Workers export their own send metrics; the operator's are the aggregated view across
all workers of a task, so one scrape target answers "how far along is every campaign".
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from prometheus_client import Counter, Gauge, start_http_server

from pushtask.models import PushTaskStatus
from pushtask.states import Phase

log = logging.getLogger("pushtask.operator")
LABELS = ("namespace", "task")
RECIPIENTS = Gauge(
    "pushtask_task_recipients", "Recipients of the current run by result", (*LABELS, "result")
)
RATE = Gauge("pushtask_task_rate_per_second", "Sends per second of the current run", LABELS)
PHASE = Gauge("pushtask_task_phase", "1 for the task's current phase", (*LABELS, "phase"))
WORKERS = Gauge("pushtask_task_workers", "Worker pods by state", (*LABELS, "state"))
# What the rate is judged against (alerts "sending far below its allocation", dashboards).
LIMIT = Gauge("pushtask_task_rate_limit_per_second", "The task's spec.rate.perSecond", LABELS)
ALLOCATION = Gauge(
    "pushtask_task_allocation_per_second",
    "Sends per second the task may use now: its rate capped by its share of sendBudget "
    "(0 while not running)",
    LABELS,
)
# 1 while the run is in its delivery stage, 1 while a running task holds outside its send
# window: a run that sends nothing then is not stalled.
DELIVERING = Gauge("pushtask_task_delivering", "1 while the run is delivering", LABELS)
OUTSIDE_WINDOW = Gauge(
    "pushtask_task_outside_window", "1 while a running task holds outside its send window", LABELS
)
# The operator-wide budget and what the running tasks could use of it now (demand above
# budget for long: the budget is saturated, tasks run below their own rates).
BUDGET = Gauge("pushtask_send_budget_per_second", "The operator's sendBudget (0 = no limit)")
BUDGET_DEMAND = Gauge(
    "pushtask_send_budget_demand_per_second", "Sum of what the running tasks can use now"
)
# Completion notifications (spec.notify) by target kind and outcome: sent, retried (an
# attempt failed, another is due), failed (given up). Operator-wide: a dead endpoint shows
# as retried climbing, then failed.
NOTIFICATIONS = Counter(
    "pushtask_notifications", "Completion notification attempts by outcome", ("kind", "result")
)
_TASK_GAUGES = (RECIPIENTS, RATE, PHASE, WORKERS, LIMIT, ALLOCATION, DELIVERING, OUTSIDE_WINDOW)
_known: set[tuple[str, str]] = set()


def serve(port: int, addr: str = "0.0.0.0") -> None:
    """Start the endpoint; a port in use costs the metrics, never the operator."""
    if not port:
        return
    try:
        start_http_server(port, addr=addr)
    except OSError as exc:
        log.warning("metrics endpoint %s:%s not started: %s", addr, port, exc)


def observe(
    namespace: str,
    name: str,
    phase: str,
    status: PushTaskStatus,
    *,
    limit: float | None = None,
    allocation: float | None = None,
    delivering: bool = False,
    in_window: bool = True,
) -> None:
    _known.add((namespace, name))
    if status.counts is not None:
        for result, value in status.counts.model_dump().items():
            RECIPIENTS.labels(namespace, name, result).set(value)
    RATE.labels(namespace, name).set(status.rate or 0.0)
    for p in Phase:
        PHASE.labels(namespace, name, p.value).set(1 if p.value == phase else 0)
    if status.workers is not None:
        for kind, value in status.workers.model_dump().items():
            WORKERS.labels(namespace, name, kind).set(value)
    if limit is not None:
        LIMIT.labels(namespace, name).set(limit)
    ALLOCATION.labels(namespace, name).set(allocation or 0)
    DELIVERING.labels(namespace, name).set(1 if delivering else 0)
    running = phase in ("Started", "Reboot")
    OUTSIDE_WINDOW.labels(namespace, name).set(1 if running and not in_window else 0)


def observe_budget(budget: float, demands: Mapping[str, float]) -> None:
    BUDGET.set(budget)
    BUDGET_DEMAND.set(sum(demands.values()))


def forget(namespace: str, name: str) -> None:
    if (namespace, name) not in _known:
        return
    _known.discard((namespace, name))
    for gauge in _TASK_GAUGES:
        for labels in list(gauge._metrics):  # prometheus_client has no label-prefix removal
            if labels[:2] == (namespace, name):
                gauge.remove(*labels)
