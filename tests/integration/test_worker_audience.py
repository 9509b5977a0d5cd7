"""The audience phase end to end: four source kinds, overlaps, exclusions, bad rows,
row attributes in templates and per-recipient send times; and SIGTERM mid-delivery."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Self

import pytest
from aiohttp import web
from pymongo import MongoClient

from pushtask_worker.audience import mongosource
from tests.support.sink import SinkThread, free_port
from tests.support.workers import (
    WorkerProcs,
    create_run,
    recipient_statuses,
    spec_for,
    totals,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def sink() -> Iterator[SinkThread]:
    with SinkThread(secret="s3cret", keep_messages=True) as s:
        yield s


class FileServer:
    """A static file server (HEAD, Range) on a thread: the URL source's other end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner: web.AppRunner | None = None

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(self.root / request.match_info["name"])

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{name}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    def __enter__(self) -> Self:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


def test_sources_overlaps_exclusions_bad_rows_attributes_and_send_at(
    uri: str, sink: SinkThread, tmp_path: Path
) -> None:
    later = datetime.now(UTC) + timedelta(seconds=8)
    inline = [{"id": f"u{i}", "name": f"Inline {i}"} for i in range(100)]
    inline[7]["at"] = later.isoformat()
    csv_rows = ["id,name,at"] + [f"u{i},Csv {i}," for i in range(50, 150)]
    csv_rows += [",nobody,", "u999,Bad time,not-a-time"]  # two bad rows: skipped
    (tmp_path / "users.csv").write_text("\n".join(csv_rows) + "\n")
    client: MongoClient[dict[str, object]] = MongoClient(uri)
    client.get_default_database()["users"].insert_many(
        [{"_id": f"m{i}", "name": f"Mongo {i}", "vip": i % 2 == 0} for i in range(60)]
    )
    client.close()
    with FileServer(tmp_path) as files:
        sources: list[dict[str, Any]] = [
            {"kind": "inline", "users": inline, "sendAtField": "at"},
            {"kind": "url", "url": files.url("users.csv"), "format": "csv", "sendAtField": "at"},
            {"kind": "configMap", "name": "cm", "key": "ids", "format": "lines"},
            {"kind": "mongo", "collection": "users", "filter": {"vip": True}},
        ]
        exclude: list[dict[str, Any]] = [
            {"kind": "inline", "users": ["u0", "u1", "m0"]},
            {"kind": "configMap", "name": "cm", "key": "no", "format": "lines"},
        ]
        spec = spec_for(
            url=sink.url,
            sources=sources,
            exclude=exclude,
            shards=4,
            template={"title": "Hi {{ name | default('friend') }}", "body": "{{ user }}"},
        )
        run_id, _ = create_run(uri, spec, inline={"2": "c1\nc2\n\nu10\n", "exclude.1": "c2\n"})
        with WorkerProcs(uri, run_id, tmp_path / "logs") as workers:
            workers.start_many(2)
            assert set(workers.wait(120).values()) == {0}, workers.logs()
    expected = (
        {f"u{i}" for i in range(150)} | {"c1", "c2"} | {f"m{i}" for i in range(0, 60, 2)}
    ) - {"u0", "u1", "m0", "c2"}
    seen = Counter(r.user for r in sink.requests)
    assert set(seen) == expected
    assert max(seen.values()) == 1
    t = totals(uri, run_id)
    assert (t.sent, t.skipped, t.failed, t.unknown) == (len(expected), 2, 0, 0)
    assert t.audience == len(expected) + 2
    messages = {r.user: r.message for r in sink.requests}
    assert messages["u3"]["title"] == "Hi Inline 3"
    assert messages["u120"]["title"] == "Hi Csv 120"
    assert messages["m4"]["title"] == "Hi Mongo 4"
    assert messages["c1"]["title"] == "Hi friend"
    # u7's own send time: not taken before it was due.
    u7 = next(r for r in sink.requests if r.user == "u7")
    assert u7.t >= later.timestamp() - 0.05
    statuses = recipient_statuses(uri, run_id)
    assert set(statuses) == expected
    # The reasons of bad rows are kept as samples (what the operator shows in status).
    reader: MongoClient[dict[str, Any]] = MongoClient(uri)
    reasons = [d["reason"] for d in reader.get_default_database()["skips"].find({"run": run_id})]
    reader.close()
    assert len(reasons) == 2 and all(reasons), reasons


