"""Audience rows and the URL source's streamed byte ranges (against a local HTTP server)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from pushtask_worker.audience import urlsource
from pushtask_worker.audience.mongosource import range_filter
from pushtask_worker.audience.rows import (
    Columns,
    Row,
    Skip,
    detect_format,
    parse_csv_header,
    parse_csv_line,
    parse_due,
    parse_json_line,
    parse_text,
    to_recipient,
)
from tests.support.sink import free_port


def test_parse_due_forms() -> None:
    want = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert parse_due("2030-01-02T03:04:05Z") == want
    assert parse_due("2030-01-02T04:04:05+01:00") == want
    assert parse_due("2030-01-02T03:04:05") == want  # naive = UTC
    assert parse_due(want.timestamp()) == want
    assert parse_due(str(int(want.timestamp() * 1000))) == want  # milliseconds
    for bad in ("tomorrow", "", True, [1]):
        with pytest.raises(ValueError):
            parse_due(bad)


def test_columns_from_specs() -> None:
    assert Columns.from_spec({"kind": "mongo"}).user == "_id"
    c = Columns.from_spec(
        {"kind": "url", "idField": "uid", "sendAtField": "at", "columns": {"name": "Name"}}
    )
    assert (c.user, c.send_at, dict(c.attributes or {})) == ("uid", "at", {"name": "Name"})


def test_to_recipient_maps_attributes_and_rejects_bad_rows() -> None:
    cols = Columns(user="id", send_at="at")
    row = to_recipient({"id": 42, "at": "2030-01-01T00:00:00Z", "name": "Ann"}, cols)
    assert isinstance(row, Row)
    assert (row.user, row.attrs) == ("42", {"name": "Ann"})
    assert row.due == datetime(2030, 1, 1, tzinfo=UTC)
    assert isinstance(to_recipient({"name": "x"}, cols), Skip)
    assert isinstance(to_recipient({"id": "  "}, cols), Skip)
    assert isinstance(to_recipient({"id": {"a": 1}}, cols), Skip)
    bad_due = to_recipient({"id": "u", "at": "soon"}, cols)
    assert isinstance(bad_due, Skip) and "'at'" in bad_due.reason
    renamed = to_recipient({"id": "u", "Name": "Bo", "x": 1}, Columns(attributes={"name": "Name"}))
    assert isinstance(renamed, Row) and renamed.attrs == {"name": "Bo"}


def test_csv_jsonl_and_plain_lines() -> None:
    cols = Columns(user="id", send_at="sendAt")
    header = parse_csv_header('\ufeffid,name,"sendAt"\n')
    assert header == ["id", "name", "sendAt"]
    row = parse_csv_line('u1,"Smith, Ann",\n', header, cols)
    assert isinstance(row, Row) and row.attrs == {"name": "Smith, Ann"} and row.due is None
    short = parse_csv_line("u2,only\n", header, cols)
    assert isinstance(short, Skip) and "columns" in short.reason
    assert parse_csv_line("\n", header, cols) is None
    j = parse_json_line('{"id": "u3", "tier": "gold"}', cols)
    assert isinstance(j, Row) and j.attrs == {"tier": "gold"}
    assert isinstance(parse_json_line("{oops", cols), Skip)
    assert isinstance(parse_json_line("[1,2]", cols), Skip)
    text = "a\n\n# comment\nb\n"
    assert [
        (n, r.user) for n, r in parse_text(text.splitlines(), "lines", cols) if isinstance(r, Row)
    ] == [(0, "a"), (3, "b")]
    assert detect_format("x.ndjson") == "jsonl" and detect_format(None, "CSV") == "csv"


def test_mongo_range_filter() -> None:
    assert range_filter({}, "_id", None) == {}
    assert range_filter({"a": 1}, "_id", {"gte": 5, "lt": 9}) == {
        "$and": [{"a": 1}, {"_id": {"$gte": 5, "$lt": 9}}]
    }
    assert range_filter({}, "uid", {"gte": 5, "lt": 9}, after=7) == {"uid": {"$lt": 9, "$gt": 7}}


async def serve_file(path: Path) -> tuple[web.AppRunner, str]:
    app = web.Application()

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(path)  # serves HEAD and Range like a static file server

    app.router.add_route("*", "/users.csv", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}/users.csv"


def test_url_ranges_cover_every_line_exactly_once(tmp_path: Path) -> None:
    lines = ["id,name,sendAt"] + [
        f"u{i},Name {i}," + ("2030-01-01T00:00:00Z" if i % 7 == 0 else "") for i in range(3000)
    ]
    lines[500] = "broken,row"  # a bad row: skipped with a reason, never fatal
    path = tmp_path / "users.csv"
    path.write_text("\n".join(lines) + "\n")
    cols = Columns.from_spec({"kind": "url", "sendAtField": "sendAt"})

    async def go() -> tuple[list[Any], list[Any], list[dict[str, Any]]]:
        runner, url = await serve_file(path)
        try:
            async with aiohttp.ClientSession() as session:
                info = await urlsource.probe(session, url, "csv")
                ranges = urlsource.plan_ranges(info, block_bytes=4096)
                rows: list[Any] = []
                skips: list[Any] = []
                for rng in ranges:
                    async for pos, item, _after in urlsource.read_url_range(
                        session, url, "csv", cols, rng, None
                    ):
                        (rows if isinstance(item, Row) else skips).append((pos, item))
                # Resume from a checkpoint mid-range: the rest of that range, nothing more.
                resumed = [
                    item.user
                    async for _, item, _ in urlsource.read_url_range(
                        session, url, "csv", cols, ranges[1], cursor=ranges[1]["start"] + 300
                    )
                    if isinstance(item, Row)
                ]
                return rows, skips, [*ranges, {"resumed": resumed}]
        finally:
            await runner.cleanup()

    rows, skips, ranges = asyncio.run(go())
    assert len(ranges) > 10  # really cut into ranges
    users = [r.user for _, r in rows]
    assert len(users) == len(set(users)) == 2999
    assert len(skips) == 1 and "columns" in skips[0][1].reason
    assert sum(1 for _, r in rows if r.due is not None) == len(
        [i for i in range(3000) if i % 7 == 0 and i != 499]
    )
    resumed = ranges[-1]["resumed"]
    assert resumed and set(resumed) < set(users)


def test_a_failing_source_is_named_as_the_spec_names_it() -> None:
    # Failure reasons name the source a person must fix, exclusions as exclusions.
    from pushtask_worker.audience.build import describe_source

    run = {
        "spec": {
            "audience": {
                "sources": [{"kind": "inline", "users": ["a"]}],
                "exclude": [
                    {"kind": "configMap", "name": "optouts", "key": "list"},
                    {"kind": "mongo", "collection": "optuts"},
                    {"kind": "url", "url": "https://files/x.jsonl", "format": "jsonl"},
                ],
            }
        }
    }
    ref = {"exclude": True, "index": 1}
    assert describe_source(run, ref) == "exclusion spec.audience.exclude[1] (mongo optuts)"
    assert describe_source(run, {**ref, "index": 0}).endswith("(configMap optouts)")
    assert describe_source(run, {**ref, "index": 2}).endswith("(url https://files/x.jsonl)")
    assert describe_source(run, {"exclude": False, "index": 0}) == (
        "audience source spec.audience.sources[0] (inline)"
    )
    # A run document without its spec still names the place.
    assert describe_source({}, ref) == "exclusion spec.audience.exclude[1]"
    assert issubclass(urlsource.SourceMissing, urlsource.SourceError)
