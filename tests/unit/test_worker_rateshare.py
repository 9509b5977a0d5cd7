"""The rate share's rules, and the store clock, without a store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pushtask.clock import StoreClock
from pushtask_worker.rateshare import barrier_passed, share_of
from tests.support.persecond import per_second, worst_window


def test_share_is_the_rate_split_among_the_registered_senders() -> None:
    assert share_of(600, 3) == 200
    assert share_of(600, 0) == 600  # itself, before its first reading
    assert share_of(None, 3) is None
    assert share_of(0, 3) is None


def test_the_barrier_waits_for_two_beats_of_every_sender_seen_at_join() -> None:
    at_join = {"a": 5, "b": 9}
    assert not barrier_passed(at_join, {"a": 6, "b": 11})  # a beat once: may not know yet
    assert not barrier_passed(at_join, {"a": 7, "b": 10})
    assert barrier_passed(at_join, {"a": 7, "b": 11})
    assert barrier_passed(at_join, {"a": 7})  # b left or lapsed: nothing to wait for
    assert barrier_passed({}, {"c": 1})  # alone at join: a newer joiner waits for us
    assert not barrier_passed(at_join, {"a": 5, "b": 9, "c": 40})


HALF_MS = timedelta(seconds=0.0005)


class Mono:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_the_store_clock_is_carried_on_the_monotonic_clock() -> None:
    mono = Mono()
    clock = StoreClock(mono)
    assert not clock.synced
    server = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    # The server's time was read somewhere in the round trip 100.0-100.2: its midpoint.
    # The server's milliseconds are cut short: half of one is added back.
    clock.observe(server - HALF_MS, 100.0, 100.2)
    mono.t = 100.1
    assert clock.now() == server
    mono.t = 160.1
    assert clock.now() == server + timedelta(seconds=60)
    assert abs(clock.uncertainty - 0.1) < 1e-9


def test_a_reading_with_a_much_slower_round_trip_does_not_replace_a_good_one() -> None:
    mono = Mono()
    clock = StoreClock(mono)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    clock.observe(t0 - HALF_MS, 100.0, 100.002)
    clock.observe(t0 + timedelta(seconds=30), 110.0, 115.0)  # 5 s round trip: worse
    mono.t = 110.001
    assert clock.now() == t0 + timedelta(seconds=10)
    # ...but an old reading gives way even to a slow one (the server clock may be stepped).
    clock.observe(t0 + timedelta(seconds=100) - HALF_MS, 190.0, 190.5)
    mono.t = 190.25
    assert clock.now() == t0 + timedelta(seconds=100)
    # Due times are judged by the earliest the store's time may be.
    assert clock.earliest() == clock.now() - timedelta(seconds=0.25 + 0.001)


def test_a_naive_server_time_is_taken_as_utc() -> None:
    mono = Mono()
    clock = StoreClock(mono)
    clock.observe(datetime(2026, 1, 1, 12), 100.0, 100.0)
    assert clock.now().tzinfo is UTC


def test_per_second_counts_whole_seconds_from_the_first_arrival() -> None:
    times = [10.0, 10.5, 10.99, 11.0, 11.2, 12.1, 12.4]
    assert per_second(times) == [3, 2]  # second 2 (12.0-12.4) is the partial last one
    assert per_second([]) == []
    assert worst_window([0.0, 0.9, 1.0, 1.5, 1.8]) == 4
