"""The worker's token bucket (a virtual schedule) on a fake clock."""

from __future__ import annotations

import asyncio
import time

from pushtask_worker.ratelimit import TokenBucket


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_unlimited_never_waits() -> None:
    bucket = TokenBucket(None, clock=Clock())
    assert all(bucket.reserve() == 0 for _ in range(1000))
    bucket.set_rate(0)
    assert bucket.rate is None


def test_reservations_are_spaced_by_the_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(10, clock=clock)
    waits = [bucket.reserve() for _ in range(5)]
    assert all(abs(w - 0.1 * i) < 1e-9 for i, w in enumerate(waits)), waits


def test_burst_after_idle_is_capped() -> None:
    clock = Clock()
    bucket = TokenBucket(10, burst=3, catch_up=0, clock=clock)
    bucket.reserve()
    clock.t += 100  # idle a long time: only `burst` tokens accrue
    waits = [bucket.reserve() for _ in range(5)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert abs(waits[3] - 0.1) < 1e-9


def test_rate_change_rescales_the_backlog() -> None:
    clock = Clock()
    bucket = TokenBucket(10, clock=clock)
    for _ in range(11):
        bucket.reserve()  # 1 s of backlog at 10/s
    bucket.set_rate(20)  # the same tokens now take 0.5 s
    assert abs(bucket.reserve() - 0.55) < 1e-9


def test_real_rate_with_many_concurrent_senders() -> None:
    async def go() -> float:
        bucket = TokenBucket(200)
        n = 0

        async def sender() -> None:
            nonlocal n
            while True:
                await bucket.acquire()
                n += 1

        tasks = [asyncio.create_task(sender()) for _ in range(20)]
        start = time.monotonic()
        await asyncio.sleep(1.0)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return n / (time.monotonic() - start)

    rate = asyncio.run(go())
    assert 180 <= rate <= 220, rate


def test_catch_up_makes_short_pauses_good() -> None:
    clock = Clock()
    bucket = TokenBucket(100, catch_up=0.25, clock=clock)
    bucket.reserve()
    clock.t += 0.2  # a 200 ms pause of the sender: the 20 tokens it owes are made up
    waits = [bucket.reserve() for _ in range(21)]
    assert waits[:20] == [0.0] * 20 and waits[20] > 0
    clock.t += 10  # a long idle: only 25 tokens
    waits = [bucket.reserve() for _ in range(26)]
    assert waits[:25] == [0.0] * 25 and waits[25] > 0


def test_a_refunded_token_goes_to_the_next_taker() -> None:
    bucket = TokenBucket(10.0, catch_up=0, clock=Clock())
    assert bucket.reserve() == 0.0
    assert abs(bucket.reserve() - 0.1) < 1e-9
    bucket.refund()  # the second taker found no work: its slot is free again
    assert abs(bucket.reserve() - 0.1) < 1e-9
    assert abs(bucket.reserve() - 0.2) < 1e-9
    TokenBucket(None).refund()  # unlimited: nothing to give back


def test_a_token_is_for_its_moment() -> None:
    async def go() -> tuple[float, float, float]:
        unlimited = await TokenBucket(None).acquire()
        bucket = TokenBucket(10)  # an interval of 0.1 s: two of them of grace
        first = await bucket.acquire()
        started = time.monotonic()
        return unlimited, first - started, await bucket.acquire() - time.monotonic()

    unlimited, first, second = asyncio.run(go())
    assert unlimited == float("inf")  # no rate: never late
    assert 0.15 < first <= 0.2 + 1e-3  # the first token is for now: usable for 0.2 s
    assert 0.15 < second <= 0.2 + 1e-3  # the next, after its wait, for 0.2 s from then
