"""Back-off, circuit breaker and the store guard that waits out outages."""

from __future__ import annotations

import asyncio
import random

import pytest
from pymongo import errors

from pushtask_worker.channels.webhook import classify
from pushtask_worker.resilience import Backoff, CircuitBreaker, StoreGuard, is_transient


def test_backoff_grows_caps_and_jitters() -> None:
    b = Backoff(initial=1, maximum=8, multiplier=2)
    rng = random.Random(1)
    for attempt, base in [(1, 1), (2, 2), (3, 4), (4, 8), (10, 8)]:
        for _ in range(20):
            d = b.delay(attempt, rng)
            assert base / 2 <= d <= base
    assert b.retry_delay(1, 5.0) == 5.0  # Retry-After wins when longer
    assert b.retry_delay(4, 0.0) >= 4


def test_retry_after_is_capped_by_max_seconds() -> None:
    # backoff.maxSeconds is the longest a recipient waits, whatever the receiver says.
    b = Backoff(initial=2, maximum=120, multiplier=2)
    assert b.retry_delay(1, 86400.0) == 120.0
    assert b.retry_delay(1, 120.0) == 120.0
    assert b.retry_delay(1, 90.0) == 90.0  # below the cap: as asked
    assert 1 <= b.retry_delay(1, None) <= 2
    # What the webhook channel passes up from a receiver's header meets the same cap.
    far = classify(503, "604800").retry_after
    assert far == 604800.0 and b.retry_delay(3, far) == 120.0


def test_transient_classification() -> None:
    assert is_transient(errors.AutoReconnect("x"))
    assert is_transient(errors.ServerSelectionTimeoutError("x"))
    assert is_transient(errors.NetworkTimeout("x"))
    assert not is_transient(errors.DuplicateKeyError("dup"))
    assert not is_transient(errors.OperationFailure("bad query"))
    assert not is_transient(ValueError())


def test_breaker_opens_after_threshold_and_closes_on_success() -> None:
    t = [0.0]
    br = CircuitBreaker(threshold=2, cooldown=1.0, clock=lambda: t[0])
    br.failure()
    assert br.state == "closed"
    br.failure()
    assert br.state == "open" and br.wait_time() == 1.0
    t[0] = 1.5
    assert br.state == "half-open"
    br.failure()  # failed probe: open again, longer
    assert br.state == "open" and br.cooldown == 2.0
    br.success()
    assert br.state == "closed" and br.failures == 0


def test_guard_retries_transient_errors_then_succeeds() -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 4:
            raise errors.AutoReconnect("down")
        return "ok"

    guard = StoreGuard(CircuitBreaker(threshold=2, cooldown=0.01), Backoff(0.01, 0.02))
    assert asyncio.run(guard.call(flaky)) == "ok"
    assert calls == 4
    assert guard.breaker.state == "closed"


def test_guard_does_not_retry_answers() -> None:
    async def dup() -> None:
        raise errors.DuplicateKeyError("dup")

    with pytest.raises(errors.DuplicateKeyError):
        asyncio.run(StoreGuard().call(dup))


def test_guard_gives_up_when_stopping() -> None:
    async def down() -> None:
        raise errors.AutoReconnect("down")

    guard = StoreGuard(backoff=Backoff(0.01, 0.01), stopping=lambda: True)
    with pytest.raises(errors.AutoReconnect):
        asyncio.run(guard.call(down))
