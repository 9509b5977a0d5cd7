"""Progress of a run, from what MongoDB and the Deployment say (pure: no I/O).

The operator's timer reads the facts (split counters summed by the store, heartbeats,
leased splits, the Deployment's status) and this module turns them into the counts,
rate, eta and worker numbers of `status`, plus the facts the state machine needs: is the
run finished, has it failed, is a worker lost, are leases orphaned.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pushtask.models import Counts
from pushtask.records import ClickTotals, ConversionTotals, RunTotals

# How far back the send rate looks: long enough to smooth batches, short enough that
# a pause shows as a falling rate within a few ticks.
RATE_WINDOW_SECONDS = 30.0
# Clicks and conversions keep coming after a run ends: the operator keeps reading a
# tracked run's counters this often, for CLICKS_WINDOW or the task's conversion window
# (the longer) after the run ended (a few small documents a read).
CLICKS_WINDOW = timedelta(days=7)
CLICKS_REFRESH_SECONDS = 10.0


def done(counts: Counts) -> int:
    """Recipients with a final result (what the rate is measured on)."""
    return counts.sent + counts.failed + counts.unknown


def counts_from_totals(totals: RunTotals) -> Counts:
    """status.counts from the run's totals (the pending formula is RunTotals' own)."""
    return Counts(
        audience=totals.audience,
        pending=totals.pending,
        sent=totals.sent,
        failed=totals.failed,
        skipped=totals.skipped,
        unknown=totals.unknown,
        excluded=totals.excluded,
        duplicates=totals.duplicates,
    )


def tracks_links(run_doc: Mapping[str, Any] | None) -> bool:
    """The run's frozen spec tracks link clicks."""
    message = ((run_doc or {}).get("spec") or {}).get("message") or {}
    return bool((message.get("tracking") or {}).get("links"))


def tracks_conversions(run_doc: Mapping[str, Any] | None) -> bool:
    """The run's frozen spec has a tracking block: the tracker takes its conversions."""
    message = ((run_doc or {}).get("spec") or {}).get("message") or {}
    return message.get("tracking") is not None


def click_fields(clicks: ClickTotals, sent: int) -> dict[str, Any]:
    """status.clicks, clickers and clickThrough (clickers per delivered message)."""
    return {
        "clicks": clicks.clicks,
        "clickers": clicks.clickers,
        "clickThrough": clicks.click_through(sent),
    }


def still_tracked(
    status: Mapping[str, Any], now: datetime, conversion_window: timedelta = CLICKS_WINDOW
) -> bool:
    """A run that ended is still read for clicks and conversions: it tracks them (its
    status shows them) and ended less than CLICKS_WINDOW or the conversion window ago."""
    if not status.get("runId") or (
        status.get("clicks") is None and status.get("conversions") is None
    ):
        return False
    finished = status.get("finishedAt")
    if not finished:
        return True
    if not isinstance(finished, datetime):
        finished = datetime.fromisoformat(str(finished).replace("Z", "+00:00"))
    return now - finished < max(CLICKS_WINDOW, conversion_window)


@dataclass
class RateTracker:
    """Samples of (time, done) for one run; the rate is the slope over the window.

    Kept in memory per task (kopf memo): after an operator restart the rate is unknown
    for one tick, nothing worse.
    """

    run_id: str = ""
    samples: deque[tuple[datetime, int]] = field(default_factory=deque)

    def add(self, run_id: str, now: datetime, done: int) -> None:
        if run_id != self.run_id:
            self.run_id = run_id
            self.samples.clear()
        self.samples.append((now, done))
        horizon = now - timedelta(seconds=RATE_WINDOW_SECONDS)
        # Keep one sample older than the window so the slope spans all of it.
        while len(self.samples) > 2 and self.samples[1][0] <= horizon:
            self.samples.popleft()

    def measured(self) -> bool:
        """The samples span a whole window: the rate says what the run achieves."""
        if len(self.samples) < 2:
            return False
        span = (self.samples[-1][0] - self.samples[0][0]).total_seconds()
        return span >= RATE_WINDOW_SECONDS

    def rate(self) -> float:
        if len(self.samples) < 2:
            return 0.0
        (t0, d0), (t1, d1) = self.samples[0], self.samples[-1]
        seconds = (t1 - t0).total_seconds()
        if seconds <= 0:
            return 0.0
        return max(0.0, (d1 - d0) / seconds)


def eta_seconds(pending: int, rate: float) -> int | None:
    if pending <= 0:
        return 0
    if rate <= 0:
        return None
    return round(pending / rate)


def format_eta(seconds: int | None) -> str:
    """`1h02m`, `3m05s`, `12s`; empty when unknown (no sends yet)."""
    if seconds is None:
        return ""
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


@dataclass(frozen=True)
class WorkerHealth:
    live: list[str]
    # Heartbeats older than the lease: workers presumed dead (crash, node loss, SIGKILL).
    lost: list[str]
    # Leased splits whose holder is not live: work waiting to be reclaimed.
    orphaned_leases: int


