"""A token bucket for one worker, shared by all of its concurrent senders.

Implemented as a virtual schedule (GCRA): each acquire reserves the next free slot, so
waiters are served in order, a sleeping sender holds no lock, and the long-run rate is
exact however many senders there are. After idling, up to ``burst`` tokens, and at least
``catch_up`` seconds' worth, may be spent at once: short pauses of the sender (a result
write, a claim) are made up instead of lost, so the measured rate stays on target.
The rate changes live (the worker re-reads it at each heartbeat).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


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

    async def acquire(self) -> None:
        delay = self.reserve()
        if delay > 0:
            await asyncio.sleep(delay)
