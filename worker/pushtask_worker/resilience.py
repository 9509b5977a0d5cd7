"""Back-off with jitter, and a circuit breaker that waits out MongoDB outages.

The seed system failed a task after 100 failed database calls, so 100 s of database
trouble killed every task. Here a store call that fails for a transient reason (network,
no primary, timeout) is retried with back-off behind a circuit breaker, for as long as
the worker is not shutting down: an outage slows a run down, it never fails recipients.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from pymongo import errors as mongo_errors

from pushtask_worker import metrics

log = logging.getLogger("pushtask.worker.store")
T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """Exponential back-off with "equal jitter": half the delay fixed, half random."""

    initial: float = 0.5
    maximum: float = 30.0
    multiplier: float = 2.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Delay before retry number ``attempt`` (1 = the first retry)."""
        base = min(self.maximum, self.initial * self.multiplier ** max(0, attempt - 1))
        r = (rng or random).random()
        return base / 2 + r * base / 2

    def retry_delay(self, attempt: int, retry_after: float | None) -> float:
        """Honour the receiver's Retry-After up to ``maximum`` (the spec's maxSeconds).

        Within that bound a retry never comes earlier than the receiver asked; beyond it
        the spec wins, since a receiver's ``Retry-After: 86400`` would otherwise park the
        recipient, and the worker's send slot holding it, for a day.
        """
        d = self.delay(attempt)
        if retry_after is None:
            return d
        return max(d, min(retry_after, self.maximum))


# Errors after which the same call may simply be tried again later. DuplicateKeyError and
# other OperationFailures are answers, not outages, and propagate.
TRANSIENT: tuple[type[BaseException], ...] = (
    mongo_errors.AutoReconnect,  # includes NetworkTimeout and NotPrimaryError
    mongo_errors.ConnectionFailure,
    mongo_errors.ServerSelectionTimeoutError,
    mongo_errors.WaitQueueTimeoutError,
    mongo_errors.ExecutionTimeout,
    ConnectionError,
    TimeoutError,
)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, TRANSIENT):
        return True
    # Retryable write/read labels from the server (e.g. during a failover).
    return isinstance(exc, mongo_errors.PyMongoError) and any(
        exc.has_error_label(label) for label in ("RetryableWriteError", "TransientTransactionError")
    )


class CircuitBreaker:
    """closed → (``threshold`` consecutive failures) → open for ``cooldown`` → half-open.

    While open, callers wait for the cooldown instead of hammering a store that is down;
    the first call after it is the probe that closes the circuit again on success.
    """

    def __init__(
        self,
        threshold: int = 3,
        cooldown: float = 1.0,
        max_cooldown: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.base_cooldown = cooldown
        self.max_cooldown = max_cooldown
        self._clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self.cooldown = cooldown
        self.on_change: Callable[[str], None] | None = None

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self._clock() >= self.opened_at + self.cooldown else "open"

    def wait_time(self) -> float:
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.opened_at + self.cooldown - self._clock())

    def success(self) -> None:
        if self.opened_at is not None:
            log.info("store reachable again: circuit closed", extra={"event": "circuit_closed"})
            if self.on_change:
                self.on_change("closed")
        self.failures = 0
        self.opened_at = None
        self.cooldown = self.base_cooldown

    def failure(self) -> None:
        self.failures += 1
        if self.opened_at is not None:
            # A failed probe: stay open, longer each time.
            self.cooldown = min(self.max_cooldown, self.cooldown * 2)
            self.opened_at = self._clock()
        elif self.failures >= self.threshold:
            self.opened_at = self._clock()
            log.warning(
                "store unreachable: circuit open",
                extra={"event": "circuit_open", "failures": self.failures},
            )
            if self.on_change:
                self.on_change("open")


class StoreGuard:
    """Runs store calls through the breaker, retrying transient errors until ``stopping``.

    ``stopping`` is checked between attempts; when it is set, the last transient error is
    raised (a shutting-down worker does not wait for the store forever).
    """

    def __init__(
        self,
        breaker: CircuitBreaker | None = None,
        backoff: Backoff | None = None,
        stopping: Callable[[], bool] = lambda: False,
        give_up_after: float | None = None,
    ) -> None:
        self.breaker = breaker or CircuitBreaker()
        self.backoff = backoff or Backoff(initial=0.2, maximum=5.0)
        self.stopping = stopping
        self.give_up_after = give_up_after

    async def call(self, fn: Callable[[], Awaitable[T]], what: str = "store call") -> T:
        attempt = 0
        started = time.monotonic()
        while True:
            wait = self.breaker.wait_time()
            if wait > 0:
                await asyncio.sleep(wait)
            t0 = time.monotonic()
            try:
                result = await fn()
            except BaseException as exc:
                if not is_transient(exc):
                    raise
                metrics.STORE_LATENCY.labels(what).observe(time.monotonic() - t0)
                metrics.STORE_ERRORS.labels(what, type(exc).__name__).inc()
                attempt += 1
                self.breaker.failure()
                metrics.STORE_CIRCUIT_OPEN.set(0 if self.breaker.state == "closed" else 1)
                elapsed = time.monotonic() - started
                if self.stopping() or (
                    self.give_up_after is not None and elapsed > self.give_up_after
                ):
                    raise
                delay = self.backoff.delay(attempt)
                log.warning(
                    "%s failed (%s); retrying in %.2fs",
                    what,
                    type(exc).__name__,
                    delay,
                    extra={"event": "store_retry", "attempt": attempt, "op": what},
                )
                await asyncio.sleep(delay)
                continue
            metrics.STORE_LATENCY.labels(what).observe(time.monotonic() - t0)
            self.breaker.success()
            metrics.STORE_CIRCUIT_OPEN.set(0)
            return result
