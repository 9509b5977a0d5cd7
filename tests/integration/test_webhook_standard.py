"""Standard Webhooks signing and 410 Gone with real worker processes and a real store.

The sink verifies every request with the `standardwebhooks` package, as a receiver does
(tests/support/sink.py)."""

from __future__ import annotations

import base64
import time
from collections import Counter
from pathlib import Path
from typing import Any

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

NEW = "whsec_" + base64.b64encode(b"rotation: the new key, 32 bytes!").decode()
OLD = "whsec_" + base64.b64encode(b"rotation: the old key, 32 bytes!").decode()


def with_webhook(spec: dict[str, Any], **settings: Any) -> dict[str, Any]:
    spec["message"]["webhook"].update(settings)
    return spec


def test_a_run_during_a_key_rotation_verifies_with_either_secret(uri: str, tmp_path: Path) -> None:
    users = [f"u{i}" for i in range(1500)]
    # The sink holds both secrets: a request counts as verified only if the package
    # verifies it with the old secret and, on its own, with the new one.
    with SinkThread(secret=[OLD, NEW]) as sink:
        spec = with_webhook(
            spec_for(users, url=sink.url, shards=4, rate=3000),
            secretRef={"name": "hook", "key": "next", "previousKey": "hmac"},
        )
        run_id, _ = create_run(uri, spec)
        env = {"PUSHTASK_WEBHOOK_SECRET": NEW, "PUSHTASK_WEBHOOK_SECRET_PREVIOUS": OLD}
        with WorkerProcs(uri, run_id, tmp_path, env=env) as workers:
            workers.start_many(2)
            assert set(workers.wait(120).values()) == {0}, workers.logs()
        stats = sink.stats()
        verdicts = Counter(r.signature_ok for r in sink.requests)
        errors = Counter(r.verify_error for r in sink.requests if r.verify_error)
    assert verdicts == {True: len(users)}, errors
    assert stats["schemes"] == {"standard": len(users)}
    assert stats["delivered_users"] == len(users) and stats["duplicates"] == 0
    assert stats["bad_signatures"] == 0 and stats["rejected"] == 0
    assert totals(uri, run_id).sent == len(users)


def test_a_run_on_the_pushtask_scheme_keeps_the_earlier_headers(uri: str, tmp_path: Path) -> None:
    users = [f"u{i}" for i in range(300)]
    with SinkThread(secret="s3cret") as sink:
        spec = with_webhook(spec_for(users, url=sink.url, shards=2), signature="pushtask")
        run_id, _ = create_run(uri, spec)
        with WorkerProcs(uri, run_id, tmp_path) as workers:
            workers.start_many(1)
            assert set(workers.wait(60).values()) == {0}, workers.logs()
        stats = sink.stats()
    assert stats["schemes"] == {"pushtask": len(users)}
    assert stats["delivered_users"] == len(users) and stats["bad_signatures"] == 0


def test_410_gone_fails_the_run_naming_the_endpoint_and_loses_nothing(
    uri: str, tmp_path: Path
) -> None:
    """The endpoint is deleted mid-run: the first 410 fails the run with a reason naming
    the URL; no recipient is retried or sent twice; each answer is recorded as it was."""
    audience = 4000
    ok_before = 300
    concurrency = 8
    users = [f"u{i}" for i in range(audience)]
    with SinkThread(secret="s3cret") as sink:
        sink.program(then={"after": ok_before, "answers": [{"status": 410, "body": "gone"}]})
        spec = spec_for(users, url=sink.url, shards=4, rate=1000, max_attempts=5)
        run_id, _ = create_run(uri, spec)
        env = {"PUSHTASK_CONCURRENCY": str(concurrency)}
        started = time.monotonic()
        with WorkerProcs(uri, run_id, tmp_path, env=env) as workers:
            workers.start_many(2)
            assert set(workers.wait(60).values()) == {0}, workers.logs()
        took = time.monotonic() - started
        requests = list(sink.requests)
        stats = sink.stats()
    reason = (run_doc(uri, run_id).get("failure") or {}).get("reason", "")
    assert sink.url in reason and "410 Gone" in reason, reason
    by_status = Counter(r.status for r in requests)
    assert by_status[200] == ok_before
    # Stopped at the first 410 each worker saw: at most its in-flight sends got one too.
    assert 1 <= by_status[410] <= 2 * concurrency, by_status
    assert took < 30, f"{took:.1f}s: the rest of the audience was not sent to"
    # One request per user: a 410 is never retried, nothing is sent twice.
    assert max(Counter(r.user for r in requests).values()) == 1
    assert stats["bad_signatures"] == 0 and stats["schemes"] == {"standard": len(requests)}
    # The ledger says what each got: sent, failed (410), or never started (pending).
    statuses = recipient_statuses(uri, run_id)
    for r in requests:
        assert statuses[r.user or ""] == ("sent" if r.status == 200 else "failed"), r.user
    tried = {r.user for r in requests}
    left = Counter(s for u, s in statuses.items() if u not in tried)
    assert set(left) == {"pending"}, left  # a shard not sealed yet has no statuses at all
    t = totals(uri, run_id)
    assert (t.sent, t.failed, t.unknown) == (by_status[200], by_status[410], 0)
