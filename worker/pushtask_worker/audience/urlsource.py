"""A CSV or JSON Lines file at a URL: streamed line by line, cut into byte ranges.

Never loaded whole: lines are read from the response stream as they arrive. When the
server serves byte ranges (``Accept-Ranges: bytes`` and a Content-Length), the file is
cut into ranges of ``block_bytes`` that several workers read at once. A line belongs to
the range its first byte lies in; a reader starting mid-file fetches from one byte
earlier and drops the first (partial) line, so every line is read by exactly one range.
Limitation: CSV fields with embedded newlines are not supported (one row = one line).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp

from pushtask_worker.audience.rows import (
    Columns,
    Row,
    Skip,
    parse_csv_header,
    parse_csv_line,
    parse_json_line,
    parse_plain_line,
)


class SourceError(Exception):
    """The source cannot be read (retried by the worker, then fails the run)."""


class SourceMissing(SourceError):
    """What the source names does not exist (a collection): no retry would change that,
    so the run fails at once."""


@dataclass(frozen=True)
class UrlInfo:
    size: int | None
    ranges: bool
    header: list[str] | None  # CSV header, read once by the planner of the ranges


async def _first_line(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(url, headers={"Range": "bytes=0-65535"}) as resp:
        if resp.status >= 400:
            raise SourceError(f"GET {url}: HTTP {resp.status}")
        line = await resp.content.readline()
        return line.decode("utf-8", errors="replace")


async def probe(session: aiohttp.ClientSession, url: str, fmt: str) -> UrlInfo:
    """Size and range support of the file (HEAD), and its CSV header."""
    size: int | None = None
    ranges = False
    async with session.head(url, allow_redirects=True) as resp:
        if resp.status < 400:
            ranges = resp.headers.get("Accept-Ranges", "").lower() == "bytes"
            if resp.headers.get("Content-Length", "").isdigit():
                size = int(resp.headers["Content-Length"])
            if resp.headers.get("Content-Encoding"):
                ranges = False  # byte offsets of a compressed body are not line offsets
    header = parse_csv_header(await _first_line(session, url)) if fmt == "csv" else None
    return UrlInfo(size, ranges and size is not None, header)


def plan_ranges(info: UrlInfo, block_bytes: int) -> list[dict[str, Any]]:
    if not info.ranges or info.size is None or info.size <= block_bytes:
        return [{"start": 0, "end": None, "header": info.header}]
    return [
        {"start": s, "end": min(s + block_bytes, info.size), "header": info.header}
        for s in range(0, info.size, block_bytes)
    ]


async def stream_lines(
    session: aiohttp.ClientSession,
    url: str,
    start: int = 0,
    end: int | None = None,
    aligned: bool = False,
) -> AsyncIterator[tuple[int, bytes]]:
    """(byte offset of the line's start, line) for every line starting in [start, end).

    ``aligned``: ``start`` is known to be the start of a line (a checkpoint cursor).
    """
    fetch_from = start if (aligned or start == 0) else start - 1
    headers = {"Range": f"bytes={fetch_from}-"} if fetch_from > 0 else {}
    async with session.get(url, headers=headers) as resp:
        if resp.status == 416:
            return
        if resp.status >= 400:
            raise SourceError(f"GET {url}: HTTP {resp.status}")
        pos = fetch_from
        if fetch_from > 0 and resp.status == 200:
            # The server ignored Range: discard up to fetch_from without buffering it.
            remaining = fetch_from
            while remaining > 0:
                chunk = await resp.content.read(min(remaining, 1 << 16))
                if not chunk:
                    return
                remaining -= len(chunk)
        drop_first = fetch_from != start
        while True:
            try:
                line = await resp.content.readuntil(b"\n")
            except ValueError as exc:  # a line longer than aiohttp's buffer limit
                raise SourceError(f"{url}: line at byte {pos} too long ({exc})") from None
            if not line:
                return
            line_start = pos
            pos += len(line)
            if drop_first:
                drop_first = False
                continue
            if end is not None and line_start >= end:
                return
            yield line_start, line


async def read_url_range(
    session: aiohttp.ClientSession,
    url: str,
    fmt: str,
    columns: Columns,
    rng: dict[str, Any],
    cursor: int | None,
) -> AsyncIterator[tuple[int, Row | Skip, int]]:
    """(row position, row, cursor after it) over one range, resuming at ``cursor``."""
    start = int(rng.get("start") or 0)
    end = rng.get("end")
    header: list[str] | None = rng.get("header")
    resume = cursor is not None and cursor > start
    begin = int(cursor) if resume and cursor is not None else start
    first_line_is_header = fmt == "csv" and begin == 0
    async for offset, raw in stream_lines(session, url, begin, end, aligned=resume):
        text = raw.decode("utf-8", errors="replace")
        after = offset + len(raw)
        item: Row | Skip | None
        if first_line_is_header:
            first_line_is_header = False
            header = parse_csv_header(text)
            continue
        if fmt == "csv":
            if header is None:
                raise SourceError(f"{url}: CSV without a header line")
            item = parse_csv_line(text, header, columns)
        elif fmt == "jsonl":
            item = parse_json_line(text, columns)
        else:
            item = parse_plain_line(text, columns)
        if item is not None:
            yield offset, item, after
