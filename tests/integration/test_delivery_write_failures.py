"""A chunk's last write that fails is logged and counted, never swallowed (issue 21, 6b).

The real ChunkDelivery on a real MongoDB-wire server: its lanes are in the middle of their
sends when the work is cancelled (the heartbeat's reaction to a lost lease, an immediate
degrade); the write that ends the chunk then fails for a real reason: the run was deleted
under the worker (its task deleted), or the store is down and the worker is stopping.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from pushtask.models import Guarantee
from pushtask.records import Result
from pushtask.store import Store
from pushtask_worker.delivery import ChunkDelivery
from pushtask_worker.ratelimit import TokenBucket
from pushtask_worker.resilience import StoreGuard
from tests.support.ledger_steps import seal_all, stage_audience
from tests.support.workers import PrivateMongo, create_run, spec_for

pytestmark = pytest.mark.integration
METRIC = "pushtask_worker_chunk_write_failures_total"


class StuckSender:
    """Stands in for `Sender`: every send waits until it is cancelled."""

    label = "ns/stuck"

    def __init__(self, lanes: int) -> None:
        self.bucket = TokenBucket(None)
        self.lanes = lanes
        self.in_flight = 0
        self.all_busy = asyncio.Event()

    async def send(
        self, position: int, user: str, attrs: Mapping[str, Any], *, token_taken: bool = False
    ) -> Result:
        self.in_flight += 1
        if self.in_flight >= self.lanes:
            self.all_busy.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


def failures(*errors: str) -> float:
    """The metric's count of failed last writes, for any of `errors` (exception names)."""
    total = 0.0
    for error in errors:
        labels = {"task": StuckSender.label, "write": "end chunk", "error": error}
        total += REGISTRY.get_sample_value(METRIC, labels) or 0.0
    return total


@pytest.fixture
def private_mongo(mongo_uri: str, tmp_path: Path) -> Iterator[PrivateMongo]:
    server = PrivateMongo(tmp_path / "chunks.mv")
    if not server.available():
        pytest.skip("mongo-java-server is not built (python -m devstack up --only mongo)")
    server.start()
    yield server
    server.stop()


@pytest.mark.parametrize("cause", ["run deleted", "store down"])
def test_a_failed_last_chunk_write_is_logged_and_counted(
    private_mongo: PrivateMongo, caplog: pytest.LogCaptureFixture, cause: str
) -> None:
    spec = spec_for([f"u{i}" for i in range(20)], url="http://127.0.0.1:9/", shards=1)
    run_id, _ = create_run(private_mongo.uri, spec)
    # A store gone: a connection closed under the write, or no server to select.
    errors = (
        ("LeaseLost",)
        if cause == "run deleted"
        else ("AutoReconnect", "ServerSelectionTimeoutError")
    )
    before = failures(*errors)

    async def scenario() -> None:
        store = Store.connect(private_mongo.uri, serverSelectionTimeoutMS=500)
        await stage_audience(store, run_id)
        assert await store.advance(run_id) == "seal"
        await seal_all(store, run_id)
        assert await store.advance(run_id) == "delivery"
        got = await store.claim_chunk(run_id, "w1", 30)
        assert got is not None
        doc, lease = got
        sender = StuckSender(lanes=2)
        stopping = False
        delivery = ChunkDelivery(
            store,
            StoreGuard(stopping=lambda: stopping),
            sender,  # type: ignore[arg-type]
            lease,
            doc,
            guarantee=Guarantee.AT_MOST_ONCE,
            concurrency=2,
            window=2,
            halt=lambda: False,
        )
        work = asyncio.create_task(delivery.run())
        await asyncio.wait_for(sender.all_busy.wait(), 10)
        if cause == "run deleted":
            await store.delete_run(run_id)  # its task deleted under the worker
        else:
            stopping = True  # a worker shutting down does not wait for the store
            private_mongo.stop()
        work.cancel()
        with pytest.raises(asyncio.CancelledError):
            await work
        await asyncio.sleep(0)  # the last write's done-callback
        await store.close()

    with caplog.at_level(logging.WARNING, logger="pushtask.worker.delivery"):
        asyncio.run(scenario())
    assert failures(*errors) == before + 1
    logged = [r for r in caplog.records if r.getMessage().startswith("chunk write failed")]
    assert logged and "end chunk" in logged[0].getMessage(), caplog.text
