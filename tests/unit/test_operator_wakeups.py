"""When the operator looks at a task next: at its next event, not every few seconds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pushtask.models import Schedule
from pushtask.states import Phase
from pushtask_operator.wakeups import RESYNC, Wakeup, next_wakeup

NOW = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)  # a Monday
CREATED = NOW - timedelta(hours=2)
TICK = 3.0


def sched(**kw: Any) -> Schedule:
    return Schedule.model_validate(kw)


def wake(phase: Phase, schedule: Schedule, **kw: Any) -> Wakeup:
    return next_wakeup(phase, schedule, now=NOW, since=CREATED, tick=TICK, **kw)


def test_a_ready_task_sleeps_until_its_start_time() -> None:
    start = NOW + timedelta(hours=5)
    w = wake(Phase.READY, sched(startAt=start.isoformat()))
    assert w == Wakeup(start, "StartAt")
    soon = sched(startAt=(NOW + timedelta(minutes=20)).isoformat())
    assert wake(Phase.READY, soon).seconds(NOW) == 20 * 60  # no tick before it


def test_a_ready_cron_task_sleeps_until_its_next_firing() -> None:
    w = wake(Phase.READY, sched(cron="30 10 * * *", timeZone="UTC"))
    assert w == Wakeup(datetime(2026, 1, 5, 10, 30, tzinfo=UTC), "NextFiring")


def test_a_ready_task_with_nothing_to_wait_for_is_idle() -> None:
    # Held (spec.state Paused) or a degraded tier: only a change of the object wakes it.
    w = wake(Phase.READY, sched())
    assert w == Wakeup(None, "Idle") and w.seconds(NOW) == RESYNC.total_seconds()


def test_validation_waiting_for_a_secret_is_looked_at_again_soon() -> None:
    w = wake(Phase.READY, sched(startAt=(NOW + timedelta(days=1)).isoformat()), revalidate=5)
    assert w == Wakeup(NOW + timedelta(seconds=5), "Revalidate")


@pytest.mark.parametrize("phase", [Phase.STARTED, Phase.REBOOT, Phase.PAUSED])
def test_a_run_under_way_ticks(phase: Phase) -> None:
    assert wake(phase, sched()) == Wakeup(NOW + timedelta(seconds=TICK), "Tick")


def test_a_window_closing_before_the_tick_wakes_exactly_then() -> None:
    closes = sched(windows=[{"from": "09:00", "to": "10:00"}])  # UTC
    w = next_wakeup(Phase.STARTED, closes, now=NOW - timedelta(seconds=1), since=CREATED, tick=TICK)
    assert w == Wakeup(NOW, "WindowCloses")


def test_a_run_over_waits_for_its_workers_then_sleeps() -> None:
    assert wake(Phase.FINISHED, sched()).reason == "Tick"  # workers still to see go
    assert wake(Phase.FINISHED, sched(), settled=True) == Wakeup(None, "Idle")
    cron = sched(cron="0 11 * * *")
    assert wake(Phase.FINISHED, cron, settled=True) == Wakeup(
        datetime(2026, 1, 5, 11, 0, tzinfo=UTC), "NextFiring"
    )
    # A Stopped cron task fires no more until its run is raised.
    assert wake(Phase.STOPPED, cron, settled=True) == Wakeup(None, "Idle")


def test_sleeps_never_go_negative_or_past_the_resync() -> None:
    assert Wakeup(NOW - timedelta(seconds=5), "Tick").seconds(NOW) == 0.0
    assert Wakeup(NOW + timedelta(days=30), "NextFiring").seconds(NOW) == RESYNC.total_seconds()
