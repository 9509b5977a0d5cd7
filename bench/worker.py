"""Delivery benchmark: PushTask workers beside two baselines, measured in the same run.

    python bench/worker.py [--size 100000] [--workers 1,2,4] [--naive-seconds 120]

- ceiling: a plain aiohttp client sending the same number of requests to the same sink
  with no bookkeeping at all (what the sink and the machine allow);
- naive: the original system's way: per user, one find-and-modify to claim it, the send,
  then one update to mark it, in as many sequential loops as the largest worker count;
- pushtask: real `pushtask-worker` processes on a run planned like the operator does, from
  worker start until every worker has exited with the run done (audience phase included).

The sink runs in its own process (python -m tests.support.sink); the store is a private
mongo-java-server started for the benchmark (devstack's binary; its memory backend unless
--backend h2: the benchmark measures throughput, not durability), or PUSHTASK_MONGO_URI.
Prints a table with ratios, and where the CPU went: CPU microseconds per recipient of the
client (or the workers), the sink and the store, read from /proc and getrusage over each
measurement. With --markdown FILE it also writes both there. Targets: 4 workers >= 60% of
the ceiling and >= 5x naive.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
from pymongo import AsyncMongoClient, ReturnDocument  # noqa: E402

from pushtask.planning import idempotency_key  # noqa: E402
from pushtask_worker.config import WorkerConfig  # noqa: E402
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

CONCURRENCY = 64  # the ceiling's in-flight requests = a worker's default send concurrency


@dataclass
class Result:
    name: str
    workers: int
    recipients: int
    seconds: float
    # CPU seconds of each part over the measurement: "client" (the ceiling's or naive's own
    # loop, or the workers), "sink", "store" (only when the store is our private server).
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.recipients / self.seconds if self.seconds else 0.0


CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int | None) -> float | None:
    """CPU seconds (user + system) a live process has used so far; None if unknown."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def own_cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


class CpuMeter:
    """CPU used since it was made by the client side, the sink and the store.

    The client side is this process (the ceiling, naive) plus the children reaped meanwhile
    (the workers, which have exited when a pushtask measurement ends)."""

    def __init__(self, sink_pid: int | None, store_pid: int | None) -> None:
        self.pids = {"sink": sink_pid, "store": store_pid}
        self.start = self._now()

    def _now(self) -> dict[str, float | None]:
        now: dict[str, float | None] = {k: proc_cpu(pid) for k, pid in self.pids.items()}
        now["client"] = own_cpu(resource.RUSAGE_SELF) + own_cpu(resource.RUSAGE_CHILDREN)
        return now

    def used(self) -> dict[str, float]:
        end = self._now()
        return {
            k: e - b
            for k in ("client", "sink", "store")
            if (b := self.start.get(k)) is not None and (e := end.get(k)) is not None
        }


class SinkProcess:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> SinkProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.sink", "--port", str(self.port)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                self.stats()
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("sink did not start")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)

    def _call(self, path: str, data: bytes | None = None) -> Any:
        base = f"http://127.0.0.1:{self.port}"
        req = urllib.request.Request(base + path, data=data, method="POST" if data else "GET")
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def stats(self) -> dict[str, Any]:
        return dict(self._call("/_sink/stats"))

    def reset(self) -> None:
        self._call("/_sink/reset", b"{}")


def body_for(user: str) -> bytes:
    return json.dumps(
        {
            "task": {"namespace": "bench", "name": "bench"},
            "run": 1,
            "user": user,
            "message": {"title": f"Hi {user}", "body": "Run 1"},
        }
    ).encode()


