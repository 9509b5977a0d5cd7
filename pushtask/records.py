"""What the ledger gives back, as plain records (pure: no store, no I/O).

A recipient's `Result` after its sends, a run's `RunTotals` summed over its splits and
chunks, and one user's `RecipientState` in a run. The store makes them from its
documents; the operator's progress, the tools and the console read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal

# A recipient whose retries a shutdown cut short, given back unsent for the next holder to
# send again: not a result, so counted nowhere.
HANDED_BACK: Final = "handed back"


@dataclass(frozen=True)
class Result:
    """A recipient's result after its sends: final (sent, failed), or handed back when its
    retries were cut short by the worker shutting down (a later holder sends it again)."""

    position: int
    status: Literal["sent", "failed", "handed back"]
    error: str | None = None
    attempts: int = 1


@dataclass(frozen=True)
class RunTotals:
    """Counters of a run summed over its splits and chunks (what status.counts is made of)."""

    stage: str
    inserted: int  # rows staged by the audience splits (before deduplication)
    skipped: int
    sent: int
    failed: int
    unknown: int
    attempted: int
    total: int  # distinct recipients after exclusions, known shard by shard as they seal
    excluded: int  # distinct users audience.exclude removed, shard by shard as they seal
    duplicates: int  # rows of a user already found, dropped as the shards seal
    splits_open: int

    @property
    def audience(self) -> int:
        recipients = self.inserted if self.stage in ("audience", "seal") else self.total
        return recipients + self.skipped

    @property
    def pending(self) -> int:
        return max(0, self.audience - self.skipped - self.sent - self.failed - self.unknown)

    def budget_spent(self, ratio: float, min_sample: int) -> str | None:
        """Why the run's error budget is spent (more than `ratio` of the attempted sends
        failed, once `min_sample` were attempted), or None while it is not."""
        if self.attempted < min_sample or self.failed / self.attempted <= ratio:
            return None
        return (
            f"failure budget spent: {self.failed} of {self.attempted} sends failed "
            f"(more than {ratio:.0%})"
        )


@dataclass(frozen=True)
class RecipientState:
    """What happened to one user in one run (`kubectl push recipient`)."""

    run_id: str
    user: str
    # pending (not started) | in flight | in doubt | sent | failed | unknown | handed back
    status: str
    attempts: int
    error: str | None
    at: datetime | None
    worker: str | None
    chunk: str
    position: int
    due: datetime | None


@dataclass(frozen=True)
class ClickTotals:
    """A run's tracked clicks, summed over its click counters (status.clicks)."""

    clicks: int  # unique (user, link) pairs
    clickers: int  # unique users
    by_link: dict[int, int]  # link index -> unique users who clicked it

    def click_through(self, sent: int) -> str:
        """Clickers per delivered message, as status shows it: "2.5%"."""
        return f"{100 * self.clickers / sent:.1f}%" if sent > 0 else "0.0%"


@dataclass(frozen=True)
class ConversionTotals:
    """A run's conversions, summed over its conversion counters (status.conversions)."""

    by_event: dict[str, int]  # event name -> recipients who converted

    def status(self, sent: int) -> list[dict[str, object]]:
        """status.conversions: each event's count and rate per sent message, by name."""
        return [
            {"event": event, "count": n, "rate": f"{100 * n / sent:.1f}%" if sent else "0.0%"}
            for event, n in sorted(self.by_event.items())
        ]
