"""Exclusions fail closed (issue 21, item 3): real worker processes, a real MongoDB-wire
server, the webhook sink counting what each user received.

An exclusion that cannot be read in full stops its run before the first send: its split
is never done, so the audience is never whole, no shard is sealed and nothing is sent. A
retryable error (the exclusion's store away) is retried with back-off and, once it reads,
the exclusion applies; it never counts as an empty list.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pymongo import MongoClient

from tests.integration.test_worker_audience import FileServer
from tests.support.sink import SinkThread
from tests.support.workers import (
    PrivateMongo,
    WorkerProcs,
    create_run,
    run_doc,
    spec_for,
    totals,
)

pytestmark = pytest.mark.integration

AUDIENCE = [f"u{i:03d}" for i in range(200)]
OPTED_OUT = AUDIENCE[:100]  # the exclusion list: half the audience


@pytest.fixture
def sink() -> Iterator[SinkThread]:
    with SinkThread(secret="s3cret") as s:
        yield s


def seed(uri: str, collection: str, users: list[str]) -> None:
    client: MongoClient[dict[str, Any]] = MongoClient(uri, serverSelectionTimeoutMS=5000)
    try:
        client.get_default_database()[collection].insert_many([{"_id": u} for u in users])
    finally:
        client.close()


def received_by(sink: SinkThread, users: list[str]) -> int:
    """Messages the sink received for `users` (any answer: a send is a send)."""
    wanted = set(users)
    return sum(1 for r in sink.requests if r.user in wanted)


def test_a_mongo_exclusion_naming_a_missing_collection_fails_before_any_send(
    uri: str, sink: SinkThread, tmp_path: Path
) -> None:
    """The issue's repro (b): `optuts` for `optouts`. Read as empty, it sent to all 100."""
    seed(uri, "optouts", OPTED_OUT)
    exclude = [{"kind": "mongo", "collection": "optuts"}]
    spec = spec_for(AUDIENCE, url=sink.url, exclude=exclude, shards=4, workers=2)
    run_id, _ = create_run(uri, spec)
    with WorkerProcs(uri, run_id, tmp_path / "logs") as workers:
        workers.start_many(2)
        assert set(workers.wait(120).values()) == {0}, workers.logs()
    failure = run_doc(uri, run_id).get("failure") or {}
    reason = str(failure.get("reason"))
    print(f"missing exclusion collection: {len(sink.requests)} sends; failure: {reason}")
    assert received_by(sink, OPTED_OUT) == 0
    assert len(sink.requests) == 0, "nothing may be sent before the exclusions are read"
    assert "exclusion spec.audience.exclude[0] (mongo optuts)" in reason, reason
    assert "does not exist" in reason and "allowMissing" in reason
    t = totals(uri, run_id)
    assert t.stage == "audience" and t.total == 0  # never sealed


def test_allow_missing_reads_as_empty_and_a_missing_source_is_a_counted_skip(
    uri: str, sink: SinkThread, tmp_path: Path
) -> None:
    sources: list[dict[str, Any]] = [
        {"kind": "inline", "users": AUDIENCE[:50]},
        {"kind": "mongo", "collection": "no_such_users"},  # a source: a Warning, not a stop
    ]
    exclude = [{"kind": "mongo", "collection": "no_such_optouts", "allowMissing": True}]
    spec = spec_for(url=sink.url, sources=sources, exclude=exclude, shards=4, workers=1)
    run_id, _ = create_run(uri, spec)
    with WorkerProcs(uri, run_id, tmp_path / "logs") as workers:
        workers.start_many(1)
        assert set(workers.wait(120).values()) == {0}, workers.logs()
    assert run_doc(uri, run_id).get("failure") is None
    assert sorted(u for u in sink.delivered_counts() if u) == AUDIENCE[:50]
    t = totals(uri, run_id)
    assert (t.stage, t.sent, t.skipped) == ("done", 50, 1), t
    reasons = _skip_reasons(uri, run_id)
    assert any("no_such_users does not exist: read as empty" in r for r in reasons), reasons


def _skip_reasons(uri: str, run_id: str) -> list[str]:
    from tests.support.workers import _with_store

    return list(asyncio.run(_with_store(uri, lambda s: s.skip_samples(run_id))))


@pytest.fixture
def private_mongo(mongo_uri: str, tmp_path: Path) -> Iterator[PrivateMongo]:
    # mongo_uri: devstack builds (and runs) mongo-java-server; this is a second one.
    server = PrivateMongo(tmp_path / "optouts.mv")
    if not server.available():
        pytest.skip("mongo-java-server is not built (python -m devstack up --only mongo)")
    server.start()
    yield server
    server.stop()


def test_an_exclusion_whose_store_is_down_is_retried_then_applied(
    uri: str, sink: SinkThread, tmp_path: Path, private_mongo: PrivateMongo
) -> None:
    """The exclusion list lives in another MongoDB (its own Secret's URI), which is down
    when the run starts: the split is retried with back-off, never read as empty."""
    seed(private_mongo.uri, "optouts", OPTED_OUT)
    private_mongo.stop()
    exclude = [{"kind": "mongo", "collection": "optouts"}]
    spec = spec_for(AUDIENCE, url=sink.url, exclude=exclude, shards=4, workers=2)
    run_id, _ = create_run(uri, spec)
    env = {"PUSHTASK_AUDIENCE_EXCLUDE_0_URI": private_mongo.uri + "?serverSelectionTimeoutMS=500"}
    with WorkerProcs(uri, run_id, tmp_path / "logs", env=env) as workers:
        workers.start_many(2)
        deadline = time.monotonic() + 60
        while "source read failed" not in workers.logs() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "source read failed" in workers.logs(), workers.logs()
        time.sleep(2)
        assert len(sink.requests) == 0, "sent while the exclusion was unreadable"
        private_mongo.start()
        assert set(workers.wait(180).values()) == {0}, workers.logs()
    assert run_doc(uri, run_id).get("failure") is None
    print(f"exclusion store down, then up: {received_by(sink, OPTED_OUT)} sends to excluded")
    assert received_by(sink, OPTED_OUT) == 0
    assert sorted(u for u in sink.delivered_counts() if u) == AUDIENCE[100:]


class FailingFiles(FileServer):
    """An HTTP server whose every answer is 503: an exclusion file that cannot be read."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.hits = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        return web.Response(status=503, text="down for maintenance")


def test_an_exclusion_url_answering_503_fails_the_run_after_retries_and_sends_nothing(
    uri: str, sink: SinkThread, tmp_path: Path
) -> None:
    with FailingFiles(tmp_path) as files:
        exclude = [{"kind": "url", "url": files.url("optouts.jsonl"), "format": "jsonl"}]
        spec = spec_for(AUDIENCE, url=sink.url, exclude=exclude, shards=4, workers=1)
        run_id, _ = create_run(uri, spec)
        with WorkerProcs(uri, run_id, tmp_path / "logs") as workers:
            workers.start_many(1)
            assert set(workers.wait(180).values()) == {0}, workers.logs()
        hits = files.hits
    reason = str((run_doc(uri, run_id).get("failure") or {}).get("reason"))
    print(f"exclusion URL 503: {hits} requests to it, {len(sink.requests)} sends; {reason}")
    assert len(sink.requests) == 0
    assert hits >= 5  # retried, not taken for an empty file
    assert "exclusion spec.audience.exclude[0] (url" in reason, reason
    assert "unreadable after 5 attempts" in reason and "HTTP 503" in reason
