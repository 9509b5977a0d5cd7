"""A worker whose every store call takes 5 s keeps its lease and stays seen as live.

A latency-injecting TCP proxy (tests/support/latency_proxy.py) sits between one real
`pushtask-worker` process and the real MongoDB-wire server; every request reaches the
server five seconds late. The heartbeat sends its calls together, so a beat costs one
call's latency: while the run goes on, the worker is never missing from the live workers
(lease time 30 s), no lease it holds expires, it never reports a lost lease, and the run
finishes with every user delivered exactly once.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest
from pymongo.uri_parser import parse_uri

from pushtask.store import Store
from pushtask_operator.progress import worker_health
from tests.support.latency_proxy import LatencyProxy
from tests.support.sink import SinkThread
from tests.support.workers import WorkerProcs, create_run, db_uri, spec_for, totals

pytestmark = [pytest.mark.integration, pytest.mark.slow]
DELAY = 5.0
LEASE = 30.0


async def sample(uri: str, run_id: str) -> tuple[int, int, str]:
    """The operator's judgement (progress.worker_health, on the store's clock)."""
    store = Store.connect(uri)
    try:
        await store.sync_clock()
        beats, leased = await store.heartbeats(run_id), await store.leases(run_id)
        health = worker_health(beats, leased, now=store.now(), lease_seconds=LEASE)
        stale = await store.stale_leases(run_id)
        return len(health.live), stale, (await store.totals(run_id)).stage
    finally:
        await store.close()


def test_a_worker_on_a_five_second_store_is_never_declared_lost(uri: str, tmp_path: Path) -> None:
    host, port = parse_uri(uri)["nodelist"][0]
    audience = [f"u{i:03d}" for i in range(80)]
    with SinkThread(secret="s3cret") as sink, LatencyProxy((host, port), DELAY) as proxy:
        spec = spec_for(audience, url=sink.url, shards=1)
        run_id, _ = create_run(uri, spec, chunk_size=40)
        slow = db_uri(f"mongodb://127.0.0.1:{proxy.port}/", parse_uri(uri)["database"])
        env = {"PUSHTASK_LEASE_SECONDS": str(int(LEASE))}
        with WorkerProcs(slow, run_id, tmp_path, env=env) as workers:
            workers.start("slow")
            samples: list[tuple[float, int, int]] = []
            started = time.monotonic()
            deadline = started + 600
            heard = False  # start-up through a 5 s store takes a minute before the first beat
            while time.monotonic() < deadline:
                time.sleep(2)
                live, stale, stage = asyncio.run(sample(uri, run_id))
                if stage == "done" or workers.procs["slow"].poll() is not None:
                    break  # the run is over: the worker forgets itself and exits
                heard = heard or live == 1
                if heard:
                    samples.append((time.monotonic() - started, live, stale))
            codes = workers.wait(60)
            logs = workers.logs()
    assert codes == {"slow": 0}, logs
    assert len(samples) >= 5, f"the run was too quick to show anything: {samples}"
    assert all(live == 1 for _, live, _ in samples), f"declared lost: {samples}"
    assert all(stale == 0 for _, _, stale in samples), f"a lease ran out: {samples}"
    assert "lease lost" not in logs
    seen = Counter(r.user for r in sink.requests)
    assert set(seen) == set(audience) and max(seen.values()) == 1
    t = totals(uri, run_id)
    assert (t.stage, t.sent, t.unknown) == ("done", len(audience), 0)
