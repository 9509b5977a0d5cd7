"""Checks shared by the models and the schedule functions: a leaf module.

It imports nothing from `pushtask`, so `models` and `schedule` can both use it without
importing each other. Where a check has a twin that the API server runs (a CRD pattern or
a CEL rule), the twin is defined here too, beside the Python check, so the two can be
read side by side and cannot drift apart unnoticed.
"""

from __future__ import annotations

import re
import zoneinfo
from datetime import datetime, timedelta

from croniter import croniter

WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")  # index == date.weekday()

HHMM_PATTERN = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"

# --- cron -----------------------------------------------------------------------------

# One cron list item per field: value, range or `*`, with an optional step. The same
# regex is the CRD's CEL rule (RE2 accepts it), so the API server and Python agree.
# Steps are range-checked per field (1 up to the field's span): `*/0` would divide by
# zero in croniter, and a step beyond the span only ever fires at the start.
_NAMES_MONTH = "JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC"
_NAMES_DOW = "SUN|MON|TUE|WED|THU|FRI|SAT"


def _field(value: str, step: str) -> str:
    item = rf"(\*|({value})(-({value}))?)(/0*({step}))?"
    return rf"{item}(,{item})*"


CRON_PATTERN = (
    r"(?i)^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|"
    + r"\s+".join(
        _field(v, s)
        for v, s in (
            ("[0-5]?[0-9]", "[1-9]|[1-5][0-9]"),  # minute, step 1-59
            ("[01]?[0-9]|2[0-3]", "[1-9]|1[0-9]|2[0-3]"),  # hour, step 1-23
            ("0?[1-9]|[12][0-9]|3[01]", "[1-9]|[12][0-9]|3[01]"),  # day of month, 1-31
            (f"0?[1-9]|1[0-2]|{_NAMES_MONTH}", "[1-9]|1[0-2]"),  # month, step 1-12
            (f"[0-7]|{_NAMES_DOW}", "[1-7]"),  # day of week (0 and 7: Sunday), 1-7
        )
    )
    + r")$"
)
_CRON_RE = re.compile(CRON_PATTERN)


def is_valid_cron(expr: str) -> bool:
    """Five fields (or an @macro) with values and steps in range, that croniter accepts."""
    return bool(_CRON_RE.match(expr.strip())) and croniter.is_valid(expr)


# --- time zones -----------------------------------------------------------------------

# Names that resolve to the *server's* zone, not a fixed one: Go's time.LoadLocation (the
# API server's CEL) maps "Local" to it, and "localtime" is the host's zone file.
HOST_ZONES = ("Local", "localtime")

TIME_ZONE_CEL = (
    "timestamp('2000-01-01T00:00:00Z').getHours(self) >= 0 && !self.contains(':')"
    " && !(self in " + "[" + ", ".join(f"'{z}'" for z in HOST_ZONES) + "])"
)
"""CEL has no zone list: getHours(zone) raises "unknown time zone X" for a bad name,
which the API server reports on the field. ':' excludes CEL's "+05:00" offsets."""


def is_valid_time_zone(name: str) -> bool:
    """An IANA zone name that zoneinfo knows ("UTC", "Europe/Berlin"), not the host's."""
    if not name or name != name.strip() or name.startswith("/") or ".." in name:
        return False
    if name in HOST_ZONES:
        return False
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


# --- date-times -----------------------------------------------------------------------

MAX_UTC_OFFSET = timedelta(hours=14)  # the widest offset in use (Pacific/Kiritimati)

# The API server's `date-time` format takes any two-digit offset ("-99:99"), and CEL sees
# the value as a timestamp, without the offset it was written with (and a CEL rule on
# the string would be too costly: the server bounds date-time strings by the request
# size, not by maxLength). So the CRD adds this pattern to the format.
DATE_TIME_OFFSET_PATTERN = r"([Zz]|[+-](0[0-9]|1[0-3]):[0-5][0-9]|[+-]14:00)$"


def offset_in_range(value: datetime) -> bool:
    """The datetime's UTC offset is within ±14:00 (unset offsets are judged elsewhere)."""
    offset = value.utcoffset()
    return offset is None or abs(offset) <= MAX_UTC_OFFSET


# --- text -----------------------------------------------------------------------------

# C0 controls, DEL and C1 controls: invisible in logs and terminals, and NUL, CR, LF or
# ESC in an id or a header would corrupt whatever line-based output they reach.
CONTROL_CHARS = r"\x00-\x1f\x7f-\x9f"  # regex escapes: Python, Rust and RE2 read them alike
NO_CONTROL_PATTERN = f"^[^{CONTROL_CHARS}]*$"

# RFC 9110 field names are tokens; values may hold tabs but no other control character
# (CR or LF would end the header line and smuggle another one in).
HEADER_NAME_PATTERN = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"
HEADER_VALUE_PATTERN = r"^[^\x00-\x08\x0a-\x1f\x7f]*$"
_HEADER_NAME_RE = re.compile(HEADER_NAME_PATTERN)


def is_header_name(name: str) -> bool:
    return _HEADER_NAME_RE.match(name) is not None
