"""This worker's share of its task's rate, agreed with the task's other senders.

`spec.rate.perSecond` holds for the whole task at the receiver, at every second, from the
first send. A share read from heartbeats every ten seconds let each worker of a starting
run take the whole rate (3x with 3 workers, measured), so the senders agree through the
store instead, on a beat of their own:

- A worker that holds delivery work is *registered*: its worker document says it sends
  until a time on the store's clock (`SLOT_SECONDS` ahead), renewed every `BEAT_SECONDS`,
  with a counter (`rateBeat`) that every renewal increments. Each beat also reads who is
  registered and the run's allocated rate: the share is rate / senders.
- A worker that joins sends nothing until every sender it found registered has beaten
  twice since it joined (or lapsed): each of them has then counted it and narrowed its
  own share, and what they had reserved at the wider share has been spent. So a joiner
  (a run's start, a resume, a scale-up, a late pod) never adds its share on top of shares
  that do not know it yet. The judgement uses only counters this worker saw change, not
  clocks.
- A worker that has nothing more to send leaves at once: the others widen at their next
  beat, so a run's tail gets the whole rate back within a beat.
- A worker that cannot beat (a slow or absent store, a process frozen by SIGSTOP) stops
  sending before its registration could lapse in the others' eyes, and joins again.
- A lost worker's registration lapses after `SLOT_SECONDS`: until then the others count it
  and send less than the rate, never more.

Without a rate (no `perSecond` and no operator-wide budget) nothing waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from pushtask_worker import metrics
from pushtask_worker.ratelimit import TokenBucket

log = logging.getLogger("pushtask.worker")

BEAT_SECONDS = 0.5
SLOT_SECONDS = 10.0
# A registration lasts at least this many beats' round trips: on a store slow to answer
# (seconds a call) the answer to a beat must come back well before it lapses.
SLOT_BEATS = 4
# A registration this close to lapsing (on the store's clock) stops this worker's sends:
# a beat's reply that comes this late may already be past the others' judgement.
LAPSE_MARGIN = 3.0
# Beats each registered sender must make after a worker joins before it sends.
BARRIER_BEATS = 2
# Credit for short pauses of the sender (a result write, a claim), spent at once after
# them: small, since every second at the receiver counts, not only the mean.
CATCH_UP_SECONDS = 0.05


class RateStore(Protocol):
    def now(self) -> datetime: ...

    async def rate_beat(
        self, run_id: str, worker_id: str, until: datetime | None, applied: float | None = None
    ) -> tuple[dict[str, int], float | None]: ...


# -- the pure rules -------------------------------------------------------------------


def share_of(rate: float | None, senders: int) -> float | None:
    """This worker's part of the task's rate, among `senders` registered ones (itself
    included)."""
    if rate is None or rate <= 0:
        return None
    return rate / max(1, senders)


def barrier_passed(
    at_join: Mapping[str, int], now: Mapping[str, int], beats: int = BARRIER_BEATS
) -> bool:
    """Every sender registered when this worker joined has beaten `beats` times since,
    or is gone: each of them counts this worker in its share."""
    return all(now.get(w, seen + beats) >= seen + beats for w, seen in at_join.items())


@dataclass
class View:
    """What the last beat read."""

    others: dict[str, int]  # registered senders besides this worker -> their beat counter
    rate: float | None  # the task's allocated rate (None: unlimited)
    until: datetime  # this worker's registration lasts until then (store clock)


class RateShare:
    """Registration, the join barrier, and the token bucket at this worker's share.

    Has the token bucket's interface (`acquire`, `refund`) for the senders."""

    def __init__(
        self,
        store: RateStore,
        run_id: str,
        worker_id: str,
        label: str = "",
        *,
        beat_seconds: float = BEAT_SECONDS,
        slot_seconds: float = SLOT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store, self.run_id, self.worker_id, self.label = store, run_id, worker_id, label
        self.beat_seconds, self.slot_seconds = beat_seconds, slot_seconds
        self.bucket = TokenBucket(None, burst=1.0, catch_up=CATCH_UP_SECONDS, clock=clock)
        self.view: View | None = None
        self.at_join: dict[str, int] | None = None  # None: not registered
        self.passed = False
        self.changed = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._beat_took = 0.0  # how long the last beat's round trips took (monotonic)
        self._mono = clock

    # -- what the senders call ----------------------------------------------------------

    def open(self) -> bool:
        """May this worker send now: registered, past the barrier, not about to lapse, or
        the task has no rate at all."""
        v = self.view
        if v is None or self.at_join is None:
            return False
        if v.rate is None:
            return True
        if v.rate <= 0:
            return False  # nothing allocated yet: the budget is still changing hands
        margin = timedelta(seconds=min(LAPSE_MARGIN, self.slot_seconds / 3))
        return self.passed and self.store.now() < v.until - margin

    def slot(self) -> float:
        """How long a registration lasts: `slot_seconds`, or longer on a slow store."""
        return max(self.slot_seconds, SLOT_BEATS * self._beat_took)

    async def acquire(self) -> float:
        while not self.open():
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), self.beat_seconds)
        return await self.bucket.acquire()

    def refund(self) -> None:
        self.bucket.refund()

    @property
    def rate(self) -> float | None:
        return self.bucket.rate

    # -- joining and leaving ------------------------------------------------------------

    async def join(self) -> None:
        """Register as a sender (a no-op when registered); sends wait for the barrier."""
        if self._loop is not None and not self._loop.done():
            return
        self.at_join, self.passed, self.view = None, False, None
        self._loop = asyncio.create_task(self._beats(), name="rate-share")

    async def leave(self) -> None:
        """No more sending for now: the others get this worker's share at their next beat."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await loop
        was_registered = self.at_join is not None
        self.at_join, self.passed, self.view = None, False, None
        self.bucket.set_rate(None)
        metrics.RATE.labels(self.label).set(0)
        if was_registered:
            with contextlib.suppress(Exception):
                await self.store.rate_beat(self.run_id, self.worker_id, None)

    # -- the beat -----------------------------------------------------------------------

    async def beat(self) -> None:
        """One renewal and reading; then what may be sent, at what share."""
        until = self.store.now() + timedelta(seconds=self.slot())
        # Reports the task rate it sends by until this beat's answer: what it may still use.
        applied = self.view.rate if self.view is not None else None
        started = self._mono()
        senders, rate = await self.store.rate_beat(self.run_id, self.worker_id, until, applied)
        self._beat_took = self._mono() - started
        others = {w: n for w, n in senders.items() if w != self.worker_id}
        if self.at_join is None or (self.view is not None and not self._still_registered()):
            # First beat, or a registration that lapsed meanwhile (a frozen process): the
            # others may have stopped counting this worker, so it joins anew.
            self.at_join, self.passed = dict(others), False
        was_open = self.open()
        self.view = View(others=others, rate=rate, until=until)
        if not self.passed and barrier_passed(self.at_join, others):
            self.passed = True
        share = share_of(rate, len(others) + 1)
        if share is not None and not was_open and self.open():
            # Opening: no credit from before (a fresh bucket would spend its burst at once).
            self.bucket.set_rate(None)
        self.bucket.set_rate(share)
        metrics.RATE.labels(self.label).set(share or 0)
        self.changed.set()

    def _still_registered(self) -> bool:
        v = self.view
        return v is not None and self.store.now() < v.until

    async def _beats(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self.beat()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the store away: sends stop once the view lapses
                log.warning("rate beat failed", extra={"error": str(error)})
                self.changed.set()
            await asyncio.sleep(max(0.0, self.beat_seconds - (loop.time() - started)))