async def ceiling(url: str, users: list[str]) -> float:
    """Plain aiohttp: the same requests, CONCURRENCY at a time, nothing else."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for u in users:
        queue.put_nowait(u)
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def loop() -> None:
            while not queue.empty():
                u = queue.get_nowait()
                headers = {"Idempotency-Key": idempotency_key("bench", 1, u)}
                async with session.post(url, data=body_for(u), headers=headers) as resp:
                    await resp.read()

        started = time.monotonic()
        await asyncio.gather(*(loop() for _ in range(CONCURRENCY)))
        return time.monotonic() - started


async def naive(uri: str, url: str, users: list[str], loops: int, budget: float) -> Result:
    """The seed's way: claim one user with find-and-modify, send, mark; sequential loops."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
    coll = client.get_default_database()["naive"]
    for i in range(0, len(users), 1000):
        await coll.insert_many(
            [{"user": u, "status": "pending"} for u in users[i : i + 1000]], ordered=False
        )
    done = 0
    async with aiohttp.ClientSession() as session:
        started = time.monotonic()
        deadline = started + budget

        async def loop() -> None:
            nonlocal done
            while time.monotonic() < deadline:
                doc = await coll.find_one_and_update(
                    {"status": "pending"},
                    {"$set": {"status": "claimed"}},
                    return_document=ReturnDocument.AFTER,
                )
                if doc is None:
                    return
                headers = {"Idempotency-Key": idempotency_key("bench", 1, doc["user"])}
                async with session.post(url, data=body_for(doc["user"]), headers=headers) as r:
                    await r.read()
                await coll.update_one({"_id": doc["_id"]}, {"$set": {"status": "sent"}})
                done += 1

        await asyncio.gather(*(loop() for _ in range(loops)))
        elapsed = time.monotonic() - started
    await client.close()
    return Result("naive", loops, done, elapsed)


def pushtask(
    mongo_uri: str,
    url: str,
    users: list[str],
    workers: int,
    logs: Path,
    shards: int,
    max_batch: int,
) -> Result:
    uri = db_uri(mongo_uri, f"bench_{secrets.token_hex(4)}")
    try:
        spec = spec_for(users, url=url, shards=shards, rate=1_000_000, secret=False)
        run_id, _ = create_run(uri, spec)
        started = time.monotonic()
        with WorkerProcs(
            uri,
            run_id,
            logs / f"w{workers}",
            # The production lease, not the tests' short one (which sizes store steps).
            env={
                "PUSHTASK_LOG_LEVEL": "warning",
                "PUSHTASK_LEASE_SECONDS": str(WorkerConfig.lease_seconds),
            }
            | ({"PUSHTASK_MAX_BATCH": str(max_batch)} if max_batch else {}),
        ) as procs:
            procs.start_many(workers)
            codes = procs.wait(3600)
            if set(codes.values()) != {0}:
                raise RuntimeError(f"a worker failed: {codes}\n{procs.logs()}")
        elapsed = time.monotonic() - started
        t = totals(uri, run_id)
        if t.sent != len(users):
            raise RuntimeError(f"only {t.sent} of {len(users)} sent: {t}")
        return Result("pushtask", workers, len(users), elapsed)
    finally:
        drop_db(uri)


def table(results: list[Result], ceiling_rate: float, naive_rate: float) -> str:
    lines = [
        "| mode | workers | recipients | seconds | per second | vs ceiling | vs naive |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.workers} | {r.recipients:,} | {r.seconds:.1f} | {r.rate:,.0f} | "
            f"{r.rate / ceiling_rate:.0%} | {r.rate / naive_rate:.1f}x |"
        )
    return "\n".join(lines)


