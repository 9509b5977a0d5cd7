"""Prometheus metrics of the operator: per task, what `kubectl get pushtasks` shows.

Workers export their own send metrics; the operator's are the aggregated view across
all workers of a task, so one scrape target answers "how far along is every campaign".
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from prometheus_client import Gauge, start_http_server

from pushtask.states import Phase

log = logging.getLogger("pushtask.operator")
LABELS = ("namespace", "task")
RECIPIENTS = Gauge(
    "pushtask_task_recipients", "Recipients of the current run by result", (*LABELS, "result")
)
RATE = Gauge("pushtask_task_rate_per_second", "Sends per second of the current run", LABELS)
PHASE = Gauge("pushtask_task_phase", "1 for the task's current phase", (*LABELS, "phase"))
WORKERS = Gauge("pushtask_task_workers", "Worker pods by state", (*LABELS, "state"))
_known: set[tuple[str, str]] = set()


def serve(port: int, addr: str = "0.0.0.0") -> None:
    """Start the endpoint; a port in use costs the metrics, never the operator."""
    if not port:
        return
    try:
        start_http_server(port, addr=addr)
    except OSError as exc:
        log.warning("metrics endpoint %s:%s not started: %s", addr, port, exc)


def observe(namespace: str, name: str, phase: str, status: Mapping[str, Any]) -> None:
    _known.add((namespace, name))
    for result, value in (status.get("counts") or {}).items():
        RECIPIENTS.labels(namespace, name, result).set(value)
    RATE.labels(namespace, name).set(float(status.get("rate") or 0))
    for p in Phase:
        PHASE.labels(namespace, name, p.value).set(1 if p.value == phase else 0)
    for kind, value in (status.get("workers") or {}).items():
        WORKERS.labels(namespace, name, kind).set(value)


def forget(namespace: str, name: str) -> None:
    if (namespace, name) not in _known:
        return
    _known.discard((namespace, name))
    for gauge in (RECIPIENTS, RATE, PHASE, WORKERS):
        for labels in list(gauge._metrics):  # prometheus_client has no label-prefix removal
            if labels[:2] == (namespace, name):
                gauge.remove(*labels)
