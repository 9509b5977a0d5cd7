"""Per-recipient send-at lateness: recipients fall due at a steady rate; how late does each
arrive at the sink after its own due time? (issue: p99 < 1 s at 3,000 falling due a second)

    python bench/lateness.py [--rates 1000,2000,3000] [--seconds 60] [--workers 2]

For each rate, a fresh run on a private mongo-java-server (memory backend): `rate x seconds`
users, user i due at t0 + i / rate, read from a `mongo` source with `sendAtField`; t0 is
set far enough ahead that the audience is built and sealed before the first one falls due.
The workers' send rate is unlimited, so what is measured is the ledger's timing (chunks
resting until due, HOLD_SECONDS in the lanes), not a rate limit. The sink records each
arrival; lateness = arrival - due. A send before its due time is counted separately (it
must be zero). Not run in CI (minutes per rate, and timing on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pymongo import MongoClient  # noqa: E402

from bench.worker import SinkProcess  # noqa: E402
from pushtask_worker.config import WorkerConfig  # noqa: E402
from tests.support.workers import (  # noqa: E402
    PrivateMongo,
    WorkerProcs,
    create_run,
    db_uri,
    drop_db,
    spec_for,
    totals,
)


def seed(uri: str, users: list[str], dues: list[datetime]) -> None:
    client: MongoClient[dict[str, Any]] = MongoClient(uri)
    try:
        coll = client.get_default_database()["users"]
        docs = [{"_id": u, "sendAt": d} for u, d in zip(users, dues, strict=True)]
        for i in range(0, len(docs), 10_000):
            coll.insert_many(docs[i : i + 10_000], ordered=False)
    finally:
        client.close()


def arrivals(sink: SinkProcess) -> dict[str, float]:
    """user -> first arrival time (unix seconds) of a delivered request."""
    url = f"http://127.0.0.1:{sink.port}/_sink/requests"
    with urllib.request.urlopen(url, timeout=120) as resp:
        records = json.loads(resp.read())
    out: dict[str, float] = {}
    for r in records:
        if 200 <= r["status"] < 300 and r["user"] not in out:
            out[r["user"]] = r["t"]
    return out


def percentile(sorted_values: list[float], q: float) -> float:
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


def measure(
    mongo: str,
    sink: SinkProcess,
    rate: int,
    seconds: float,
    workers: int,
    logs: Path,
    lead: float | None = None,
) -> dict[str, float]:
    n = int(rate * seconds)
    users = [f"due-{i:07d}" for i in range(n)]
    # Lead time: the audience (n rows) is read, staged and sealed before t0.
    lead = lead if lead is not None else 20 + n / 10_000
    t0 = datetime.now(UTC) + timedelta(seconds=lead)
    dues = [t0 + timedelta(seconds=i / rate) for i in range(n)]
    uri = db_uri(mongo, f"late_{rate}_{int(time.time())}")
    sink.reset()
    try:
        seed(uri, users, dues)
        source = {"kind": "mongo", "collection": "users", "sendAtField": "sendAt"}
        spec = spec_for(
            url=sink.url, sources=[source], shards=16, rate=1_000_000, secret=False, workers=workers
        )
        run_id, _ = create_run(uri, spec)
        env = {
            "PUSHTASK_LOG_LEVEL": "warning",
            "PUSHTASK_LEASE_SECONDS": str(WorkerConfig.lease_seconds),
        }
        with WorkerProcs(uri, run_id, logs / f"r{rate}", env=env) as procs:
            procs.start_many(workers)
            codes = procs.wait(seconds + lead + 600)
            if set(codes.values()) != {0}:
                raise RuntimeError(f"a worker failed: {codes}\n{procs.logs()}")
        t = totals(uri, run_id)
        if t.sent != n:
            raise RuntimeError(f"only {t.sent} of {n} sent: {t}")
        got = arrivals(sink)
        late = sorted(got[u] - d.timestamp() for u, d in zip(users, dues, strict=True))
        early = sum(1 for x in late if x < 0)
        return {
            "rate": rate,
            "recipients": n,
            "p50": statistics.median(late),
            "p99": percentile(late, 0.99),
            "max": late[-1],
            "early": early,
            "sealed_before_t0": float(lead),
        }
    finally:
        drop_db(uri)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rates", default="1000,2000,3000", help="recipients falling due a second")
    p.add_argument("--seconds", type=float, default=60.0, help="how long they keep falling due")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--lead", type=float, default=None, help="seconds before the first is due")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="pushtask-lateness-") as tmp:
        logs = Path(tmp)
        store = PrivateMongo(logs / "store.mv", memory=True)
        store.start()
        try:
            with SinkProcess() as sink:
                for rate in (int(r) for r in args.rates.split(",")):
                    row = measure(
                        store.uri, sink, rate, args.seconds, args.workers, logs, args.lead
                    )
                    rows.append(row)
                    print(f"  {rate}/s: {row}", flush=True)
        finally:
            store.stop()
    print(f"\n{args.workers} workers, recipients falling due for {args.seconds:g} s\n")
    print("| due per second | recipients | p50 late | p99 late | max late | sent early |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['rate']:,} | {r['recipients']:,} | {r['p50']:.3f} s | {r['p99']:.3f} s "
            f"| {r['max']:.3f} s | {r['early']} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
