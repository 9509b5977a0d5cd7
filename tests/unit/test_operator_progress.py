from datetime import UTC, datetime, timedelta
from typing import Any

from pushtask.records import ClickTotals, ConversionTotals, RunTotals
from pushtask_operator.progress import (
    CLICKS_WINDOW,
    DeploymentView,
    Progress,
    RateTracker,
    compute_progress,
    counts_from_totals,
    eta_seconds,
    format_eta,
    still_tracked,
    tracks_conversions,
    tracks_links,
    worker_health,
)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def Totals(**counters: Any) -> RunTotals:
    zero = dict(stage="delivery", inserted=0, skipped=0, sent=0, failed=0, unknown=0)
    seal = {"total": 0, "excluded": 0, "duplicates": 0}
    return RunTotals(**{**zero, **seal, "attempted": 0, "splits_open": 0, **counters})


def test_counts_balance() -> None:
    c = counts_from_totals(Totals(total=100, skipped=5, sent=60, failed=3, unknown=2))
    assert c.audience == 105
    assert c.pending == 35
    assert c.sent + c.failed + c.unknown + c.skipped + c.pending == c.audience


def test_rate_is_slope_over_window_and_resets_on_new_run() -> None:
    t = RateTracker()
    assert t.rate() == 0
    for i in range(10):
        t.add("r1", NOW + timedelta(seconds=3 * i), 300 * i)
    assert t.rate() == 100
    # The window forgets old samples: a stall shows as a falling rate.
    for i in range(10, 30):
        t.add("r1", NOW + timedelta(seconds=3 * i), 2700)
    assert t.rate() == 0
    t.add("r2", NOW, 5)
    assert t.rate() == 0 and len(t.samples) == 1


def test_eta() -> None:
    assert eta_seconds(0, 0) == 0
    assert eta_seconds(100, 0) is None
    assert eta_seconds(1000, 10) == 100
    assert format_eta(None) == ""
    assert format_eta(12) == "12s"
    assert format_eta(185) == "3m05s"
    assert format_eta(3720) == "1h02m"


def hb(worker: str, ago: float) -> dict[str, object]:
    return {"_id": worker, "lastSeen": NOW - timedelta(seconds=ago)}


def lease(owner: str, until: float) -> dict[str, object]:
    return {"owner": owner, "leaseUntil": NOW + timedelta(seconds=until)}


def test_worker_health_lost_and_orphaned() -> None:
    h = worker_health(
        [hb("w1", 1), hb("w2", 45), hb("w3", 29)],
        [lease("w1", 10), lease("w2", 5), lease("w3", -1), lease("gone", 20)],
        now=NOW,
        lease_seconds=30,
    )
    assert h.live == ["w1", "w3"]
    assert h.lost == ["w2"]
    # w2 is lost, w3's lease expired, "gone" has no heartbeat at all.
    assert h.orphaned_leases == 3


def test_a_fresh_claim_before_the_first_heartbeat_is_not_an_orphan() -> None:
    fresh = {**lease("new", 30), "claimedAt": NOW - timedelta(seconds=1)}
    old = {**lease("forgotten", 30), "claimedAt": NOW - timedelta(seconds=60)}
    h = worker_health([], [fresh, old], now=NOW, lease_seconds=30)
    assert h.orphaned_leases == 1


def test_deployment_view() -> None:
    assert not DeploymentView.from_status(None).whole
    d = {"spec": {"replicas": 3}, "status": {"readyReplicas": 3, "updatedReplicas": 3}}
    assert DeploymentView.from_status(d).whole
    d["status"]["readyReplicas"] = 2
    assert not DeploymentView.from_status(d).whole
    zero = {"spec": {"replicas": 0}, "status": {}}
    assert DeploymentView.from_status(zero).whole


def test_compute_progress() -> None:
    tracker = RateTracker()
    args = dict(
        run_doc={"stage": "delivery", "failure": None},
        heartbeats=[hb("w1", 1)],
        leased_splits=[lease("w1", 10)],
        deployment=DeploymentView.from_status(
            {"spec": {"replicas": 3}, "status": {"readyReplicas": 2}}
        ),
        tracker=tracker,
        run_id="r",
        lease_seconds=30,
    )
    compute_progress(totals=Totals(total=1000, sent=0), now=NOW, **args)  # type: ignore[arg-type]
    p = compute_progress(
        totals=Totals(total=1000, sent=500),
        now=NOW + timedelta(seconds=5),
        **args,  # type: ignore[arg-type]
    )
    assert p.rate == 100 and p.eta == 5
    assert not p.finished and p.failure is None
    assert p.status_fields() == {
        "counts": {
            "audience": 1000,
            "pending": 500,
            "sent": 500,
            "failed": 0,
            "skipped": 0,
            "unknown": 0,
            "excluded": 0,
            "duplicates": 0,
        },
        "rate": 100.0,
        "eta": "5s",
        "workers": {"desired": 3, "ready": 2, "live": 1},
    }
    done = compute_progress(
        totals=Totals(total=1000, sent=1000),
        now=NOW + timedelta(seconds=8),
        **{**args, "run_doc": {"stage": "done", "failure": {"reason": "x"}}},  # type: ignore[arg-type]
    )
    assert done.finished and done.failure == "x"


