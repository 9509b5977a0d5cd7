"""When the operator looks at a task next (pure): the next event, not a fixed poll.

A task is looked at when something about it can change:

- its object changes (kopf's update handler, which also re-arms the wake-up below);
- while a run is under way (Started, Reboot, Paused): every progress tick, and exactly at a
  send window's opening or closing if that comes first;
- in Ready: at the schedule's next event (startAt, the next cron firing, a window
  opening), nothing before; every few seconds only while it waits for something that
  validation looks for again (a Secret not created yet);
- once a run is over and its workers are gone: at the next cron firing, or never.

`RESYNC` bounds every sleep: a clock step or a missed computation can never strand a task
for longer (controller-runtime's resync period, for the same reason).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from pushtask import schedule as schedule_mod
from pushtask.models import Schedule
from pushtask.states import TERMINAL_PHASES, Phase

RESYNC = timedelta(hours=1)


@dataclass(frozen=True)
class Wakeup:
    """The next time to reconcile a task, and why (shown in logs and the status)."""

    at: datetime | None  # None: only a change of the object wakes it
    reason: str  # Tick | Revalidate | StartAt | WindowOpens | WindowCloses | NextFiring | Idle

    def seconds(self, now: datetime) -> float:
        """How long to sleep from `now`, never longer than RESYNC."""
        if self.at is None:
            return RESYNC.total_seconds()
        return max(0.0, min((self.at - now).total_seconds(), RESYNC.total_seconds()))


def next_wakeup(
    phase: Phase,
    schedule: Schedule,
    *,
    now: datetime,
    since: datetime,
    tick: float,
    revalidate: float | None = None,
    settled: bool = False,
) -> Wakeup:
    """When to reconcile a task in `phase` next.

    `since`: the last cron firing (or the task's creation); `tick`: the progress interval;
    `revalidate`: set while validation waits for something to appear (looked for again
    then); `settled`: the run is over and its workers are gone (nothing left to report).
    """
    candidates: list[Wakeup] = []
    if phase in TERMINAL_PHASES and settled:
        # Only a cron firing starts another run (a Stopped cron task fires no more).
        if schedule.cron is not None and phase is not Phase.STOPPED:
            at = schedule_mod.next_firing(schedule.cron, schedule.time_zone, max(now, since))
            candidates.append(Wakeup(at, "NextFiring"))
    else:
        if (event := schedule_mod.next_event(schedule, now, since)) is not None:
            candidates.append(Wakeup(*event))
        if phase is not Phase.READY:  # a run under way, or workers still to see go
            candidates.append(Wakeup(now + timedelta(seconds=tick), "Tick"))
    if revalidate is not None:
        candidates.append(Wakeup(now + timedelta(seconds=revalidate), "Revalidate"))
    timed = [c for c in candidates if c.at is not None]
    return min(timed, key=lambda c: c.at or now) if timed else Wakeup(None, "Idle")