def cpu_table(results: list[Result]) -> str:
    """Where the CPU went, per recipient; "bound" is what the machine's CPUs would allow if
    they did nothing else: CPUs / total CPU per recipient."""
    cpus = os.cpu_count() or 1
    lines = [
        "| mode | workers | client or workers µs | sink µs | store µs | total µs "
        f"| bound on {cpus} CPUs |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        per = {k: v / r.recipients * 1e6 for k, v in r.cpu.items()} if r.recipients else {}
        total = sum(per.values())
        cells = [f"{per[k]:,.0f}" if k in per else "-" for k in ("client", "sink", "store")]
        bound = f"{cpus / total * 1e6:,.0f}/s" if total else "-"
        lines.append(f"| {r.name} | {r.workers} | {' | '.join(cells)} | {total:,.0f} | {bound} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", type=int, default=100_000, help="recipients per measurement")
    p.add_argument("--workers", default="1,2,4", help="worker counts to measure")
    p.add_argument("--naive-seconds", type=float, default=120.0, help="time cap of naive")
    p.add_argument("--shards", type=int, default=16, help="audience.shards of the run")
    p.add_argument(
        "--max-batch", type=int, default=0, help="PUSHTASK_MAX_BATCH of workers (0: default)"
    )
    p.add_argument(
        "--backend",
        choices=("memory", "h2"),
        default="memory",
        help="mongo-java-server backend of the private store (ignored with PUSHTASK_MONGO_URI)",
    )
    p.add_argument("--markdown", default=None, help="also write the table to this file")
    p.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = p.parse_args(argv)
    counts = [int(w) for w in args.workers.split(",")]
    users = [f"u{i:08d}" for i in range(args.size)]
    logs = Path(tempfile.mkdtemp(prefix="pushtask-bench-"))
    results: list[Result] = []
    private: PrivateMongo | None = None
    mongo = os.environ.get("PUSHTASK_MONGO_URI", "")
    store = mongo
    if not mongo:
        private = PrivateMongo(logs / "store.mv", memory=args.backend == "memory")
        private.start()
        mongo = private.uri
        store = f"a private mongo-java-server ({args.backend} backend)"
    try:
        store_pid = private.proc.pid if private is not None and private.proc else None
        return run(args, counts, users, logs, mongo, store, store_pid, results)
    finally:
        if private is not None:
            private.stop()


def run(
    args: argparse.Namespace,
    counts: list[int],
    users: list[str],
    logs: Path,
    mongo: str,
    store: str,
    store_pid: int | None,
    results: list[Result],
) -> int:
    with SinkProcess() as sink:
        print(f"sink {sink.url}; store {store}; {args.size:,} recipients; logs {logs}")
        sink_pid = sink.proc.pid if sink.proc else None
        meter = CpuMeter(sink_pid, None)  # the ceiling does not touch the store
        secs = asyncio.run(ceiling(sink.url, users))
        ceil = Result("ceiling (plain aiohttp)", 1, args.size, secs, meter.used())
        got = sink.stats()["delivered"]
        if got != args.size:
            raise RuntimeError(f"ceiling: the sink saw {got} of {args.size} requests")
        print(f"ceiling: {secs:.1f}s, {ceil.rate:,.0f}/s", flush=True)
        sink.reset()
        naive_uri = db_uri(mongo, f"bench_naive_{secrets.token_hex(4)}")
        try:
            meter = CpuMeter(sink_pid, store_pid)
            nv = asyncio.run(naive(naive_uri, sink.url, users, max(counts), args.naive_seconds))
            nv.cpu = meter.used()
        finally:
            drop_db(naive_uri)
        nv.name = "naive (find-and-modify per user)"
        print(f"naive: {nv.recipients:,} in {nv.seconds:.1f}s, {nv.rate:,.0f}/s", flush=True)
        results += [ceil, nv]
        for w in counts:
            sink.reset()
            meter = CpuMeter(sink_pid, store_pid)
            r = pushtask(mongo, sink.url, users, w, logs, args.shards, args.max_batch)
            r.cpu = meter.used()
            stats = sink.stats()
            if stats["delivered_users"] != args.size or stats["duplicates"]:
                raise RuntimeError(f"sink saw {stats}")
            print(f"pushtask x{w}: {r.seconds:.1f}s, {r.rate:,.0f}/s", flush=True)
            results.append(r)
    out = table(results, ceil.rate, nv.rate) + "\n\n" + cpu_table(results)
    cpu = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    print()
    print(out)
    best = max((r for r in results if r.name == "pushtask"), key=lambda r: r.workers)
    ok_ceiling = best.rate >= 0.6 * ceil.rate
    ok_naive = best.rate >= 5 * nv.rate
    verdict = (
        f"{best.workers} workers: {best.rate / ceil.rate:.0%} of the ceiling "
        f"(target 60%: {'met' if ok_ceiling else 'MISSED'}), "
        f"{best.rate / nv.rate:.1f}x naive (target 5x: {'met' if ok_naive else 'MISSED'})"
    )
    print(verdict)
    if args.markdown:
        Path(args.markdown).write_text(
            f"{args.size:,} recipients, store: {store}, {cpu}\n\n{out}\n\n{verdict}\n"
        )
    return 1 if args.check and not (ok_ceiling and ok_naive) else 0


if __name__ == "__main__":
    sys.exit(main())
