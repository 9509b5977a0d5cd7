"""Schedules as pure functions of (schedule, now): start time, send windows, cron firings.

Every `now` must be timezone-aware; results are timezone-aware UTC datetimes. The
syntax checks live in `pushtask.validators` (re-exported here), which `models` imports
too: so `models` does not import this module and there is no import circle.
"""

from __future__ import annotations

import zoneinfo
from datetime import UTC, date, datetime, time, timedelta

from croniter import croniter

from pushtask.models import Schedule, Window
from pushtask.validators import (
    CRON_PATTERN,
    HHMM_PATTERN,
    WEEKDAYS,
    is_valid_cron,
    is_valid_time_zone,
)

__all__ = [
    "CRON_PATTERN",
    "HHMM_PATTERN",
    "WEEKDAYS",
    "due_firing",
    "in_window",
    "is_valid_cron",
    "is_valid_time_zone",
    "next_event",
    "next_firing",
    "next_window_edge",
    "next_window_open",
    "start_due",
    "start_reached",
    "window_zone",
]


def _hhmm(value: str) -> time:
    hours, minutes = value.split(":")
    return time(int(hours), int(minutes))


def start_reached(schedule: Schedule, now: datetime) -> bool:
    """`schedule.startAt` is unset or not in the future."""
    return schedule.start_at is None or now >= schedule.start_at


def window_zone(schedule: Schedule, window: Window) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(window.time_zone or schedule.time_zone)


def _window_open_on(window: Window, day: date, tz: zoneinfo.ZoneInfo) -> tuple[datetime, datetime]:
    """The [open, close) interval of `window` opening on local `day`, as aware datetimes."""
    start, end = _hhmm(window.from_), _hhmm(window.to)
    opens = datetime.combine(day, start, tzinfo=tz)
    # A window whose end is not after its start crosses midnight into the next day.
    closes = datetime.combine(day + timedelta(days=1 if end <= start else 0), end, tzinfo=tz)
    return opens, closes


def _intervals(schedule: Schedule, around: datetime, days: int) -> list[tuple[datetime, datetime]]:
    """Every window interval opening from the day before `around` to `days` days after."""
    out: list[tuple[datetime, datetime]] = []
    for window in schedule.windows:
        tz = window_zone(schedule, window)
        local = around.astimezone(tz).date()
        for offset in range(-1, days + 1):
            day = local + timedelta(days=offset)
            if WEEKDAYS[day.weekday()] in window.days:
                out.append(_window_open_on(window, day, tz))
    return out


def in_window(schedule: Schedule, now: datetime) -> bool:
    """`now` is inside one of the send windows; no windows means always."""
    if not schedule.windows:
        return True
    # Compare as UTC instants: wall-clock arithmetic is wrong across DST changes.
    utc_now = now.astimezone(UTC)
    intervals = _intervals(schedule, now, 0)
    return any(o.astimezone(UTC) <= utc_now < c.astimezone(UTC) for o, c in intervals)


def next_window_open(schedule: Schedule, now: datetime) -> datetime | None:
    """When sending may next happen: `now` if inside a window, else the next opening."""
    if in_window(schedule, now):
        return now.astimezone(UTC)
    opens = [o.astimezone(UTC) for o, _ in _intervals(schedule, now, 8)]
    future = [o for o in opens if o > now]
    return min(future) if future else None


def next_window_edge(schedule: Schedule, now: datetime) -> tuple[datetime, bool] | None:
    """The first send-window opening or closing after `now` (UTC) and whether it opens;
    None without windows. An opening inside another open window, or a closing inside
    another, changes nothing and is skipped."""
    if not schedule.windows:
        return None
    utc_now = now.astimezone(UTC)
    edges = sorted(
        {
            t.astimezone(UTC)
            for interval in _intervals(schedule, now, 8)
            for t in interval
            if t.astimezone(UTC) > utc_now
        }
    )
    for at in edges:
        inside = in_window(schedule, at)
        if inside != in_window(schedule, at - timedelta(microseconds=1)):
            return at, inside
    return None


def next_firing(cron: str, time_zone: str, after: datetime) -> datetime:
    """The first cron firing strictly after `after`, evaluated in `time_zone`."""
    local = after.astimezone(zoneinfo.ZoneInfo(time_zone))
    fired: datetime = croniter(cron, local).get_next(datetime)
    return fired.astimezone(UTC)


def due_firing(schedule: Schedule, since: datetime, now: datetime) -> datetime | None:
    """The firing to run now, if any: the latest one in (since, now], not before startAt.

    `since` is the last firing (status.lastFiredAt) or the task's creation time. Missed
    firings (operator down) collapse into one: runs never overlap or pile up.
    """
    if schedule.cron is None or not start_reached(schedule, now):
        return None
    tz = zoneinfo.ZoneInfo(schedule.time_zone)
    # croniter's get_prev from just after `now` includes a firing exactly at `now`.
    probe = now.astimezone(tz) + timedelta(microseconds=1)
    latest: datetime = croniter(schedule.cron, probe).get_prev(datetime)
    latest = latest.astimezone(UTC)
    if latest <= since or (schedule.start_at is not None and latest < schedule.start_at):
        return None
    return latest


def start_due(schedule: Schedule, now: datetime, since: datetime) -> bool:
    """The `Facts.start_due` of the state machine: startAt reached, or a firing due."""
    if schedule.cron is not None:
        return due_firing(schedule, since, now) is not None
    return start_reached(schedule, now)


def next_event(schedule: Schedule, now: datetime, since: datetime) -> tuple[datetime, str] | None:
    """The schedule's next event after `now`, as (UTC time, what): "StartAt", "NextFiring"
    (`since`: the last firing), "WindowOpens" or "WindowCloses"; None when it has none."""
    events: list[tuple[datetime, str]] = []
    if schedule.start_at is not None and schedule.start_at > now:
        events.append((schedule.start_at.astimezone(UTC), "StartAt"))
    if schedule.cron is not None:
        firing = next_firing(schedule.cron, schedule.time_zone, max(now, since))
        events.append((firing, "NextFiring"))
    if (edge := next_window_edge(schedule, now)) is not None:
        events.append((edge[0], "WindowOpens" if edge[1] else "WindowCloses"))
    return min(events) if events else None