def worker_health(
    heartbeats: Iterable[Mapping[str, Any]],
    leased_splits: Iterable[Mapping[str, Any]],
    *,
    now: datetime,
    lease_seconds: float,
) -> WorkerHealth:
    """Which workers of a run are live or lost, and how many leases nobody renews.

    A worker that exits cleanly deletes its heartbeat, so a stale heartbeat always means
    a lost worker. A lease counts as orphaned when its leaseUntil has passed, or its owner
    is lost, or its owner has no heartbeat at all (forgotten after it was lost) and did
    not claim it just now: such a lease will expire and be reclaimed.
    """
    horizon = now - timedelta(seconds=lease_seconds)
    live: list[str] = []
    lost: list[str] = []
    for hb in heartbeats:
        seen = hb.get("lastSeen")
        if seen is not None and seen >= horizon:
            live.append(str(hb["_id"]))
        else:
            lost.append(str(hb["_id"]))
    live_set, lost_set = set(live), set(lost)
    # A worker claims its first split as its first heartbeat is being written: a lease
    # younger than this with no heartbeat at all is a newcomer, not an orphan.
    newcomer = now - timedelta(seconds=lease_seconds / 2)
    orphaned = 0
    for split in leased_splits:
        until = split.get("leaseUntil")
        owner = str(split.get("owner"))
        claimed = split.get("claimedAt")
        if (
            until is None
            or until < now
            or owner in lost_set
            or (owner not in live_set and (claimed is None or claimed < newcomer))
        ):
            orphaned += 1
    return WorkerHealth(live=sorted(live), lost=sorted(lost), orphaned_leases=orphaned)


@dataclass(frozen=True)
class DeploymentView:
    desired: int = 0
    ready: int = 0
    updated: int = 0
    available: int = 0
    exists: bool = False

    @classmethod
    def from_status(cls, deployment: Mapping[str, Any] | None) -> DeploymentView:
        if not deployment:
            return cls()
        spec = deployment.get("spec") or {}
        status = deployment.get("status") or {}
        return cls(
            desired=int(spec.get("replicas") or 0),
            ready=int(status.get("readyReplicas") or 0),
            updated=int(status.get("updatedReplicas") or 0),
            available=int(status.get("availableReplicas") or 0),
            exists=True,
        )

    @property
    def whole(self) -> bool:
        """Every desired worker of the current template is ready."""
        return self.exists and self.ready >= self.desired and self.updated >= self.desired


@dataclass(frozen=True)
class Progress:
    counts: Counts
    rate: float
    eta: int | None
    workers_desired: int
    workers_ready: int
    workers_live: int
    finished: bool
    failure: str | None
    stage: str
    health: WorkerHealth
    clicks: ClickTotals | None = None  # a run that tracks link clicks
    conversions: ConversionTotals | None = None  # a run that tracks conversions

    def status_fields(self) -> dict[str, Any]:
        """The part of `status` progress owns (phase and conditions are the reconciler's)."""
        fields: dict[str, Any] = {
            "counts": self.counts.model_dump(),
            "rate": round(self.rate, 2),
            "eta": format_eta(self.eta),
            "workers": {
                "desired": self.workers_desired,
                "ready": self.workers_ready,
                "live": self.workers_live,
            },
        }
        if self.clicks is not None:
            fields.update(click_fields(self.clicks, self.counts.sent))
        if self.conversions is not None:
            fields["conversions"] = self.conversions.status(self.counts.sent)
        return fields


def compute_progress(
    *,
    totals: RunTotals,
    run_doc: Mapping[str, Any] | None,
    heartbeats: Sequence[Mapping[str, Any]],
    leased_splits: Sequence[Mapping[str, Any]],
    deployment: DeploymentView,
    tracker: RateTracker,
    run_id: str,
    now: datetime,
    lease_seconds: float,
    clicks: ClickTotals | None = None,
    conversions: ConversionTotals | None = None,
) -> Progress:
    """Everything the status shows about a run at `now` (updates `tracker`)."""
    counts = counts_from_totals(totals)
    tracker.add(run_id, now, done(counts))
    rate = tracker.rate()
    run_doc = run_doc or {}
    stage = str(run_doc.get("stage") or totals.stage)
    failure = (run_doc.get("failure") or {}).get("reason") if run_doc.get("failure") else None
    health = worker_health(heartbeats, leased_splits, now=now, lease_seconds=lease_seconds)
    return Progress(
        counts=counts,
        rate=rate,
        # While the audience is still being read its size is not final: no eta yet.
        eta=eta_seconds(counts.pending, rate) if stage != "audience" else None,
        workers_desired=deployment.desired,
        workers_ready=deployment.ready,
        workers_live=len(health.live),
        finished=stage == "done",
        failure=failure,
        stage=stage,
        health=health,
        clicks=clicks,
        conversions=conversions,
    )
