"""A worker's memory does not grow with the audience (bounded flushes, shards and chunks;
streamed sources).

The audience is a MongoDB query (a users collection), so nothing proportional to it sits
in the run document; the worker's peak RSS (VmHWM from /proc) with 10x the recipients must
stay within 20% of its peak with 1x.

Sizes: 20,000 vs 200,000, the issue's (about two minutes in all on mongo-java-server's
memory backend); PUSHTASK_TEST_SCALE=0.1 shrinks them for a quick local pass. Each size
runs on a private server of its own.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from pathlib import Path

import pytest
from pymongo import MongoClient

from tests.support.sink import SinkThread
from tests.support.workers import (
    PrivateMongo,
    WorkerProcs,
    create_run,
    peak_rss_kib,
    spec_for,
    totals,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(7200)]
SCALE = float(os.environ.get("PUSHTASK_TEST_SCALE", "1"))


def fill_users(uri: str, count: int) -> None:
    client: MongoClient[dict[str, object]] = MongoClient(uri)
    coll = client.get_default_database()["users"]
    for start in range(0, count, 5000):
        coll.insert_many(
            [
                {"_id": f"u{i:07d}", "name": f"User {i}", "tier": "gold" if i % 3 else "blue"}
                for i in range(start, min(count, start + 5000))
            ],
            ordered=False,
        )
    client.close()


def peak_rss_for(count: int, tmp_path: Path, shards: int = 16) -> tuple[int, float]:
    # The memory backend: this measures the worker, not the store's durability, and the
    # file backend makes the 200,000 run take most of an hour.
    server = PrivateMongo(
        tmp_path / f"data-{count}.mv", db=f"m_{secrets.token_hex(5)}", memory=True
    )
    if not server.available():
        pytest.skip("mongo-java-server is not built (python -m devstack up --only mongo)")
    with server:
        uri = server.uri
        fill_users(uri, count)
        with SinkThread() as sink:
            source = {
                "kind": "mongo",
                "collection": "users",
                "projection": {"name": 1},
            }
            spec = spec_for(
                url=sink.url,
                sources=[source],
                shards=shards,
                template={"body": "Hello {{ name }}"},
            )
            run_id, _ = create_run(uri, spec)
            peaks: dict[str, int] = {}
            started = time.monotonic()
            with WorkerProcs(uri, run_id, tmp_path / str(count)) as workers:
                workers.start_many(2)
                stop = threading.Event()

                def sample() -> None:
                    while not stop.is_set():
                        for name, p in list(workers.procs.items()):
                            try:
                                peaks[name] = max(peaks.get(name, 0), peak_rss_kib(p.pid))
                            except (FileNotFoundError, ProcessLookupError, ValueError):
                                pass
                        time.sleep(0.1)

                sampler = threading.Thread(target=sample, daemon=True)
                sampler.start()
                try:
                    codes = workers.wait(3500)
                finally:
                    stop.set()
                    sampler.join()
                assert set(codes.values()) == {0}, workers.logs()
            elapsed = time.monotonic() - started
            t = totals(uri, run_id)
            assert t.sent == count, t
            assert len(sink.delivered_counts()) == count
        return max(peaks.values()), elapsed


def test_worker_memory_does_not_grow_with_the_audience(mongo_uri: str, tmp_path: Path) -> None:
    # mongo_uri: devstack builds mongo-java-server; each size runs on a private one.
    small_n, large_n = int(20_000 * SCALE), int(200_000 * SCALE)
    small, t_small = peak_rss_for(small_n, tmp_path)
    large, t_large = peak_rss_for(large_n, tmp_path)
    print(
        f"worker peak RSS: {small / 1024:.1f} MiB with {small_n} recipients ({t_small:.0f}s), "
        f"{large / 1024:.1f} MiB with {large_n} ({t_large:.0f}s): x{large / small:.2f}"
    )
    assert large <= small * 1.2, (small, large)