def test_sigterm_finishes_the_batch_releases_and_exits_zero(
    uri: str, sink: SinkThread, tmp_path: Path
) -> None:
    audience = 3000
    spec = spec_for([f"u{i:05d}" for i in range(audience)], url=sink.url, shards=8, rate=300)
    run_id, _ = create_run(uri, spec)
    with WorkerProcs(uri, run_id, tmp_path) as workers:
        workers.start_many(2)
        deadline = time.monotonic() + 60
        while len(sink.requests) < audience // 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        term_at = time.monotonic()
        workers.procs["w0"].send_signal(signal.SIGTERM)
        code = workers.procs["w0"].wait(25)  # well within a pod's default 30 s grace
        took = time.monotonic() - term_at
        assert code == 0, workers.logs()
        assert set(workers.wait(120).values()) == {0}, workers.logs()
    print(f"SIGTERM to exit: {took:.1f}s")
    seen = Counter(r.user for r in sink.requests)
    t = totals(uri, run_id)
    # Finished its batch and handed the rest back: nothing in doubt, nobody twice.
    assert (t.sent, t.unknown, t.failed) == (audience, 0, 0), t
    assert len(seen) == audience and max(seen.values()) == 1


def test_large_sources_are_cut_into_ranges_read_by_several_workers(
    uri: str, sink: SinkThread, tmp_path: Path
) -> None:
    """A MongoDB query and a URL file are each cut into range splits (small ranges here,
    set through the environment) that the workers claim independently; every row is read
    once and every user delivered once."""
    n_mongo, n_url = 3000, 3000
    client: MongoClient[dict[str, object]] = MongoClient(uri)
    client.get_default_database()["people"].insert_many(
        [{"_id": f"m{i:05d}", "name": f"Mongo {i}"} for i in range(n_mongo)]
    )
    client.close()
    lines = [f'{{"id": "f{i:05d}", "name": "File {i}"}}' for i in range(n_url)]
    (tmp_path / "users.jsonl").write_text("\n".join(lines) + "\n")
    block = 4096  # about 100 rows a block: ~30 blocks
    with FileServer(tmp_path) as files:
        sources: list[dict[str, Any]] = [
            {"kind": "mongo", "collection": "people"},
            {"kind": "url", "url": files.url("users.jsonl"), "format": "jsonl"},
        ]
        spec = spec_for(url=sink.url, sources=sources, shards=4)
        run_id, _ = create_run(uri, spec)
        env = {"PUSHTASK_MONGO_RANGE_SIZE": "250", "PUSHTASK_URL_BLOCK_BYTES": str(block)}
        with WorkerProcs(uri, run_id, tmp_path / "logs", env=env) as workers:
            workers.start_many(3)
            assert set(workers.wait(180).values()) == {0}, workers.logs()
    seen = Counter(r.user for r in sink.requests)
    assert len(seen) == n_mongo + n_url and max(seen.values()) == 1
    t = totals(uri, run_id)
    assert (t.sent, t.skipped, t.failed, t.unknown) == (n_mongo + n_url, 0, 0, 0)
    reader: MongoClient[dict[str, Any]] = MongoClient(uri)
    splits = list(reader.get_default_database()["splits"].find({"run": run_id, "kind": "audience"}))
    reader.close()
    # The planning splits (one per source, range None) were cut into these.
    ranges = [s for s in splits if (s.get("source") or {}).get("range")]
    by_kind = Counter(s["source"]["kind"] for s in ranges)
    # 12 ranges of 250 would be too many for 4 workers: at most two each, each wider.
    assert 1 < by_kind["mongo"] <= mongosource.most_ranges(4) < n_mongo // 250, by_kind
    assert by_kind["url"] >= 20, by_kind
    # Each range read to its end exactly once, and the rows it inserted add up.
    assert all(s["status"] == "done" and s.get("completions") == 1 for s in ranges)
    assert sum(s["counters"]["inserted"] for s in ranges) == n_mongo + n_url
    # The ranges were shared: more than one worker completed some of them.
    assert len({s["doneBy"] for s in ranges}) >= 2, Counter(s["doneBy"] for s in ranges)