def test_no_eta_while_audience_is_read() -> None:
    p = compute_progress(
        totals=Totals(stage="audience", inserted=50),
        run_doc={"stage": "audience"},
        heartbeats=[],
        leased_splits=[],
        deployment=DeploymentView.from_status(None),
        tracker=RateTracker(),
        run_id="r",
        now=NOW,
        lease_seconds=30,
    )
    assert p.eta is None and p.counts.audience == 50


def ended_progress(totals: RunTotals, **tracking: Any) -> Progress:
    """The progress of a run that ended, its workers gone (`tracking`: clicks, conversions)."""
    return compute_progress(
        totals=totals,
        run_doc={"stage": "done"},
        heartbeats=[],
        leased_splits=[],
        deployment=DeploymentView(),
        tracker=RateTracker(),
        run_id="r",
        now=NOW,
        lease_seconds=30,
        **tracking,
    )


def test_excluded_and_duplicates_are_in_the_status_outside_the_audience() -> None:
    p = ended_progress(Totals(total=900, sent=900, excluded=750, duplicates=40))
    counts = p.status_fields()["counts"]
    assert (counts["excluded"], counts["duplicates"]) == (750, 40)
    # The users left out are not recipients: the audience still balances.
    assert counts["audience"] == counts["sent"] == 900 and counts["pending"] == 0


def test_clicks_of_a_tracked_run_are_in_its_progress() -> None:
    clicks = ClickTotals(clicks=9, clickers=6, by_link={0: 6, 1: 3})
    p = ended_progress(Totals(total=200, sent=200), clicks=clicks)
    fields = p.status_fields()
    assert (fields["clicks"], fields["clickers"], fields["clickThrough"]) == (9, 6, "3.0%")


def test_which_runs_track_links() -> None:
    tracked = {"spec": {"message": {"tracking": {"links": True}}}}
    assert tracks_links(tracked)
    assert not tracks_links({"spec": {"message": {"tracking": {"links": False}}}})
    assert not tracks_links({"spec": {"message": {}}}) and not tracks_links(None)


def test_clicks_are_read_for_a_week_after_a_tracked_run_ends() -> None:
    ended = {"runId": "r", "clicks": 3, "finishedAt": "2026-01-01T12:00:00Z"}
    assert still_tracked(ended, NOW + CLICKS_WINDOW - timedelta(seconds=1))
    assert not still_tracked(ended, NOW + CLICKS_WINDOW)
    assert still_tracked({"runId": "r", "clicks": 0}, NOW)  # not ended yet
    assert not still_tracked({"runId": "r", "finishedAt": "2026-01-01T12:00:00Z"}, NOW)
    assert not still_tracked({"clicks": 1}, NOW)


def test_conversions_are_read_for_the_longer_of_a_week_and_their_window() -> None:
    ended = {"runId": "r", "conversions": [], "finishedAt": "2026-01-01T12:00:00Z"}
    month = timedelta(days=30)
    assert still_tracked(ended, NOW + timedelta(days=20), month)
    assert not still_tracked(ended, NOW + month, month)
    assert not still_tracked(ended, NOW + CLICKS_WINDOW, timedelta(hours=1))


def test_conversions_of_a_tracked_run_are_in_its_progress() -> None:
    conversions = ConversionTotals({"signup": 2, "purchase": 5})
    p = ended_progress(Totals(total=400, sent=400), conversions=conversions)
    assert p.status_fields()["conversions"] == [
        {"event": "purchase", "count": 5, "rate": "1.2%"},
        {"event": "signup", "count": 2, "rate": "0.5%"},
    ]
    assert "clicks" not in p.status_fields()  # conversions without link tracking


def test_which_runs_track_conversions() -> None:
    assert tracks_conversions({"spec": {"message": {"tracking": {}}}})
    assert not tracks_conversions({"spec": {"message": {}}}) and not tracks_conversions(None)
