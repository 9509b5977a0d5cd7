"""What a frequency cap costs (issue 26, item 5): a run capped by two earlier runs against
the same run uncapped, measured in the same invocation.

    python bench/frequency_cap.py [--size 1000000] [--workers 4] [--json FILE]

The audience is `size` users in a `mongo` source. Two earlier runs of tasks labelled
`cap-group: promotions` each sent to `size` users: the first to every even user of
2 x size, the second to every user 1 mod 4 of 4 x size, so the cap leaves out half and a
quarter of the audience and `size / 4` recipients remain. Their ledgers are written
straight into the store, chunk by chunk, as their workers would have left them (every
recipient sent, one `ok` batch a chunk, an hour ago): the capped run reads ledgers, and
how they got there costs it nothing.

Each measured run is worked by real `pushtask-worker` processes on a private
mongo-java-server, from creation until its audience is built and sealed (the cap's whole
cost is there); the run is then stopped, since delivery is the same per recipient with or
without a cap. Reported: audience and seal seconds (from the run's own timestamps), the
workers' peak RSS (VmHWM, read at the seal's end), the recipients, and the ratios of the
capped run to the uncapped one. Checked: the capped run holds exactly the users no
earlier run sent to.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pymongo import MongoClient  # noqa: E402

from pushtask import ledger  # noqa: E402
from pushtask.leases import DONE  # noqa: E402
from pushtask.planning import TaskRef, plan_run  # noqa: E402
from pushtask.store import Store  # noqa: E402
from tests.support.sink import SinkThread  # noqa: E402
from tests.support.workers import (  # noqa: E402
    PrivateMongo,
    WorkerProcs,
    create_run,
    peak_rss_kib,
    run_doc,
    set_control,
    spec_for,
    totals,
)

LABELS = {"cap-group": "promotions"}
CAP = {"kind": "recentlySent", "within": "24h", "selector": {"matchLabels": LABELS}}


def user(i: int) -> str:
    return f"u{i:08d}"


def earlier_sets(size: int) -> list[list[str]]:
    return [
        [user(i) for i in range(0, 2 * size, 2)],
        [user(i) for i in range(1, 4 * size, 4)],
    ]


def seed_users(uri: str, size: int) -> None:
    client: MongoClient[dict[str, Any]] = MongoClient(uri)
    try:
        coll = client.get_default_database()["users"]
        for lo in range(0, size, 10_000):
            coll.insert_many([{"_id": user(i)} for i in range(lo, min(size, lo + 10_000))])
    finally:
        client.close()


async def write_earlier_run(uri: str, n: int, users: list[str]) -> str:
    """A finished run that sent to `users` an hour ago, its ledger as workers leave it."""
    sent_at = datetime.now(UTC) - timedelta(hours=1)
    spec = spec_for(users[:1], url="http://127.0.0.1:9/")
    task = TaskRef("ns", f"earlier-{n}", f"uid-earlier-{n}")
    plan = plan_run(task, 1, spec, labels=LABELS, now=sent_at - timedelta(minutes=10))
    run_id = str(plan.run_doc["_id"])
    store = Store.connect(uri)
    try:
        await store.create_run({**plan.run_doc, "stage": "done", "doneAt": sent_at}, [])
        chunks = []
        for c, lo in enumerate(range(0, len(users), ledger.CHUNK_SIZE)):
            part = [ledger.Recipient(u, None, ledger.EPOCH) for u in users[lo : lo + 1000]]
            doc = ledger.new_chunk(run_id, 0, c, part)
            doc.update(
                status=DONE,
                hi=len(part),
                ok={"1_0": {"t": sent_at, "w": "bench", "p": list(range(len(part)))}},
                counters={"sent": len(part), "attempted": len(part)},
            )
            chunks.append(doc)
            if len(chunks) == 100:
                await store.db["chunks"].insert_many(chunks)
                chunks = []
        if chunks:
            await store.db["chunks"].insert_many(chunks)
    finally:
        await store.close()
    return run_id


def advance(uri: str, run_id: str) -> None:
    async def go() -> None:
        store = Store.connect(uri)
        try:
            await store.advance(run_id)
        finally:
            await store.close()

    asyncio.run(go())


@dataclass
class Measured:
    mode: str
    run_id: str
    recipients: int
    audience_s: float
    seal_s: float
    worker_peak_rss_mib: float
    wall_s: float


def measure(
    uri: str, sink_url: str, mode: str, workers: int, logs: Path, exclude: list[Any]
) -> Measured:
    # Delivery starts as soon as a shard is sealed: at one send a second it stays out of
    # the way of what is measured (and the sink answers, so no failure budget is spent).
    spec = spec_for(
        url=sink_url,
        rate=1,
        sources=[{"kind": "mongo", "collection": "users"}],
        exclude=exclude,
        shards=256,
        workers=workers,
        secret=False,
    )
    run_id, _ = create_run(uri, spec, mode)
    started = time.monotonic()
    with WorkerProcs(
        uri,
        run_id,
        logs / mode,
        env={"PUSHTASK_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "warning")},
    ) as procs:
        procs.start_many(workers)
        peak = 0
        while True:
            # The operator's tick moves a run's stage too (a worker holding a chunk does
            # so only when the chunk ends): the bench stands in for it.
            advance(uri, run_id)
            t = totals(uri, run_id)
            if os.environ.get("BENCH_LOG_LEVEL"):
                print(f"{time.monotonic() - started:.1f} s: {t}", flush=True)
            if t.stage not in ("audience", "seal"):
                break
            peak = max(
                [peak] + [peak_rss_kib(p.pid) for p in procs.procs.values() if p.poll() is None]
            )
            assert all(p.poll() is None for p in procs.procs.values()), procs.logs()
            time.sleep(0.5)
        peak = max([peak] + [peak_rss_kib(p.pid) for p in procs.procs.values() if p.poll() is None])
        wall = time.monotonic() - started
        set_control(uri, run_id, state="Stopped", cancelInflight=True)
        procs.wait(120)
    doc = run_doc(uri, run_id)
    audience = (doc["audienceDoneAt"] - doc["created"]).total_seconds()
    seal = (doc["sealedAt"] - doc["audienceDoneAt"]).total_seconds()
    return Measured(mode, run_id, totals(uri, run_id).total, audience, seal, peak / 1024, wall)


def capped_users_sent_before(uri: str, run_id: str, earlier: list[set[str]]) -> int:
    """Users of the capped run's chunks that an earlier run sent to (must be 0)."""
    client: MongoClient[dict[str, Any]] = MongoClient(uri)
    try:
        chunks = client.get_default_database()["chunks"]
        hits = 0
        for doc in chunks.find({"run": run_id}, {"users": 1}):
            hits += sum(1 for u in doc["users"] if any(u in s for s in earlier))
        return hits
    finally:
        client.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=1_000_000)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    size = args.size
    logs = Path(tempfile.mkdtemp(prefix="bench-cap-"))
    with PrivateMongo(logs / "store.mv", memory=True) as mongo, SinkThread() as sink:
        uri = mongo.uri
        t0 = time.monotonic()
        seed_users(uri, size)
        sets = earlier_sets(size)
        for n, users in enumerate(sets, 1):
            asyncio.run(write_earlier_run(uri, n, users))
        print(f"seeded {size:,} users and two earlier ledgers in {time.monotonic() - t0:.1f} s")
        plain = measure(uri, sink.url, "uncapped", args.workers, logs, [])
        capped = measure(uri, sink.url, "capped", args.workers, logs, [CAP])
        earlier = [set(s) for s in sets]
        leaked = capped_users_sent_before(uri, capped.run_id, earlier)
    expected = size // 4
    print()
    print(f"frequency cap at {size:,} users, {args.workers} workers (two earlier runs of {size:,})")
    print(
        "| run | recipients | audience s | seal s | audience+seal s | vs uncapped "
        "| worker peak RSS MiB | vs uncapped |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    base_t = plain.audience_s + plain.seal_s
    for m in (plain, capped):
        both = m.audience_s + m.seal_s
        print(
            f"| {m.mode} | {m.recipients:,} | {m.audience_s:.1f} | {m.seal_s:.1f} | {both:.1f} "
            f"| {both / base_t:.2f}x | {m.worker_peak_rss_mib:.0f} "
            f"| {m.worker_peak_rss_mib / plain.worker_peak_rss_mib:.2f}x |"
        )
    print(
        f"capped run: {capped.recipients:,} recipients (expected {expected:,}); "
        f"users an earlier run sent to among them: {leaked}"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "size": size,
                    "workers": args.workers,
                    "runs": [asdict(plain), asdict(capped)],
                    "leaked": leaked,
                },
                indent=2,
            )
        )
    ok = capped.recipients == expected and plain.recipients == size and leaked == 0
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
