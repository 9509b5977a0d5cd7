"""The store's clock: the one clock every lease, heartbeat and due time is judged on.

Machines disagree about the time (NTP down, a VM resumed from suspend, a node seconds or
minutes off). A lease written as "until 12:00:30" by one worker and judged against another
worker's wall clock is stolen early or held forever; a heartbeat written by a slow clock
looks stale. So no process compares its own wall clock with another's: each one reads the
store's clock (MongoDB's `hello` reply carries the server's `localTime`) and carries it
between readings on its own monotonic clock, which no one else ever sees. Every time
written to the store and every expiry judged against it is then on the store's clock, and
two processes agree to within their round trips to the store.

A process that has not read the store's clock yet uses its own wall clock (a test without
a store, a fresh process before its first call).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

# A reading is worth keeping while it is younger than this, if a fresher one came with a
# much slower round trip (a loaded store): its midpoint would be further off.
KEEP_SECONDS = 60.0
# ...unless the fresher reading's round trip is at most this much longer.
RTT_SLACK = 0.05
# The server's time comes in whole milliseconds (BSON dates), cut short, not rounded.
RESOLUTION = 0.001


class StoreClock:
    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._mono = monotonic
        self._base: datetime | None = None  # the store's time at monotonic `_at`
        self._at = 0.0
        self._rtt = float("inf")

    @property
    def synced(self) -> bool:
        return self._base is not None

    @property
    def uncertainty(self) -> float:
        """Half the round trip of the reading in use: how far off `now()` may be."""
        return self._rtt / 2 if self.synced else float("inf")

    def now(self) -> datetime:
        if self._base is None:
            return datetime.now(UTC)
        return self._base + timedelta(seconds=self._mono() - self._at)

    def earliest(self) -> datetime:
        """The earliest the store's time may be now: what "due yet?" is judged by, so that
        nothing is sent before its time by the store's clock."""
        if self._base is None:
            return datetime.now(UTC)
        return self.now() - timedelta(seconds=self.uncertainty + RESOLUTION)

    def observe(self, server_time: datetime, sent: float, received: float) -> None:
        """A reading of the server's time taken between monotonic `sent` and `received`."""
        rtt = max(0.0, received - sent)
        if self._base is not None:
            young = received - self._at < KEEP_SECONDS
            if young and rtt > self._rtt + RTT_SLACK:
                return  # a worse estimate than the one in use
        if server_time.tzinfo is None:
            server_time = server_time.replace(tzinfo=UTC)
        # The server read its clock somewhere in the round trip: the midpoint errs least;
        # its milliseconds were cut short, so half a millisecond is added back.
        self._base = server_time + timedelta(seconds=RESOLUTION / 2)
        self._at = (sent + received) / 2
        self._rtt = rtt

    async def sync(self, read: Callable[[], Awaitable[datetime | None]]) -> None:
        """Take one reading with `read` (the store's time, or None when it has none)."""
        sent = self._mono()
        server_time = await read()
        received = self._mono()
        if server_time is not None:
            self.observe(server_time, sent, received)
