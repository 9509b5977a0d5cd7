"""Deliver one chunk under its lease: lanes send, one writer records, the window bounds doubt.

    claim (reply = the chunk) ─▶ settle what earlier holders left ─▶ lanes ⇄ writer ─▶ end

`concurrency` lanes draw positions from the chunk in order. A lane may start a position
only below `hi`, the bound the writer last recorded with this lease's token; the writer
moves `hi` on in the same write that records results (every `record_every` results, every
second, or at once when lanes wait for room). It keeps the positions below `hi` without a
recorded result to at most `window`: those are all a crash can leave in doubt.

An earlier holder's doubt is settled on claim: `AtMostOnce` records it as `unknown` (never
sent again); `AtLeastOnce` sends it again, with the same idempotency keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any, TypeVar

from pushtask import ledger
from pushtask.leases import DONE, QUEUED, Lease, UnitEnd
from pushtask.models import Guarantee
from pushtask.records import HANDED_BACK, Result
from pushtask.store import Store
from pushtask_worker import metrics
from pushtask_worker.resilience import StoreGuard
from pushtask_worker.sending import Sender

log = logging.getLogger("pushtask.worker.delivery")
T = TypeVar("T")

# A position due within this long is waited for in the lane; later ones send the chunk
# back to rest until then (a claim costs three writes; a short wait costs nothing).
HOLD_SECONDS = 2.0
RECORD_SECONDS = 1.0


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class ChunkDelivery:
    def __init__(
        self,
        store: Store,
        guard: StoreGuard,
        sender: Sender,
        lease: Lease,
        chunk: Mapping[str, Any],
        *,
        guarantee: Guarantee,
        concurrency: int,
        window: int,
        halt: Callable[[], bool],
        record_every: int | None = None,
    ) -> None:
        self.store, self.guard, self.sender, self.lease = store, guard, sender, lease
        self.guarantee = guarantee
        self.concurrency = max(1, concurrency)
        self.window = max(1, window)
        self.record_every = max(1, record_every or self.window // 2)
        self.halt = halt
        self.id: str = chunk["_id"]
        self.chunk = chunk
        self.size = int(chunk["size"])
        self.users: list[str] = list(chunk["users"])
        self.attrs: list[dict[str, Any]] | None = chunk.get("attrs")
        self.dues: list[datetime] | None = chunk.get("dues")
        # `hi` as recorded (lanes start positions below it) and the doubt it allows.
        self.mark = ledger.SendWindow(hi=int(chunk.get("hi") or 0), size=self.window)
        self.next = self.mark.hi  # the next position never started by anyone
        self.retry: list[int] = []  # positions below `hi` this holder sends (again)
        self.handed: set[int] = set()  # of those, the ones handed back at a shutdown
        self.unrecorded: list[Result] = []
        self.sending: set[int] = set()  # positions a lane is sending right now
        self.waiting = 0  # lanes waiting for a rate token, each for a position still left
        self.counters: dict[str, int] = dict(chunk.get("counters") or {})
        self.starved = False  # lanes wait for the writer to move `hi`
        self.closing = False  # the writer's stop: what is left goes in the last write
        self.rest_until: datetime | None = None
        self.wake = asyncio.Event()
        self.moved = asyncio.Event()
        self.last_write = time.monotonic()

    async def _call(self, fn: Callable[[], Awaitable[T]], what: str) -> T:
        return await self.guard.call(fn, what)

    # -- the chunk ------------------------------------------------------------------------

    async def run(self) -> bool:
        """Deliver what is due; True when the chunk is done."""
        await self._settle()
        writer = asyncio.create_task(self._writer())
        n_lanes = min(self.concurrency, max(1, self.size - self.next + len(self.retry)))
        lanes = asyncio.gather(*(self._lane() for _ in range(n_lanes)))
        # A cancelled gather holds its CancelledError as an exception: retrieved here, or
        # asyncio logs "exception was never retrieved" for every cancelled chunk.
        lanes.add_done_callback(_retrieve)
        try:
            either: set[asyncio.Future[Any]] = {writer, lanes}
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if writer.done():  # the writer only stops early by failing (a lost lease, say)
                lanes.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await lanes
                writer.result()
            await lanes
        except asyncio.CancelledError:
            # In-flight sends cancelled (an immediate degrade) or the lease lost: what
            # completed is recorded, the cancelled sends stay in doubt, the chunk goes back.
            lanes.cancel()
            await self._stop(writer)
            # The last write is shielded from a second cancellation; however it ends, a
            # failure is logged and counted (its callback), and the cancellation goes on.
            end = asyncio.ensure_future(self._end())
            end.add_done_callback(self._ended)
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.shield(end)
            raise
        except BaseException:
            lanes.cancel()
            await self._stop(writer)
            raise
        # Stopped by a flag, not by cancelling it: a cancellation that meets a finished wait
        # can be lost (asyncio.wait_for in 3.11), and the writer would then wait forever.
        await self._stop(writer)
        return await self._end()

    async def _stop(self, writer: asyncio.Task[None]) -> None:
        """Let the writer finish the write it is in, then end it."""
        self.closing = True
        self.wake.set()
        try:
            await writer
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # results it held go in the last write, or stay in doubt
            self._write_failed("record results", exc)

    def _ended(self, end: asyncio.Future[bool]) -> None:
        if not end.cancelled() and (exc := end.exception()) is not None:
            self._write_failed("end chunk", exc)

    def _write_failed(self, what: str, exc: BaseException) -> None:
        """A chunk write given up: never silent. The chunk's next holder settles what it
        did not record (in doubt, by the guarantee), but an operator must see it happen."""
        metrics.CHUNK_WRITE_FAILURES.labels(self.sender.label, what, type(exc).__name__).inc()
        log.warning(
            "chunk write failed: %s: %s",
            what,
            exc,
            extra={"chunk": self.id, "op": what, "error": type(exc).__name__},
        )

    async def _settle(self) -> None:
        """What earlier holders left: doubt (by the guarantee), hand-backs (sent again)."""
        doubt = ledger.in_doubt(self.chunk)
        self.handed = set(ledger.handed_back(self.chunk))
        unknown = doubt if self.guarantee == Guarantee.AT_MOST_ONCE else []
        self.retry = sorted(self.handed | set(doubt) - set(unknown))
        if unknown:
            log.info("chunk in doubt settled", extra={"chunk": self.id, "n": len(unknown)})
            metrics.RESULTS.labels(self.sender.label, "unknown").inc(len(unknown))
        self.mark.doubt = len(self.retry)
        await self._write(unknown=unknown, reopen=sorted(self.handed))

    async def _end(self) -> bool:
        """The last write: results, then the chunk done, resting until due, or given back."""
        started = self.next  # positions from here on were never started: `hi` comes back
        left = [p for p in self.retry if p in self.handed]
        # Hand-backs not resent yet stay hand-backs; doubt not resent stays in doubt, and so
        # do sends cancelled mid-way (still in `sending`).
        results = self.unrecorded + [Result(p, HANDED_BACK, "handed back", 0) for p in left]
        self.unrecorded = []
        open_left = any(r.status == HANDED_BACK for r in results) or self.retry or self.sending
        done = started >= self.size and not open_left
        due: datetime | None = None
        if not done:
            if self.rest_until is not None:
                due = self.rest_until
            elif self.dues and started < self.size and not open_left:
                due = self.dues[started]
            else:
                due = self.store.now()
        end: UnitEnd = DONE if done else QUEUED
        counters = ledger.tally(self.counters, (r.status for r in results))
        self.lease = await self._call(
            lambda: self.store.write_chunk(
                self.lease, results=results, counters=counters, hi=started, end=end, due=due
            ),
            "end chunk",
        )
        self.counters = counters
        self._count(results)
        return done

    # -- lanes ----------------------------------------------------------------------------

    async def _take(self) -> int | None:
        """The next position this lane may send, or None when the chunk's work ends here."""
        while True:
            if self.halt():
                return None
            if self.retry:
                p = self.retry.pop(0)
                self.handed.discard(p)
                return p
            if self.next >= self.size:
                return None
            # Due first, then room: `hi` only ever covers positions that are due.
            wait = self._until_due(self.next)
            if wait > HOLD_SECONDS:
                self.rest_until = self.dues[self.next] if self.dues else None
                return None
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            if self.next < self.mark.hi:
                p, self.next = self.next, self.next + 1
                return p
            self.starved = True
            self.moved.clear()
            self.wake.set()
            await self.moved.wait()

    def _until_due(self, p: int) -> float:
        if not self.dues:
            return 0.0
        return (self.dues[p] - self.store.due_by()).total_seconds()

    async def _lane(self) -> None:
        bucket = self.sender.bucket
        while True:
            # The rate token first, then a position: a lane never holds a position while it
            # waits for its turn, so nothing is sent after a halt (a window closing, a
            # pause) that came during the wait, and `hi` runs ahead of sends by no more.
            if self.next + self.waiting >= self.size and not self.retry:
                # Every position left already has a lane waiting for its token: another
                # token would pass unused, and the chunk would idle until it had.
                return
            self.waiting += 1
            try:
                use_by = await bucket.acquire()
            finally:
                self.waiting -= 1
            if (p := await self._take()) is None:
                bucket.refund()
                return
            if time.monotonic() > use_by and not await self._fresh_token(p):
                continue  # halted meanwhile: the position went back
            attrs = self.attrs[p] if self.attrs else {}
            self.sending.add(p)
            result = await self.sender.send(p, self.users[p], attrs, token_taken=True)
            self.sending.discard(p)
            self.unrecorded.append(result)
            n = len(self.unrecorded)
            if n == 1 or n >= self.record_every or self.starved:
                self.wake.set()

    async def _fresh_token(self, p: int) -> bool:
        """The lane's token waited with it for room (or for a due time) and its moment
        passed unused: sent now, it would bunch up with the sends on time, and the receiver
        counts every second. A fresh token keeps the spacing. False (the position handed
        back, to be sent by whoever sends next) when a halt came meanwhile."""
        try:
            await self.sender.bucket.acquire()
        except asyncio.CancelledError:
            self._give_back(p)
            raise
        if self.halt():
            self._give_back(p)
            return False
        return True

    def _give_back(self, p: int) -> None:
        """A position taken but never sent: a hand-back, like one cut short at shutdown."""
        self.retry.insert(0, p)
        self.handed.add(p)

    # -- the writer -----------------------------------------------------------------------

    def _write_due(self) -> bool:
        n = len(self.unrecorded)
        if n >= self.record_every or (n and time.monotonic() - self.last_write >= RECORD_SECONDS):
            return True
        # The lanes wait for room. While sends are in flight their results are worth
        # waiting for: they come within a send's latency, and an early write frees less
        # than it costs (writing at a quarter of the batch instead, measured at 100,000
        # with 1, 2 and 4 workers: as fast or slower, and 0.041-0.052 store documents a
        # recipient instead of 0.030-0.036). With none in flight, write what there is, or
        # just move `hi` if the window has room.
        if not self.starved or self.sending:
            return False
        return bool(n or self.mark.has_room())

    async def _writer(self) -> None:
        while not self.closing:
            timeout = None  # nothing to record: sleep until a lane has something
            if self.unrecorded:
                timeout = max(0.0, self.last_write + RECORD_SECONDS - time.monotonic())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.wake.wait()
            self.wake.clear()
            if not self.closing and self._write_due():
                await self._write()

    async def _write(
        self, unknown: list[int] | None = None, reopen: list[int] | None = None
    ) -> None:
        results, self.unrecorded = self.unrecorded, []
        limit = ledger.first_not_due(self.dues, self.mark.hi, self.size, self.store.due_by())
        hi = self.mark.next_hi(len(results), limit)
        counters = ledger.tally(self.counters, (r.status for r in results), len(unknown or ()))
        try:
            self.lease = await self._call(
                lambda: self.store.write_chunk(
                    self.lease,
                    results=results,
                    counters=counters,
                    unknown=unknown or (),
                    reopen=reopen or (),
                    hi=hi,
                ),
                "record results",
            )
        except BaseException:
            self.unrecorded = results + self.unrecorded  # for the last write to try again
            raise
        self._count(results)
        self.counters = counters
        self.mark.moved(len(results), hi)
        self.last_write = time.monotonic()
        self.starved = False
        self.moved.set()

    def _count(self, results: list[Result]) -> None:
        counted: dict[str, int] = {}
        for r in results:
            if r.status != HANDED_BACK:
                counted[r.status] = counted.get(r.status, 0) + 1
        for status, n in counted.items():
            metrics.RESULTS.labels(self.sender.label, status).inc(n)
