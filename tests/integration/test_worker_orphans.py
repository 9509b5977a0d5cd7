"""A take_batch whose reply was lost (a store outage between its update and its read-back)
leaves recipients inflight under the holder's own token. They were never sent: the shard
must still finish, with each of them sent exactly once (regression: it looped forever)."""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from datetime import UTC, datetime

import pytest

from pushtask.leases import claim, release
from pushtask.models import PushTaskSpec
from pushtask.planning import TaskRef, plan_run, shard_of
from pushtask.store import Store
from pushtask.templates import compile_message
from pushtask_worker.channels import ChannelContext
from pushtask_worker.channels.webhook import WebhookChannel
from pushtask_worker.delivery import ShardDelivery
from pushtask_worker.ratelimit import TokenBucket
from pushtask_worker.resilience import StoreGuard
from pushtask_worker.sending import Sender
from tests.support.sink import SinkThread
from tests.support.workers import spec_for

pytestmark = pytest.mark.integration


async def scenario(uri: str, url: str, guarantee: str) -> tuple[bool, int]:
    users = [f"u{i:04d}" for i in range(300)]
    spec = spec_for(users, url=url, shards=1, guarantee=guarantee, secret=False)
    task = TaskRef("ns", "orphans", secrets.token_hex(8))
    plan = plan_run(task, 1, spec, now=datetime.now(UTC))
    run_id = plan.run["_id"]
    store = Store.connect(uri)
    try:
        await store.ensure_indexes()
        await store.create_run(plan.run, plan.splits)
        got = await claim(store.splits, run_id=run_id, kind="audience", owner="t", ttl=30)
        assert got is not None
        _, lease = got
        docs = [{"run": run_id, "user": u, "shard": shard_of(u, 1), "attrs": {}} for u in users]
        await store.add_recipients(lease, docs)
        await release(store.splits, lease, done=True)
        assert await store.finalize_audience(run_id)
        got = await claim(store.splits, run_id=run_id, kind="delivery", owner="t", ttl=30)
        assert got is not None
        _, lease = got
        lost = await store.take_batch(lease, run_id, 0, 120)  # its reply "never arrived"
        channel = WebhookChannel(ChannelContext({"url": url}))
        await channel.start()
        parsed = PushTaskSpec.model_validate(spec)
        sender = Sender(
            task=plan.run["task"],
            run=1,
            run_id=run_id,
            spec=parsed,
            compiled=compile_message(parsed.message.template),
            channel=channel,
            bucket=TokenBucket(None),
        )
        delivery = ShardDelivery(
            store,
            StoreGuard(),
            sender,
            lease,
            0,
            guarantee=guarantee,  # type: ignore[arg-type]
            concurrency=16,
            max_batch=100,
            halt=lambda: False,
        )
        try:
            finished = await asyncio.wait_for(delivery.run(), 60)
        finally:
            await channel.close()
        t = await store.totals(run_id)
        assert lost.recipients  # the orphans exist before delivery runs
        return finished, t.sent
    finally:
        await store.close()


@pytest.mark.parametrize("guarantee", ["AtMostOnce", "AtLeastOnce"])
def test_batch_moved_but_never_returned_is_sent_once(uri: str, guarantee: str) -> None:
    with SinkThread() as sink:
        finished, sent = asyncio.run(scenario(uri, sink.url, guarantee))
        seen = Counter(r.user for r in sink.requests)
    assert finished
    assert sent == 300
    assert len(seen) == 300 and max(seen.values()) == 1
