"""A token bucket for one worker, shared by all of its concurrent senders.

Implemented as a virtual schedule (GCRA): each acquire reserves the next free slot, so
waiters are served in order, a sleeping sender holds no lock, and the long-run rate is
exact however many senders there are. After idling, up to ``burst`` tokens, and at least
``catch_up`` seconds' worth, may be spent at once: short pauses of the sender (a result
write, a claim) are made up instead of lost, so the measured rate stays on target.
The rate changes live (the worker's rate share sets it at each of its beats).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol


class Limiter(Protocol):
    """What the senders take a token from: a TokenBucket, or the worker's RateShare."""

    async def acquire(self) -> float: ...

    def refund(self) -> None: ...


# A token is for its moment: used later than this (or two intervals) after it, the moment
# has passed unused, and sending then would bunch up with the sends on time.
GRACE_SECONDS = 0.02
# No token is reserved further ahead than this: a change of rate (another worker joining
# or leaving, a new allocation) applies to every send after it. With 64 lanes each
# holding a reservation, a share of 37.5/s (300/s among 8 workers) reached 1.7 s ahead:
# sends reserved at a wider share then overlapped a joiner's, or a widened share's new
# reservations overlapped the old ones (a burst at the receiver).
HORIZON_SECONDS = 0.1


class TokenBucket:
    def __init__(
        self,
        rate: float | None,
        *,
        burst: float = 1.0,
        catch_up: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._burst_min = max(1.0, burst)
        self._catch_up = max(0.0, catch_up)
        self._burst = self._burst_min
        self._rate: float | None = None
        self._next = clock()  # the earliest time the next token is free
        self.set_rate(rate)

    @property
    def rate(self) -> float | None:
        """Tokens per second; None = unlimited."""
        return self._rate

    def set_rate(self, rate: float | None) -> None:
        rate = rate if rate is not None and rate > 0 else None
        if rate == self._rate:
            return
        self._burst = max(self._burst_min, (rate or 0.0) * self._catch_up)
        now = self._clock()
        if rate is not None and self._rate is not None:
            # Keep the backlog already promised, rescaled to the new rate.
            backlog = max(0.0, self._next - now) * self._rate / rate
            self._next = now + backlog
        else:
            self._next = now
        self._rate = rate

    def reserve(self) -> float:
        """Take one token; return how long the caller must wait before using it."""
        if self._rate is None:
            return 0.0
        now = self._clock()
        interval = 1.0 / self._rate
        # Idle time accrues at most `burst` tokens.
        earliest = now - (self._burst - 1.0) * interval
        slot = max(self._next, earliest)
        self._next = slot + interval
        return max(0.0, slot - now)

    def refund(self) -> None:
        """Give back a token taken but not used (a sender that found no work after its
        wait): the next taker gets its slot, so the long-run rate stays exact."""
        if self._rate is not None:
            self._next -= 1.0 / self._rate

    async def acquire(self) -> float:
        """Wait for a token; return the monotonic time by which it should be used (inf
        without a rate)."""
        while self._rate is not None:
            ahead = self._next - self._clock()
            if ahead <= HORIZON_SECONDS:
                break
            await asyncio.sleep(ahead - HORIZON_SECONDS)
        delay = self.reserve()
        if self._rate is None:
            return float("inf")
        use_by = self._clock() + delay + max(GRACE_SECONDS, 2.0 / self._rate)
        if delay > 0:
            await asyncio.sleep(delay)
        return use_by
