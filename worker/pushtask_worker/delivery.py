"""Deliver one shard: a bounded pipeline from the store to the channel and back.

    take_batch (pending → inflight, this lease's token) ─▶ queue (1 batch) ─▶ send ─▶ record

The queue holds one batch, so reading the store never runs ahead of sending by more than
that, and a worker's memory does not grow with the audience. Only the recipients a
take_batch actually moved are sent; results are written filtered by the token.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TypeVar

from pushtask.leases import Lease, now_utc, release
from pushtask.store import Batch, Guarantee, Store
from pushtask.store import Outcome as Result
from pushtask_worker import metrics
from pushtask_worker.resilience import StoreGuard
from pushtask_worker.sending import Sender
from pushtask_worker.storeops import requeue_orphans

log = logging.getLogger("pushtask.worker.delivery")
T = TypeVar("T")


BATCH_SECONDS = 2.0
MIN_BATCH = 10
FIRST_BATCH = 200


def batch_size(
    max_batch: int, *, rate_share: float | None = None, send_speed: float | None = None
) -> int:
    """How many recipients to move to inflight in one step.

    About two seconds of sending, at this worker's rate share or at its measured sending
    speed if that is lower (a slow receiver, or no rate limit at all): a killed worker then
    leaves about two seconds' worth in doubt, while a fast one pays the store's per-batch
    cost rarely. Until the sending speed is known (no rate share either), a first small
    batch measures it.

    Not sized by the store's speed: on a slow store most of a batch's cost is fixed (its
    queries), so smaller batches would only make it slower still."""
    speeds = [s for s in (rate_share, send_speed) if s is not None]
    size = min(speeds) * BATCH_SECONDS if speeds else FIRST_BATCH
    return max(MIN_BATCH, min(max_batch, int(size)))


class Pace:
    """This worker's measured sending speed (recipients per second), smoothed over batches.

    Kept by the worker across shards, so each new shard starts at the known speed."""

    def __init__(self, weight: float = 0.5) -> None:
        self.weight = weight
        self.per_second: float | None = None

    def observe(self, recipients: int, seconds: float) -> None:
        if recipients <= 0 or seconds <= 0:
            return
        speed = recipients / seconds
        old = self.per_second
        self.per_second = speed if old is None else old + self.weight * (speed - old)

    def batch_size(self, max_batch: int, rate_share: float | None) -> int:
        return batch_size(max_batch, rate_share=rate_share, send_speed=self.per_second)


class ShardDelivery:
    def __init__(
        self,
        store: Store,
        guard: StoreGuard,
        sender: Sender,
        lease: Lease,
        shard: int,
        *,
        guarantee: Guarantee,
        concurrency: int,
        max_batch: int,
        halt: Callable[[], bool],
        pace: Pace | None = None,
    ) -> None:
        self.store = store
        self.guard = guard
        self.sender = sender
        self.lease = lease
        self.shard = shard
        self.guarantee = guarantee
        self.concurrency = concurrency
        self.max_batch = max_batch
        self.halt = halt
        self.pace = pace or Pace()
        self.run_id = sender.run_id

    async def _call(self, fn: Callable[[], Awaitable[T]], what: str) -> T:
        return await self.guard.call(fn, what)

    async def run(self) -> bool:
        """Deliver what is due; True when the shard is finished (released as done)."""
        lease, run_id, shard = self.lease, self.run_id, self.shard
        # The first holder of a shard (token 1) finds nothing in doubt and nothing counted:
        # both steps would only scan the shard.
        first_claim = lease.token == 1
        while True:
            if not first_claim:
                await self._settle()
            first_claim = False
            await self._pipeline()
            if self.halt():
                await self._call(lambda: release(self.store.splits, lease, done=False), "release")
                return False
            open_left, first_due = await self._call(
                lambda: self.store.shard_state(run_id, shard), "shard state"
            )
            if not open_left:
                await self._call(lambda: self.store.recount_shard(lease, run_id, shard), "recount")
                await self._call(lambda: release(self.store.splits, lease, done=True), "release")
                return True
            # Nothing of ours is in flight now: any inflight recipient with our token was
            # moved by a take_batch whose reply was lost in a store outage, never sent.
            orphans = await self._call(
                lambda: requeue_orphans(self.store, lease, run_id, shard), "requeue orphans"
            )
            if orphans:
                log.warning(
                    "requeued recipients moved but never sent", extra={"shard": shard, "n": orphans}
                )
                continue
            if first_due is not None and first_due > now_utc():
                # Only recipients with a later sendAt are left: let the shard rest until then.
                rest = partial(release, self.store.splits, lease, done=False, not_before=first_due)
                await self._call(rest, "release until due")
                return False
            # Due recipients appeared (re-queued in doubt), or a stale holder left some in
            # flight: go round again (the settle step takes care of the latter).

    async def _settle(self) -> None:
        """Deal with what an earlier holder left in flight, then recount from the data."""
        lease, run_id, shard = self.lease, self.run_id, self.shard
        settled = await self._call(
            lambda: self.store.settle_in_doubt(lease, run_id, shard, self.guarantee),
            "settle in-doubt recipients",
        )
        if settled:
            log.info("recipients in doubt settled", extra={"shard": shard, "n": settled})
            if self.guarantee == "AtMostOnce":
                metrics.RESULTS.labels(self.sender.label, "unknown").inc(settled)
        await self._call(lambda: self.store.recount_shard(lease, run_id, shard), "recount")

    async def _pipeline(self) -> None:
        queue: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=1)
        gauge = metrics.QUEUE_DEPTH.labels(self.sender.label)

        async def produce() -> None:
            try:
                while not self.halt():
                    size = self.pace.batch_size(self.max_batch, self.sender.bucket.rate)
                    take = partial(self.store.take_batch, self.lease, self.run_id, self.shard, size)
                    batch = await self._call(take, "take batch")
                    if not batch.recipients:
                        break
                    gauge.inc(len(batch.recipients))
                    await queue.put(batch)
            finally:
                await queue.put(None)

        producer = asyncio.create_task(produce())
        # One result write in flight at a time, overlapping the next batch's sends: the
        # store's latency is hidden behind sending instead of added to it.
        recording: asyncio.Task[None] | None = None
        try:
            while (batch := await queue.get()) is not None:
                try:
                    if self.halt():
                        # Moved but never sent: safe to hand back untouched.
                        await self._call(partial(self.store.requeue, self.lease, batch), "requeue")
                        continue
                    results = await self._send_batch(batch)
                finally:
                    gauge.dec(len(batch.recipients))
                if recording is not None:
                    await recording
                recording = asyncio.create_task(self._record(batch, results))
            if recording is not None:
                await recording
            await producer  # re-raise what stopped the producer (a lost lease, say)
        finally:
            for task in (producer, recording):
                if task is None:
                    continue
                if not task.done():
                    task.cancel()
                elif not task.cancelled():
                    task.exception()  # seen here (a lost lease, say): not "never retrieved"

    async def _send_batch(self, batch: Batch) -> list[Result]:
        # `concurrency` lanes draw from one iterator: as many sends in flight, without a
        # task per recipient waiting on a semaphore (thousands per batch).
        results: list[Result | None] = [None] * len(batch.recipients)
        todo = iter(enumerate(batch.recipients))

        async def lane() -> None:
            for i, recipient in todo:
                results[i] = await self.sender.send(recipient)

        started = time.monotonic()
        lanes = min(self.concurrency, len(batch.recipients))
        await asyncio.gather(*(lane() for _ in range(lanes)))
        self.pace.observe(len(results), time.monotonic() - started)
        return [r for r in results if r is not None]

    async def _record(self, batch: Batch, results: list[Result]) -> None:
        record = partial(self.store.record_outcomes, self.lease, batch, results)
        counted = await self._call(record, "record results")
        for result, n in counted.items():
            metrics.RESULTS.labels(self.sender.label, result).inc(n)
