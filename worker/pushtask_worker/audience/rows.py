"""Audience rows: one source row → a recipient (user, attributes, due time) or a skip.

Every source kind ends here, so a bad row gets the same treatment everywhere: it becomes
a ``Skip`` with a reason (counted, sampled into the status), and it never stops the run.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

MAX_USER_LENGTH = 512
MAX_ATTRS_BYTES = 16 * 1024  # attributes travel with every recipient document


@dataclass(frozen=True, slots=True)
class Row:
    user: str
    attrs: dict[str, Any]
    due: datetime | None = None


@dataclass(frozen=True, slots=True)
class Skip:
    reason: str
    raw: str = ""


@dataclass(frozen=True)
class Columns:
    """Which field of a row is the user id, which its send time, which are attributes."""

    user: str = "id"
    send_at: str | None = None
    # Template attribute name → column name; None = every other column under its own name.
    attributes: Mapping[str, str] | None = None
    # Other names tried for the user id when ``user`` is absent from a row.
    user_fallbacks: tuple[str, ...] = ()

    @classmethod
    def from_spec(cls, source: Mapping[str, Any], default_user: str | None = None) -> Columns:
        """From a source spec: ``idField``, ``sendAtField``, ``columns`` (url sources)."""
        default_id = default_user or ("_id" if source.get("kind") == "mongo" else "id")
        return cls(
            user=str(source.get("idField") or default_id),
            send_at=source.get("sendAtField") or None,
            attributes=source.get("columns") or None,
        )


def parse_due(value: Any) -> datetime:
    """ISO 8601 (a trailing Z allowed; naive means UTC), epoch seconds, or a datetime."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, bool):
        raise ValueError("a boolean is not a time")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError("not a finite number")
        # Milliseconds are common in exports: anything past year 5000 in seconds is ms.
        seconds = value / 1000 if abs(value) > 95_617_584_000 else value
        return datetime.fromtimestamp(seconds, UTC)
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise ValueError("empty")
        try:
            return parse_due(float(text))
        except ValueError:
            pass
        dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        return dt if dt.tzinfo else dt.replace(tzinfo=UTC)
    raise ValueError(f"unsupported type {type(value).__name__}")


def _user_of(value: Any) -> str | None:
    if value is None or isinstance(value, bool | dict | list):
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        value = int(value) if value.is_integer() else value
    text = str(value).strip()
    return text or None


def to_recipient(data: Mapping[str, Any], columns: Columns, raw: str = "") -> Row | Skip:
    """Map one parsed row; never raises."""
    key = columns.user
    if data.get(key) is None:
        key = next((k for k in columns.user_fallbacks if data.get(k) is not None), key)
    user = _user_of(data.get(key))
    if user is None:
        return Skip(f"missing or empty user id (field {columns.user!r})", raw)
    if len(user) > MAX_USER_LENGTH:
        return Skip(f"user id longer than {MAX_USER_LENGTH} characters", raw)
    due: datetime | None = None
    if columns.send_at and data.get(columns.send_at) not in (None, ""):
        try:
            due = parse_due(data[columns.send_at])
        except (ValueError, OverflowError, OSError) as exc:
            return Skip(f"bad {columns.send_at!r} value {data[columns.send_at]!r}: {exc}", raw)
    if columns.attributes is None:
        attrs = {k: v for k, v in data.items() if k not in (key, columns.send_at)}
    else:
        attrs = {a: data[c] for a, c in columns.attributes.items() if c in data}
    attrs = {str(k): v for k, v in attrs.items() if not str(k).startswith("$")}
    if attrs and len(json.dumps(attrs, default=str)) > MAX_ATTRS_BYTES:
        return Skip(f"row attributes larger than {MAX_ATTRS_BYTES} bytes", raw)
    return Row(user, attrs, due)


def parse_json_line(line: str, columns: Columns) -> Row | Skip | None:
    """One JSON Lines row (None for a blank line)."""
    text = line.strip()
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError as exc:
        return Skip(f"invalid JSON: {exc}", text)
    if isinstance(data, str | int):
        data = {columns.user: data}
    if not isinstance(data, dict):
        return Skip(f"a JSON line must be an object, got {type(data).__name__}", text)
    return to_recipient(data, columns, text)


def parse_csv_header(line: str) -> list[str]:
    return [h.strip().lstrip("\ufeff") for h in next(csv.reader([line]), [])]


def parse_csv_line(line: str, header: list[str], columns: Columns) -> Row | Skip | None:
    """One CSV row against its header (None for a blank line)."""
    text = line.rstrip("\r\n")
    if not text.strip():
        return None
    try:
        values = next(csv.reader(io.StringIO(text), strict=True))
    except (csv.Error, StopIteration) as exc:
        return Skip(f"invalid CSV: {exc}", text)
    if len(values) != len(header):
        return Skip(f"expected {len(header)} columns, got {len(values)}", text)
    data = {h: v for h, v in zip(header, values, strict=True) if v != "" or h == columns.user}
    return to_recipient(data, columns, text)


def parse_plain_line(line: str, columns: Columns) -> Row | Skip | None:
    """A list of user ids, one a line (ConfigMap default)."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    return to_recipient({columns.user: text}, columns, text)


def detect_format(name: str | None, declared: str | None = None) -> str:
    """csv | jsonl | lines, from a declared format or a file name."""
    if declared:
        d = declared.lower().replace("_", "").replace(" ", "")
        if d in {"csv"}:
            return "csv"
        if d in {"jsonl", "jsonlines", "ndjson", "json"}:
            return "jsonl"
        if d in {"lines", "text", "plain", "txt"}:
            return "lines"
        raise ValueError(f"unknown format {declared!r}")
    n = (name or "").lower().split("?", 1)[0]
    if n.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if n.endswith(".csv"):
        return "csv"
    return "lines"


def parse_text(
    lines: Iterable[str], fmt: str, columns: Columns
) -> Iterator[tuple[int, Row | Skip]]:
    """Parse a whole small text (a ConfigMap value): (line number, row) pairs."""
    header: list[str] | None = None
    for n, line in enumerate(lines):
        if fmt == "csv":
            if header is None:
                if line.strip():
                    header = parse_csv_header(line)
                continue
            item = parse_csv_line(line, header, columns)
        elif fmt == "jsonl":
            item = parse_json_line(line, columns)
        else:
            item = parse_plain_line(line, columns)
        if item is not None:
            yield n, item
