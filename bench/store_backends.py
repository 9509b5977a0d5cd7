"""Which MongoDB-wire server should devstack run, now that the ledger works per chunk?

    python bench/store_backends.py [--size 20000] [--workers 2]

One campaign of `size` recipients (a mongo source, 2 workers, the local sink) on each
server devstack can run: mongo-java-server with its memory backend, with its H2 file
backend (devstack's default), and FerretDB on SQLite (devstack's second server). Prints
seconds, sends/s and the rate against the H2 backend measured in the same run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pymongo import MongoClient  # noqa: E402

from devstack import stack  # noqa: E402
from tests.support.sink import free_port  # noqa: E402
from tests.support.workers import (  # noqa: E402
    PrivateMongo,
    WorkerProcs,
    create_run,
    db_uri,
    drop_db,
    spec_for,
    totals,
)


def campaign(uri: str, sink_url: str, size: int, workers: int, logs: Path) -> tuple[float, str]:
    client: MongoClient[dict] = MongoClient(uri)
    client.get_default_database()["users"].insert_many([{"_id": f"u{i:07d}"} for i in range(size)])
    client.close()
    spec = spec_for(url=sink_url, sources=[{"kind": "mongo", "collection": "users"}])
    run_id, _ = create_run(uri, spec)
    started = time.monotonic()
    # The production lease: a slow server should show as slow, not as lost workers.
    with WorkerProcs(uri, run_id, logs, env={"PUSHTASK_LEASE_SECONDS": "30"}) as procs:
        procs.start_many(workers)
        codes = procs.wait(3600)
        if set(codes.values()) != {0}:
            raise SystemExit(procs.logs())
    seconds = time.monotonic() - started
    t = totals(uri, run_id)
    note = "" if t.sent == size else f"sent {t.sent:,}, unknown {t.unknown:,} (leases lost)"
    return seconds, note


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=20_000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--only", choices=["h2", "memory", "ferretdb"], action="append")
    args = p.parse_args()
    only = set(args.only or ["h2", "memory", "ferretdb"])
    port = free_port()
    sink = subprocess.Popen([sys.executable, "-m", "tests.support.sink", "--port", str(port)])
    url = f"http://127.0.0.1:{port}/hook"
    time.sleep(1.5)
    rows: list[tuple[str, tuple[float, str]]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            base = Path(tmp)
            for name, memory in (
                ("mongo-java-server, H2 file", False),
                ("mongo-java-server, memory", True),
            ):
                with PrivateMongo(base / f"{memory}.mv", memory=memory) as server:
                    rows.append(
                        (name, campaign(server.uri, url, args.size, args.workers, base / name))
                    )
            if "ferretdb" not in only:
                pass
            elif stack.mongo_ping(stack.FERRETDB_URI) is None:  # None: it answers
                uri = db_uri(stack.FERRETDB_URI, f"bench_{port}")
                try:
                    rows.append(
                        (
                            "FerretDB, SQLite",
                            campaign(uri, url, args.size, args.workers, base / "f"),
                        )
                    )
                finally:
                    drop_db(uri)
            else:
                print("FerretDB is not running (python -m devstack up --only mongo): skipped")
    finally:
        sink.terminate()
    h2 = rows[0][1][0]  # the first row measured is the baseline (H2 unless --only says else)
    print(f"\n{args.size:,} recipients, {args.workers} workers, one campaign each\n")
    print(f"| server | seconds | sends/s | rate vs {rows[0][0]} | note |")
    print("| --- | ---: | ---: | ---: | --- |")
    for name, (seconds, note) in rows:
        rate = args.size / seconds
        print(f"| {name} | {seconds:.1f} | {rate:,.0f} | {h2 / seconds:.2f}x | {note} |")


if __name__ == "__main__":
    main()
