"""The MongoDB-wire server stopped for 10 s mid-run: the workers wait it out.

A private mongo-java-server (the devstack binary, its own port and data file) so that
stopping it disturbs no other test. The run must complete with no failed recipient and
no user delivered twice: store errors are waited out (back-off, circuit breaker), never
counted against recipients.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.sink import SinkThread
from tests.support.workers import PrivateMongo, WorkerProcs, create_run, spec_for, totals

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def private_mongo(mongo_uri: str, tmp_path: Path) -> Iterator[PrivateMongo]:
    # mongo_uri: devstack builds (and runs) mongo-java-server; we start a second one.
    server = PrivateMongo(tmp_path / "data.mv")
    if not server.available():
        pytest.skip("mongo-java-server is not built (python -m devstack up --only mongo)")
    server.start()
    yield server
    server.stop()


def test_store_outage_of_ten_seconds_is_waited_out(
    private_mongo: PrivateMongo, tmp_path: Path
) -> None:
    audience = 8000
    with SinkThread(secret="s3cret") as sink:
        spec = spec_for([f"u{i:05d}" for i in range(audience)], url=sink.url, rate=400)
        run_id, _ = create_run(private_mongo.uri, spec)
        # Leases longer than the outage: the holders keep their shards through it.
        env = {"PUSHTASK_LEASE_SECONDS": "30"}
        with WorkerProcs(private_mongo.uri, run_id, tmp_path / "logs", env=env) as workers:
            workers.start_many(4)
            deadline = time.monotonic() + 120
            while len(sink.requests) < audience // 4 and time.monotonic() < deadline:
                time.sleep(0.05)
            private_mongo.stop()
            down_at = time.monotonic()
            sent_at_stop = len(sink.requests)
            time.sleep(10)
            private_mongo.start()
            up_after = time.monotonic() - down_at
            codes = workers.wait(300)
            assert set(codes.values()) == {0}, workers.logs()
        seen = Counter(r.user for r in sink.requests)
        t = totals(private_mongo.uri, run_id)
    print(
        f"store down {up_after:.1f}s after {sent_at_stop} sends; "
        f"{t.sent} sent, {t.failed} failed, {t.unknown} unknown"
    )
    assert sent_at_stop < audience
    assert t.stage == "done"
    assert t.failed == 0
    assert max(seen.values()) == 1, "a user was delivered twice"
    assert t.sent + t.unknown == audience
    assert t.unknown == 0, "leases outlived the outage: nothing should be in doubt"
