"""Crash-loop back-off: immediate first restart, then base doubling to the cap."""

from devstack.kubelet.backoff import Backoff


def test_doubles_to_the_cap() -> None:
    b = Backoff(base=10, cap=300)
    delays = [b.next_delay(ran_for=1) for _ in range(9)]
    assert delays == [0, 10, 20, 40, 80, 160, 300, 300, 300]


def test_scaled_down_for_tests() -> None:
    b = Backoff(base=1, cap=4)
    assert [b.next_delay(0) for _ in range(5)] == [0, 1, 2, 4, 4]


def test_a_long_run_resets_it() -> None:
    b = Backoff(base=1, cap=4)  # resets after 8 s of running
    for _ in range(4):
        b.next_delay(0)
    assert b.next_delay(ran_for=9) == 0
    assert b.next_delay(ran_for=0) == 1
