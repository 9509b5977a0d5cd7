"""The rate share on a real MongoDB-wire server: senders that join, leave and freeze never
hold shares that add up to more than the task's rate.

Several RateShares in one process, each with its own Store (its own connection), beating
fast; a sampler checks the invariant every few milliseconds: the shares of the senders
allowed to send add up to at most the rate.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from pushtask.store import Store
from pushtask_worker.rateshare import RateShare

pytestmark = pytest.mark.integration

RATE = 600.0
BEAT = 0.1
SLOT = 1.5
RUN = "ns.t.1.abcdef12"


async def _stores(uri: str, n: int) -> list[Store]:
    stores = [Store.connect(uri) for _ in range(n)]
    for s in stores:
        await s.sync_clock()
    return stores


def _open_total(shares: list[RateShare]) -> float:
    return sum(s.rate or 0.0 for s in shares if s.open())


async def _until(check: Callable[[], bool], within: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out: {what}"
        await asyncio.sleep(0.01)


async def _watching(shares: list[RateShare], body: Callable[[], Awaitable[None]]) -> float:
    """Run `body` while sampling the invariant; the highest open total seen."""
    worst = 0.0

    async def sample() -> None:
        nonlocal worst
        while True:
            total = _open_total(shares)
            worst = max(worst, total)
            assert total <= RATE * 1.0001, [(s.worker_id, s.open(), s.rate) for s in shares]
            await asyncio.sleep(0.003)

    sampler = asyncio.create_task(sample())
    try:
        await body()
        await asyncio.sleep(0)
        if sampler.done():
            sampler.result()  # the invariant broke: raise its assertion
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    return worst


def test_joiners_leavers_and_a_frozen_sender_never_exceed_the_rate(uri: str) -> None:
    async def scenario() -> None:
        stores = await _stores(uri, 4)
        await stores[0]._runs.insert_one({"_id": RUN, "control": {"ratePerSecond": RATE}})
        shares = [
            RateShare(s, RUN, f"w{i}", beat_seconds=BEAT, slot_seconds=SLOT)
            for i, s in enumerate(stores)
        ]
        a, b, c, d = shares

        async def story() -> None:
            await a.join()
            await _until(a.open, 5, "a alone opens")
            assert a.rate == RATE  # alone: the whole rate
            # Two join at once (a run's start, a scale-up): neither sends before a counts them.
            await b.join()
            await c.join()
            await _until(lambda: b.open() and c.open(), 5, "b and c open")
            await _until(lambda: a.rate == RATE / 3, 5, "a narrowed")
            assert b.rate == c.rate == RATE / 3
            # The tail: c has nothing more to send; a and b widen within a beat or two.
            await c.leave()
            await _until(lambda: a.rate == b.rate == RATE / 2, 4 * BEAT + 0.5, "a, b widened")
            # b freezes (SIGSTOP): it stops beating without leaving. It stops sending before
            # its registration lapses; once lapsed, a takes the whole rate.
            loop = b._loop
            assert loop is not None
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
            await _until(lambda: not b.open(), SLOT, "frozen b stops sending")
            await _until(lambda: a.rate == RATE, SLOT + 2, "a takes b's lapsed share")
            # d joins late while a sends the whole rate.
            await d.join()
            await _until(d.open, 5, "late d opens")
            assert a.rate == d.rate == RATE / 2

        worst = await _watching(shares, story)
        assert worst == pytest.approx(RATE)
        for s in shares:
            await s.leave()
        for st in stores:
            await st.close()

    asyncio.run(scenario())


def test_without_a_rate_nothing_waits(uri: str) -> None:
    async def scenario() -> None:
        (store,) = await _stores(uri, 1)
        await store._runs.insert_one({"_id": RUN, "control": {}})
        share = RateShare(store, RUN, "w0", beat_seconds=BEAT, slot_seconds=SLOT)
        await share.join()
        await asyncio.wait_for(share.acquire(), 2)
        assert share.rate is None
        await share.leave()
        senders: Any = await store.rate_beat(RUN, "probe", store.now())
        assert "w0" not in senders[0]
        await store.close()

    asyncio.run(scenario())
