"""Worker processes deliver a run: exactly once, through crashes, retries and a rate cap.

Real `pushtask-worker` OS processes, a real MongoDB-wire server (the `mongo_uri`
fixture), and the local webhook sink recording every request.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.sink import SinkThread
from tests.support.workers import (
    WorkerProcs,
    create_run,
    db_uri,
    drop_db,
    spec_for,
    totals,
)

pytestmark = pytest.mark.integration
# PUSHTASK_TEST_SCALE=0.1 shrinks the audiences for a quick local pass.
SCALE = float(os.environ.get("PUSHTASK_TEST_SCALE", "1"))


def n(count: int) -> int:
    return max(100, int(count * SCALE))


@pytest.fixture
def uri(mongo_uri: str) -> Iterator[str]:
    u = db_uri(mongo_uri, f"w_{secrets.token_hex(5)}")
    yield u
    drop_db(u)


@pytest.fixture
def sink() -> Iterator[SinkThread]:
    with SinkThread(secret="s3cret") as s:
        yield s


def users(count: int) -> list[str]:
    return [f"u{i:07d}" for i in range(count)]


def test_every_user_exactly_once_with_four_workers(
    uri: str, sink: SinkThread, tmp_path: Path
) -> None:
    audience = n(20_000)
    spec = spec_for(users(audience), url=sink.url, shards=16)
    run_id, _ = create_run(uri, spec)
    started = time.monotonic()
    with WorkerProcs(uri, run_id, tmp_path) as workers:
        workers.start_many(4)
        codes = workers.wait(600)
        assert set(codes.values()) == {0}, workers.logs()
    elapsed = time.monotonic() - started
    delivered = sink.delivered_counts()
    assert len(delivered) == audience
    assert max(delivered.values()) == 1, "a user was delivered twice"
    assert sink.stats()["bad_signatures"] == 0
    t = totals(uri, run_id)
    assert (t.sent, t.failed, t.unknown, t.skipped) == (audience, 0, 0, 0)
    assert t.stage == "done"
    print(f"{audience} recipients, 4 workers: {elapsed:.1f}s ({audience / elapsed:.0f}/s)")
