"""Retries, final failures, Retry-After, template failures and the failure budget, end to end."""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.sink import SinkThread
from tests.support.workers import (
    WorkerProcs,
    create_run,
    recipient_statuses,
    run_doc,
    spec_for,
    totals,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def sink() -> Iterator[SinkThread]:
    with SinkThread(secret="s3cret") as s:
        yield s


def test_503_retried_400_final_retry_after_honoured(
    uri: str, sink: SinkThread, tmp_path: Path
) -> None:
    ok = [f"ok-{i}" for i in range(200)]
    flaky = [f"flaky-{i}" for i in range(20)]
    bad = [f"bad-{i}" for i in range(10)]
    busy = [f"busy-{i}" for i in range(5)]
    down = ["down-0"]
    sink.program(
        prefixes={
            "flaky-": [{"status": 503}, {"status": 200}],
            "bad-": [{"status": 400}],
            "busy-": [{"status": 429, "retryAfter": 2}, {"status": 200}],
            "down-": [{"status": 503}],
        }
    )
    spec = spec_for(
        [*ok, *flaky, *bad, *busy, *down],
        url=sink.url,
        shards=4,
        max_attempts=3,
        # maxSeconds bounds Retry-After too: 3 s lets the receiver's 2 s stand.
        backoff={"initialSeconds": 0.1, "maxSeconds": 3},
    )
    run_id, _ = create_run(uri, spec)
    with WorkerProcs(uri, run_id, tmp_path) as workers:
        workers.start_many(2)
        assert set(workers.wait(120).values()) == {0}, workers.logs()
    by_user = sink.by_user()
    statuses = recipient_statuses(uri, run_id)
    for u in flaky:  # 503 then 200: retried once, same key, delivered
        reqs = by_user[u]
        assert [r.status for r in reqs] == [503, 200]
        assert reqs[0].key == reqs[1].key
        assert [r.attempt for r in reqs] == [1, 2]
        assert statuses[u] == "sent"
    for u in bad:  # 400: final at once
        assert [r.status for r in by_user[u]] == [400]
        assert statuses[u] == "failed"
    for u in busy:  # 429 Retry-After: 2 → the retry waits at least 2 s (back-off alone: 0.1 s)
        first, second = by_user[u]
        assert second.t - first.t >= 1.9, second.t - first.t
        assert statuses[u] == "sent"
    assert [r.status for r in by_user["down-0"]] == [503, 503, 503]  # maxAttempts
    assert statuses["down-0"] == "failed"
    t = totals(uri, run_id)
    assert (t.sent, t.failed, t.unknown) == (len(ok) + len(flaky) + len(busy), len(bad) + 1, 0)
    assert sink.stats()["bad_signatures"] == 0


def test_missing_template_variable_fails_that_recipient_only(
    uri: str, sink: SinkThread, tmp_path: Path
) -> None:
    users = [{"id": f"u{i}", "name": f"N{i}"} for i in range(50)] + [{"id": "nameless"}]
    spec = spec_for(users, url=sink.url, shards=2, template={"body": "Hi {{ name }}"})
    run_id, _ = create_run(uri, spec)
    with WorkerProcs(uri, run_id, tmp_path) as workers:
        workers.start_many(1)
        assert set(workers.wait(60).values()) == {0}, workers.logs()
    t = totals(uri, run_id)
    assert (t.sent, t.failed) == (50, 1)
    assert "nameless" not in sink.by_user()
    assert recipient_statuses(uri, run_id)["nameless"] == "failed"


def test_failure_budget_fails_the_run_and_stops_the_workers(
    uri: str, sink: SinkThread, tmp_path: Path
) -> None:
    sink.program(default=[{"status": 400}])
    audience = 5000
    spec = spec_for(
        [f"u{i}" for i in range(audience)],
        url=sink.url,
        shards=8,
        rate=500,
        failure={"ratio": 0.5, "minSample": 100},
    )
    run_id, _ = create_run(uri, spec)
    with WorkerProcs(uri, run_id, tmp_path) as workers:
        workers.start_many(2)
        assert set(workers.wait(120).values()) == {0}, workers.logs()
    failure = run_doc(uri, run_id).get("failure") or {}
    assert "failure budget" in failure.get("reason", ""), failure
    # Stopped early: far from every recipient was attempted.
    assert len(sink.requests) < audience / 2


def test_sigterm_during_a_long_back_off_hands_the_recipient_back(
    uri: str, sink: SinkThread, tmp_path: Path
) -> None:
    """A recipient waiting out a 60 s back-off must not hold a worker past its grace
    period: on SIGTERM it goes back to pending (not failed, not in doubt), and the next
    worker sends it with the same idempotency key."""
    users = [f"ok-{i}" for i in range(50)] + ["slow-0", "slow-1"]
    sink.program(prefixes={"slow-": [{"status": 503}, {"status": 200}]})
    spec = spec_for(
        users,
        url=sink.url,
        shards=1,
        max_attempts=5,
        backoff={"initialSeconds": 60, "maxSeconds": 60},
    )
    run_id, _ = create_run(uri, spec)
    with WorkerProcs(uri, run_id, tmp_path) as workers:
        workers.start("w0")
        deadline = time.monotonic() + 60
        while len(sink.requests) < len(users) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(sink.requests) == len(users), "every user tried once"
        time.sleep(0.5)  # the two 503s are in their back-off now
        term_at = time.monotonic()
        workers.procs["w0"].send_signal(signal.SIGTERM)
        assert workers.procs["w0"].wait(20) == 0, workers.logs()
        took = time.monotonic() - term_at
        assert took < 10, f"the back-off held the worker {took:.1f}s after SIGTERM"
        statuses = recipient_statuses(uri, run_id)
        assert statuses["slow-0"] == statuses["slow-1"] == "handed back"
        assert Counter(statuses.values()) == {"sent": 50, "handed back": 2}
        workers.start("w1")
        assert workers.wait(120)["w1"] == 0, workers.logs()
    by_user = sink.by_user()
    for u in ("slow-0", "slow-1"):
        first, second = by_user[u]
        assert (first.status, second.status) == (503, 200) and first.key == second.key
    t = totals(uri, run_id)
    assert (t.sent, t.failed, t.unknown) == (len(users), 0, 0)
