"""Campaigns do not get slower with history: the eleventh of eleven 20,000-recipient
campaigns on one store runs at least at 80% of the first one's rate.

The per-recipient ledger this replaced scanned every recipient of every run ever stored
on each take (mongo-java-server builds no secondary indexes): the fifth campaign of a
`make demo` stack delivered at 48/s. The chunked ledger keeps a run to about twenty chunks
here, so what earlier runs left costs little. Each campaign is another task (so retention
does not prune the history away), on a private mongo-java-server with the H2 file backend,
devstack's default.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from pymongo import MongoClient

from tests.support.sink import SinkThread
from tests.support.workers import PrivateMongo, WorkerProcs, create_run, spec_for, totals

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SCALE = float(os.environ.get("PUSHTASK_TEST_SCALE", "1"))
CAMPAIGNS = 11


def test_the_eleventh_campaign_runs_at_the_first_ones_rate(mongo_uri: str, tmp_path: Path) -> None:
    # mongo_uri: devstack builds mongo-java-server; this test runs on a private one.
    audience = max(1000, int(20_000 * SCALE))
    with PrivateMongo(tmp_path / "history.mv") as server, SinkThread(secret="s3cret") as sink:
        client: MongoClient[dict] = MongoClient(server.uri)
        client.get_default_database()["users"].insert_many(
            [{"_id": f"u{i:06d}"} for i in range(audience)]
        )
        client.close()
        rates: list[float] = []
        for n in range(CAMPAIGNS):
            spec = spec_for(url=sink.url, sources=[{"kind": "mongo", "collection": "users"}])
            run_id, _ = create_run(server.uri, spec, name=f"c{n}")
            started = time.monotonic()
            with WorkerProcs(server.uri, run_id, tmp_path / f"c{n}") as workers:
                workers.start_many(2)
                assert set(workers.wait(600).values()) == {0}, workers.logs()
            rates.append(audience / (time.monotonic() - started))
            t = totals(server.uri, run_id)
            assert (t.stage, t.sent) == ("done", audience), t
    print("campaign rates /s: " + ", ".join(f"{r:.0f}" for r in rates))
    assert len(sink.delivered_counts()) == audience  # the same users, once per campaign
    assert rates[-1] >= 0.8 * rates[0], rates
