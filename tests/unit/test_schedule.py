"""Schedules: start time, send windows (midnight, time zones, DST) and cron firings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from pushtask.models import Schedule
from pushtask.schedule import (
    due_firing,
    in_window,
    is_valid_cron,
    is_valid_time_zone,
    next_event,
    next_firing,
    next_window_edge,
    next_window_open,
    start_due,
    start_reached,
)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def sched(**kw: Any) -> Schedule:
    return Schedule.model_validate(kw)


# 2026-01-05 is a Monday, 2026-01-09 a Friday.
MON_10 = utc("2026-01-05T10:00")


def test_start_reached() -> None:
    assert start_reached(sched(), MON_10)
    at = sched(startAt="2026-01-05T10:00:00Z")
    assert start_reached(at, MON_10)  # exactly at startAt
    assert not start_reached(at, MON_10 - timedelta(seconds=1))
    # startAt with an offset is the same instant.
    assert start_reached(sched(startAt="2026-01-05T11:00:00+01:00"), MON_10)


def test_no_windows_means_always() -> None:
    assert in_window(sched(), MON_10)
    assert next_window_open(sched(), MON_10) == MON_10


OFFICE = sched(windows=[{"days": ["Mon", "Tue", "Wed", "Thu", "Fri"], "from": "09:00",
                         "to": "17:00"}])  # fmt: skip


@pytest.mark.parametrize(
    ("now", "inside"),
    [
        ("2026-01-05T10:00", True),
        ("2026-01-05T09:00", True),  # from is inclusive
        ("2026-01-05T08:59", False),
        ("2026-01-05T17:00", False),  # to is exclusive
        ("2026-01-10T10:00", False),  # Saturday
    ],
)
def test_daily_window(now: str, inside: bool) -> None:
    assert in_window(OFFICE, utc(now)) is inside


FRIDAY_NIGHT = sched(windows=[{"days": ["Fri"], "from": "22:00", "to": "02:00"}])


@pytest.mark.parametrize(
    ("now", "inside"),
    [
        ("2026-01-09T23:00", True),  # Friday night
        ("2026-01-10T01:59", True),  # Saturday small hours belong to Friday's window
        ("2026-01-10T02:00", False),
        ("2026-01-10T23:00", False),  # Saturday night: no window opens on Saturday
        ("2026-01-09T01:00", False),  # Friday small hours would be Thursday's window
    ],
)
def test_window_crossing_midnight(now: str, inside: bool) -> None:
    assert in_window(FRIDAY_NIGHT, utc(now)) is inside


def test_window_in_its_own_time_zone() -> None:
    s = sched(
        timeZone="Asia/Tokyo",
        windows=[{"from": "09:00", "to": "17:00", "timeZone": "America/New_York"}],
    )
    # January: New York is UTC-5, so 09:00 there is 14:00 UTC.
    assert not in_window(s, utc("2026-01-05T13:59"))
    assert in_window(s, utc("2026-01-05T14:00"))
    # Without its own zone the window uses the schedule's (Tokyo, UTC+9: 00:00-08:00 UTC).
    tokyo = sched(timeZone="Asia/Tokyo", windows=[{"from": "09:00", "to": "17:00"}])
    assert in_window(tokyo, utc("2026-01-05T00:30")) and not in_window(tokyo, MON_10)


def test_window_across_a_dst_change() -> None:
    # Berlin springs forward on 2026-03-29 at 02:00 -> 03:00: 01:00-04:00 lasts 2 hours.
    s = sched(timeZone="Europe/Berlin", windows=[{"from": "01:00", "to": "04:00"}])
    assert in_window(s, utc("2026-03-29T00:00"))  # 01:00 CET
    assert in_window(s, utc("2026-03-29T01:30"))  # 03:30 CEST
    assert not in_window(s, utc("2026-03-29T02:00"))  # 04:00 CEST
    assert not in_window(s, utc("2026-03-28T23:59"))  # 00:59 CET


def test_next_window_open() -> None:
    assert next_window_open(OFFICE, MON_10) == MON_10
    assert next_window_open(OFFICE, utc("2026-01-05T18:00")) == utc("2026-01-06T09:00")
    # Friday evening -> Monday morning.
    assert next_window_open(OFFICE, utc("2026-01-09T17:30")) == utc("2026-01-12T09:00")
    mondays = sched(windows=[{"days": ["Mon"], "from": "09:00", "to": "10:00"}])
    assert next_window_open(mondays, utc("2026-01-06T09:00")) == utc("2026-01-12T09:00")


def test_next_firing_in_a_time_zone_and_across_dst() -> None:
    assert next_firing("0 9 * * *", "America/New_York", utc("2026-01-05T12:00")) == utc(
        "2026-01-05T14:00"
    )
    # After the US switch to daylight time (2026-03-08), 09:00 New York is 13:00 UTC.
    assert next_firing("0 9 * * *", "America/New_York", utc("2026-03-09T00:00")) == utc(
        "2026-03-09T13:00"
    )
    # Strictly after: a firing exactly at `after` is not the next one.
    assert next_firing("*/15 * * * *", "UTC", utc("2026-01-05T10:15")) == utc("2026-01-05T10:30")


def test_due_firing() -> None:
    s = sched(cron="0 9 * * *")
    created = utc("2026-01-05T08:00")
    assert due_firing(s, created, utc("2026-01-05T08:59")) is None
    assert due_firing(s, created, utc("2026-01-05T09:00")) == utc("2026-01-05T09:00")
    assert due_firing(s, created, utc("2026-01-05T09:00:30")) == utc("2026-01-05T09:00")
    # Once fired (lastFiredAt), not again until the next day.
    fired = utc("2026-01-05T09:00")
    assert due_firing(s, fired, utc("2026-01-05T20:00")) is None
    # Missed firings (operator down three days) collapse into the latest: no pile-up.
    assert due_firing(s, fired, utc("2026-01-08T10:00")) == utc("2026-01-08T09:00")
    assert due_firing(sched(), created, MON_10) is None


def test_due_firing_respects_start_at() -> None:
    s = sched(cron="0 9 * * *", startAt="2026-01-07T00:00:00Z")
    created = utc("2026-01-05T08:00")
    assert due_firing(s, created, utc("2026-01-06T09:30")) is None
    assert due_firing(s, created, utc("2026-01-07T09:30")) == utc("2026-01-07T09:00")


def test_start_due() -> None:
    created = utc("2026-01-05T08:00")
    assert start_due(sched(), MON_10, created)
    assert not start_due(sched(startAt="2026-02-01T00:00:00Z"), MON_10, created)
    assert start_due(sched(cron="0 9 * * *"), MON_10, created)
    assert not start_due(sched(cron="0 11 * * *"), MON_10, created)


def test_next_event() -> None:
    created = utc("2026-01-05T08:00")
    assert next_event(sched(), MON_10, created) is None
    assert next_event(sched(startAt="2026-01-06T00:00:00Z"), MON_10, created) == (
        utc("2026-01-06T00:00"),
        "StartAt",
    )
    assert next_event(sched(cron="30 10 * * *"), MON_10, created) == (
        utc("2026-01-05T10:30"),
        "NextFiring",
    )
    # Inside a window: the next change is its closing; after it, the next opening.
    assert next_event(OFFICE, MON_10, created) == (utc("2026-01-05T17:00"), "WindowCloses")
    assert next_event(OFFICE, utc("2026-01-09T17:30"), created) == (
        utc("2026-01-12T09:00"),
        "WindowOpens",
    )


# Windows crossing midnight and DST changes, in three zones, against zoneinfo's own offsets.
EDGE_CASES = [
    # Berlin springs forward 2026-03-29 02:00 -> 03:00: 22:00-03:00 closes at 01:00 UTC.
    ("Europe/Berlin", "22:00", "03:00", "2026-03-28T22:00", ("2026-03-29T01:00", False)),
    # ...and falls back 2026-10-25 03:00 -> 02:00: the same window closes at 02:00 UTC.
    ("Europe/Berlin", "22:00", "03:00", "2026-10-24T21:00", ("2026-10-25T02:00", False)),
    # New York springs forward 2026-03-08 02:00 -> 03:00: 01:00-05:00 is three hours long.
    ("America/New_York", "01:00", "05:00", "2026-03-08T06:30", ("2026-03-08T09:00", False)),
    ("America/New_York", "01:00", "05:00", "2026-03-08T09:00", ("2026-03-09T05:00", True)),
    # Sydney falls back 2026-04-05 03:00 -> 02:00 (UTC+11 -> +10): 23:30-00:30 crosses
    # midnight the day before; it opens next at 13:30 UTC on the 5th.
    ("Australia/Sydney", "23:30", "00:30", "2026-04-04T12:00", ("2026-04-04T12:30", True)),
    ("Australia/Sydney", "23:30", "00:30", "2026-04-04T12:31", ("2026-04-04T13:30", False)),
    ("Australia/Sydney", "23:30", "00:30", "2026-04-04T13:31", ("2026-04-05T13:30", True)),
]


@pytest.mark.parametrize(("zone", "start", "end", "now", "expected"), EDGE_CASES)
def test_window_edges_across_midnight_and_dst(
    zone: str, start: str, end: str, now: str, expected: tuple[str, bool]
) -> None:
    s = sched(timeZone=zone, windows=[{"from": start, "to": end}])
    edge = next_window_edge(s, utc(now))
    assert edge == (utc(expected[0]), expected[1])
    at, opens = edge
    # The edge is where in_window flips, and the same instant read in the zone's wall
    # clock is the window's own boundary (zoneinfo's offset of that instant).
    assert in_window(s, at) is opens and in_window(s, at - timedelta(seconds=1)) is not opens
    local = at.astimezone(ZoneInfo(zone)).strftime("%H:%M")
    assert local == (start if opens else end)


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("UTC", True),
        ("Europe/Berlin", True),
        ("America/Argentina/Buenos_Aires", True),
        ("Mars/Olympus", False),
        ("", False),
        ("+05:00", False),
        ("/etc/passwd", False),
        ("../zoneinfo/UTC", False),
        (" UTC", False),
    ],
)
def test_time_zone_names(name: str, ok: bool) -> None:
    assert is_valid_time_zone(name) is ok


@pytest.mark.parametrize(
    ("expr", "ok"),
    [
        ("0 9 * * Mon-Fri", True),
        ("*/5 * * * *", True),
        ("0 0 1,15 * *", True),
        ("@hourly", True),
        ("0 9 * * 7", True),
        ("0 9 31 2 *", True),  # never fires, but is well-formed
        ("0 9 * *", False),
        ("0 0 9 * * *", False),
        ("61 9 * * *", False),
        ("0 9 * * Funday", False),
        ("@fortnightly", False),
    ],
)
def test_cron_syntax(expr: str, ok: bool) -> None:
    assert is_valid_cron(expr) is ok
