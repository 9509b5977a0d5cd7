"""Prometheus metrics of a worker (served on PUSHTASK_METRICS_PORT)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RESULTS = Counter(
    "pushtask_worker_recipients_total",
    "Recipients by final result",
    ["task", "result"],  # result: sent | failed | skipped | unknown
)
SEND_LATENCY = Histogram(
    "pushtask_worker_send_seconds",
    "Time of one send attempt to the channel",
    ["task", "channel"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
LEASE_CLAIMS = Counter("pushtask_worker_lease_claims_total", "Splits claimed", ["task", "kind"])
LEASE_LOSSES = Counter(
    "pushtask_worker_lease_losses_total", "Leases lost to another worker", ["task"]
)
CHUNK_WRITE_FAILURES = Counter(
    "pushtask_worker_chunk_write_failures_total",
    "Chunk writes given up on (its next holder settles what they did not record)",
    ["task", "write", "error"],  # write: record results | end chunk
)
RATE = Gauge(
    "pushtask_worker_rate_limit", "This worker's share of the task's rate (per second)", ["task"]
)
SEND_FAILURES = Counter(
    "pushtask_worker_send_failures_total",
    "Recipients failed, by reason",
    # reason: template (did not render) | rejected (final answer) | exhausted (retries spent)
    ["task", "channel", "reason"],
)
# Last heartbeat this worker wrote to the store (unix seconds): time() minus it is the
# heartbeat's age, the operator's measure of a live worker.
HEARTBEAT = Gauge(
    "pushtask_worker_heartbeat_timestamp_seconds", "Last heartbeat written to the store", ["task"]
)
# Every store call goes through resilience.StoreGuard: its latency per attempt, the
# transient errors it retried, and whether the circuit breaker holds the store off.
STORE_LATENCY = Histogram(
    "pushtask_worker_store_seconds",
    "Time of one store call attempt",
    ["op"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)
STORE_ERRORS = Counter(
    "pushtask_worker_store_errors_total", "Transient store errors (retried)", ["op", "error"]
)
STORE_CIRCUIT_OPEN = Gauge(
    "pushtask_worker_store_circuit_open", "1 while the store's circuit breaker is open"
)


def serve(port: int, host: str) -> None:
    if port:
        start_http_server(port, addr=host)
