"""Delivery benchmark: PushTask workers beside three baselines, measured in the same run.

    python bench/worker.py [--size 100000] [--workers 1,2,4] [--naive-seconds 120]
                           [--rounds 1] [--json FILE] [--markdown FILE] [--no-celery]

Same sink, same payload, same N for every mode:
- ceiling: a plain aiohttp client sending the same number of requests to the same sink
  with no bookkeeping at all (what the sink and the machine allow), on the worker's event
  loop (uvloop where installed); measured first and again just before each pushtask run,
  which is compared with that one (the machine's speed drifts over minutes);
- naive: the original system's way: per user, one find-and-modify to claim it, the send,
  then one update to mark it, in as many sequential loops as the largest worker count;
- celery: what a Python team would pick instead: Celery on a Redis broker, `acks_late`,
  prefork with one process per CPU, one task per recipient and one task per 100
  (bench/celery_tasks.py), from the first enqueue until the tasks have counted all N;
- pushtask: real `pushtask-worker` processes on a run planned like the operator does, its
  audience a `mongo` source (a users collection the benchmark seeds in its own database),
  from worker start until every worker has exited with the run done (audience included).

The sink runs in its own process (python -m tests.support.sink); the store is a private
mongo-java-server started for the benchmark (devstack's binary; its memory backend unless
--backend h2: the benchmark measures throughput, not durability), or PUSHTASK_MONGO_URI;
Celery's broker is a private redis-server (scripts/bench-setup.sh installs it and Celery).
Prints a table with ratios against the baselines of the same run, the store documents the
workers wrote per recipient (counted by each worker, PUSHTASK_STORE_STATS_FILE), and where
the CPU went: CPU microseconds per recipient of the client (or the workers), the sink and
the store (redis for Celery), read from /proc and getrusage over each measurement. With
--markdown FILE it also writes both there, with --json FILE the figures as JSON. Targets
(issue 10): the best worker count >= 60% of the ceiling and >= 3x Celery batched, and at
most 0.05 store documents written per recipient; nothing fails on them without --check.
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
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
from pymongo import AsyncMongoClient, MongoClient, ReturnDocument  # noqa: E402

from bench import celery_baseline  # noqa: E402
from bench.payload import body_for, headers_for  # noqa: E402
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
CEILING = "ceiling (plain aiohttp)"
NAIVE = "naive (find-and-modify per user)"
CELERY_ONE = "celery (task per recipient)"
CELERY_BATCHED = f"celery (task per {celery_baseline.BATCH})"
PUSHTASK = "pushtask"
T = TypeVar("T")


@dataclass
class Result:
    name: str
    workers: int
    recipients: int
    seconds: float
    # CPU seconds of each part over the measurement: "client" (the ceiling's or naive's own
    # loop, Celery's enqueue and workers, or pushtask's workers), "sink", "store" (only when
    # the store is our own server: the private mongo-java-server, Celery's redis-server).
    cpu: dict[str, float] = field(default_factory=dict)
    # Documents the workers wrote to MongoDB (pushtask modes only).
    store_writes: int | None = None
    # The ceiling measured just before this run (pushtask modes): its ratios are to that
    # one, as the machine's speed drifts over the minutes between the modes.
    paired: Result | None = None

    @property
    def rate(self) -> float:
        return self.recipients / self.seconds if self.seconds else 0.0

    def per_recipient_us(self, part: str) -> float | None:
        if part not in self.cpu or not self.recipients:
            return None
        return self.cpu[part] / self.recipients * 1e6

    @property
    def writes_per_recipient(self) -> float | None:
        if self.store_writes is None or not self.recipients:
            return None
        return self.store_writes / self.recipients


def run_loop(coro: Coroutine[Any, Any, T]) -> T:
    """The event loop the worker runs on (uvloop where installed, pushtask_worker.main), so
    the ceiling's and naive's clients pay what the worker's would for the same requests."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def proc_cpu(pid: int | None) -> float | None:
    """CPU seconds (user + system) a live process has used so far; None if unknown."""
    if pid is None or (fields := _stat_fields(pid)) is None:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def tree_cpu(pid: int | None) -> float | None:
    """CPU seconds of a live process and all its live descendants, plus what the children
    they reaped had used (cutime, cstime): a pool process replaced mid-run still counts."""
    if pid is None:
        return None
    children: dict[int, list[int]] = {}
    fields_of: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat_fields(int(entry.name))) is not None:
            fields_of[int(entry.name)] = fields
            children.setdefault(int(fields[1]), []).append(int(entry.name))  # ppid
    if pid not in fields_of:
        return None
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        if (f := fields_of.get(p)) is not None:
            total += sum(int(x) for x in f[11:15])  # utime, stime, cutime, cstime
        todo += children.get(p, [])
    return total / CLK_TCK


def own_cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


class CpuMeter:
    """CPU used since it was made by the client side, the sink and the store.

    The client side is this process (the ceiling, naive, Celery's enqueue) plus the children
    reaped meanwhile (pushtask's workers, which have exited when a measurement ends) plus
    the live process tree `workers` (Celery's worker and its pool, stopped after it)."""

    def __init__(
        self, sink_pid: int | None, store_pid: int | None, workers: int | None = None
    ) -> None:
        self.pids = {"sink": sink_pid, "store": store_pid}
        self.workers = workers
        self.start = self._now()

    def _now(self) -> dict[str, float | None]:
        now: dict[str, float | None] = {k: proc_cpu(pid) for k, pid in self.pids.items()}
        client = own_cpu(resource.RUSAGE_SELF) + own_cpu(resource.RUSAGE_CHILDREN)
        tree = tree_cpu(self.workers) if self.workers is not None else 0.0
        now["client"] = None if tree is None else client + tree
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

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

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

    def check_exactly_once(self, mode: str, size: int) -> None:
        stats = self.stats()
        if stats["delivered_users"] != size or stats["duplicates"]:
            raise RuntimeError(f"{mode}: the sink saw {stats}, not {size} users once each")


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
                async with session.post(url, data=body_for(u), headers=headers_for(u)) as resp:
                    await resp.read()

        started = time.monotonic()
        await asyncio.gather(*(loop() for _ in range(CONCURRENCY)))
        return time.monotonic() - started


def measure_ceiling(sink: SinkProcess, users: list[str]) -> Result:
    sink.reset()
    meter = CpuMeter(sink.pid, None)  # the ceiling does not touch the store
    secs = run_loop(ceiling(sink.url, users))
    result = Result(CEILING, 1, len(users), secs, meter.used())
    got = sink.stats()["delivered"]
    if got != len(users):
        raise RuntimeError(f"ceiling: the sink saw {got} of {len(users)} requests")
    print(f"ceiling: {secs:.1f}s, {result.rate:,.0f}/s", flush=True)
    sink.reset()
    return result


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
                user = doc["user"]
                async with session.post(url, data=body_for(user), headers=headers_for(user)) as r:
                    await r.read()
                await coll.update_one({"_id": doc["_id"]}, {"$set": {"status": "sent"}})
                done += 1

        await asyncio.gather(*(loop() for _ in range(loops)))
        elapsed = time.monotonic() - started
    await client.close()
    return Result(NAIVE, loops, done, elapsed)


def celery(
    sink: SinkProcess, broker: celery_baseline.RedisServer, users: list[str], batch: int, logs: Path
) -> Result:
    """Celery's worker started and ready first (its start-up is not timed, nor metered)."""
    processes = os.cpu_count() or 1
    name = CELERY_ONE if batch == 1 else CELERY_BATCHED
    broker.flush()
    log = logs / f"celery-{batch}.log"
    with celery_baseline.CeleryWorker(broker.url, sink.url, processes, log) as worker:
        meter = CpuMeter(sink.pid, broker.pid, workers=worker.pid)
        # The slowest Celery mode has done a few hundred a second here; allow for far less.
        secs = celery_baseline.enqueue_and_wait(broker.url, users, batch, 60 + len(users) / 20)
        cpu = meter.used()
    return Result(name, processes, len(users), secs, cpu)


def seed_users(uri: str, users: list[str]) -> None:
    """The audience as a users collection (a `mongo` source reads it), not an inline list."""
    client: MongoClient[dict[str, Any]] = MongoClient(uri)
    try:
        coll = client.get_default_database()["users"]
        for i in range(0, len(users), 10_000):
            coll.insert_many([{"_id": u} for u in users[i : i + 10_000]], ordered=False)
    finally:
        client.close()


def store_writes(stats_file: Path, workers: int) -> int | None:
    """Documents written, summed over the lines the workers appended at exit; None unless
    every worker wrote its line (a worker without the hook would read as writing nothing)."""
    text = stats_file.read_text() if stats_file.exists() else ""
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    if len(lines) < workers:
        return None
    return sum(sum(line["documents"].values()) for line in lines)


def pushtask(
    mongo_uri: str,
    sink: SinkProcess,
    store_pid: int | None,
    users: list[str],
    workers: int,
    logs: Path,
    shards: int,
    window: int,
    concurrency: int,
    chunk_size: int,
) -> Result:
    db = f"bench_{secrets.token_hex(4)}"
    uri = db_uri(mongo_uri, db)
    stats_file = logs / f"w{workers}-{db}-store-writes.jsonl"
    try:
        seed_users(uri, users)
        source = {"kind": "mongo", "collection": "users"}
        spec = spec_for(url=sink.url, sources=[source], shards=shards, rate=1_000_000, secret=False)
        run_id, _ = create_run(uri, spec, chunk_size=chunk_size or None)
        meter = CpuMeter(sink.pid, store_pid)
        started = time.monotonic()
        with WorkerProcs(
            uri,
            run_id,
            logs / f"w{workers}",
            # The production lease, not the tests' short one (which sizes store steps).
            env={
                "PUSHTASK_LOG_LEVEL": "warning",
                "PUSHTASK_LEASE_SECONDS": str(WorkerConfig.lease_seconds),
                "PUSHTASK_STORE_STATS_FILE": str(stats_file),
                # The harness's default signing secret off: the spec asks for none, and the
                # other modes send no signature (bench/payload.py).
                "PUSHTASK_WEBHOOK_SECRET": "",
            }
            | ({"PUSHTASK_WINDOW": str(window)} if window else {})
            | ({"PUSHTASK_CONCURRENCY": str(concurrency)} if concurrency else {}),
        ) as procs:
            procs.start_many(workers)
            codes = procs.wait(3600)
            if set(codes.values()) != {0}:
                raise RuntimeError(f"a worker failed: {codes}\n{procs.logs()}")
        elapsed = time.monotonic() - started
        cpu = meter.used()
        t = totals(uri, run_id)
        if t.sent != len(users):
            raise RuntimeError(f"only {t.sent} of {len(users)} sent: {t}")
        writes = store_writes(stats_file, workers)
        return Result(PUSHTASK, workers, len(users), elapsed, cpu, writes)
    finally:
        drop_db(uri)


def of_ceiling(r: Result, ceil: Result) -> float:
    return r.rate / (r.paired or ceil).rate


def cpu_vs_client(r: Result, ceil: Result) -> float | None:
    """The run's client-side CPU per recipient against its ceiling's (the bare client)."""
    mine, bare = r.per_recipient_us("client"), (r.paired or ceil).per_recipient_us("client")
    return mine / bare if mine is not None and bare else None


def _ratio(rate: float, base: Result | None) -> str:
    return f"{rate / base.rate:.1f}x" if base is not None and base.rate else "-"


def table(results: list[Result], ceil: Result, nv: Result, batched: Result | None) -> str:
    lines = [
        "| mode | workers | recipients | seconds | per second | vs ceiling | vs naive "
        "| vs Celery batched | store docs written per recipient |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        writes = r.writes_per_recipient
        lines.append(
            f"| {r.name} | {r.workers} | {r.recipients:,} | {r.seconds:.1f} | {r.rate:,.0f} | "
            f"{of_ceiling(r, ceil):.0%} | {_ratio(r.rate, nv)} | {_ratio(r.rate, batched)} | "
            f"{'-' if writes is None else f'{writes:.3f}'} |"
        )
    return "\n".join(lines)


def cpu_table(results: list[Result], ceil: Result) -> str:
    """Where the CPU went, per recipient; "bound" is what the machine's CPUs would allow if
    they did nothing else: CPUs / total CPU per recipient."""
    cpus = os.cpu_count() or 1
    lines = [
        "| mode | workers | client or workers µs | vs the ceiling's client | sink µs | store µs "
        f"| total µs | bound on {cpus} CPUs |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        parts = {k: r.per_recipient_us(k) for k in ("client", "sink", "store")}
        per = {k: v for k, v in parts.items() if v is not None}
        total = sum(per.values())
        cells = [f"{per[k]:,.0f}" if k in per else "-" for k in ("client", "sink", "store")]
        vs = cpu_vs_client(r, ceil)
        cells.insert(1, "-" if vs is None else f"{vs:.2f}x")
        bound = f"{cpus / total * 1e6:,.0f}/s" if total else "-"
        lines.append(f"| {r.name} | {r.workers} | {' | '.join(cells)} | {total:,.0f} | {bound} |")
    return "\n".join(lines)


def figures(
    size: int, ceil: Result, nv: Result, celery_runs: dict[int, Result], runs: list[Result]
) -> dict[str, Any]:
    """The run's figures in the shape issue 10 asks for (None where a part did not run)."""

    def rate(r: Result | None) -> float | None:
        return round(r.rate, 1) if r is not None else None

    def us(v: float | None) -> float | None:
        return round(v, 1) if v is not None else None

    return {
        "size": size,
        "ceiling_per_s": rate(ceil),
        "celery_per_recipient_per_s": rate(celery_runs.get(1)),
        "celery_batched_per_s": rate(celery_runs.get(celery_baseline.BATCH)),
        "naive_per_s": rate(nv),
        "pushtask": {
            str(r.workers): {
                "per_s": rate(r),
                "ceiling_per_s": rate(r.paired),
                "of_ceiling": round(of_ceiling(r, ceil), 3),
                "worker_cpu_vs_client": (
                    round(v, 2) if (v := cpu_vs_client(r, ceil)) is not None else None
                ),
                "store_writes_per_recipient": (
                    round(w, 4) if (w := r.writes_per_recipient) is not None else None
                ),
                "store_cpu_us": us(r.per_recipient_us("store")),
                "worker_cpu_us": us(r.per_recipient_us("client")),
            }
            for r in runs
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", type=int, default=100_000, help="recipients per measurement")
    p.add_argument("--workers", default="1,2,4", help="worker counts to measure")
    p.add_argument("--naive-seconds", type=float, default=120.0, help="time cap of naive")
    p.add_argument("--shards", type=int, default=16, help="audience.shards of the run")
    p.add_argument(
        "--window", type=int, default=0, help="PUSHTASK_WINDOW of workers (0: the concurrency)"
    )
    p.add_argument(
        "--chunk-size", type=int, default=0, help="recipients a chunk of the run (0: default)"
    )
    p.add_argument(
        "--concurrency", type=int, default=0, help="PUSHTASK_CONCURRENCY of workers (0: 64)"
    )
    p.add_argument(
        "--backend",
        choices=("memory", "h2"),
        default="memory",
        help="mongo-java-server backend of the private store (ignored with PUSHTASK_MONGO_URI)",
    )
    p.add_argument(
        "--no-celery",
        dest="celery",
        action="store_false",
        help="skip the Celery baseline (needs scripts/bench-setup.sh)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure each worker count this many times, each after its own ceiling",
    )
    p.add_argument("--markdown", default=None, help="also write the table to this file")
    p.add_argument("--json", default=None, help="also write the figures as JSON to this file")
    p.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = p.parse_args(argv)
    if args.celery and (why := celery_baseline.available()):
        p.error(f"{why}, or pass --no-celery")
    counts = [int(w) for w in args.workers.split(",")]
    users = [f"u{i:08d}" for i in range(args.size)]
    logs = Path(tempfile.mkdtemp(prefix="pushtask-bench-"))
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
        return run(args, counts, users, logs, mongo, store, store_pid)
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
) -> int:
    with SinkProcess() as sink:
        print(f"sink {sink.url}; store {store}; {args.size:,} recipients; logs {logs}")
        first = measure_ceiling(sink, users)
        naive_uri = db_uri(mongo, f"bench_naive_{secrets.token_hex(4)}")
        try:
            meter = CpuMeter(sink.pid, store_pid)
            nv = run_loop(naive(naive_uri, sink.url, users, max(counts), args.naive_seconds))
            nv.cpu = meter.used()
        finally:
            drop_db(naive_uri)
        print(f"naive: {nv.recipients:,} in {nv.seconds:.1f}s, {nv.rate:,.0f}/s", flush=True)
        results: list[Result] = [nv]
        celery_runs: dict[int, Result] = {}
        if args.celery:
            with celery_baseline.RedisServer(logs / "redis.log") as broker:
                for batch in (1, celery_baseline.BATCH):
                    sink.reset()
                    r = celery(sink, broker, users, batch, logs)
                    sink.check_exactly_once(r.name, args.size)
                    print(f"{r.name}: {r.seconds:.1f}s, {r.rate:,.0f}/s", flush=True)
                    celery_runs[batch] = r
                    results.append(r)
        every: dict[int, list[Result]] = {w: [] for w in counts}
        ceilings = [first]
        for w in [w for _ in range(args.rounds) for w in counts]:
            paired = measure_ceiling(sink, users)
            ceilings.append(paired)
            r = pushtask(
                mongo,
                sink,
                store_pid,
                users,
                w,
                logs,
                args.shards,
                args.window,
                args.concurrency,
                args.chunk_size,
            )
            sink.check_exactly_once(f"pushtask x{w}", args.size)
            r.paired = paired
            print(f"pushtask x{w}: {r.seconds:.1f}s, {r.rate:,.0f}/s", flush=True)
            every[w].append(r)
    # With rounds, each worker count's row is its run of median ratio to its own ceiling.
    runs = [sorted(rs, key=lambda r: of_ceiling(r, first))[len(rs) // 2] for rs in every.values()]
    # The ceiling's row: the median of its measurements (naive and Celery are compared with
    # it; each pushtask row with the ceiling measured just before it).
    ceil = sorted(ceilings, key=lambda c: c.rate)[len(ceilings) // 2]
    results.insert(0, ceil)
    results += runs
    batched = celery_runs.get(celery_baseline.BATCH)
    measured = ", ".join(f"{c.rate:,.0f}" for c in ceilings)
    out = (
        table(results, ceil, nv, batched)
        + "\n\n"
        + cpu_table(results, ceil)
        + f"\n\nceiling measured {len(ceilings)} times ({measured} a second: first, then just "
        "before each pushtask run); its row is the median, each pushtask row is compared "
        "with the one just before it"
        + (
            "; rounds: "
            + "; ".join(
                f"{w} worker{'s' if w > 1 else ''} "
                + ", ".join(f"{of_ceiling(r, first):.0%}" for r in rs)
                for w, rs in every.items()
            )
            + " of the ceiling (each row is the median)"
            if args.rounds > 1
            else ""
        )
    )
    cpu = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    print()
    print(out)
    best = max(runs, key=lambda r: of_ceiling(r, ceil))
    writes = best.writes_per_recipient
    leanest = min(runs, key=lambda r: cpu_vs_client(r, ceil) or float("inf"))
    lean = cpu_vs_client(leanest, ceil)
    checks = {
        "ceiling": of_ceiling(best, ceil) >= 0.6,
        "celery": batched is None or best.rate >= 3 * batched.rate,
        "writes": writes is not None and writes <= 0.05,
    }

    def mark(ok: bool) -> str:
        return "met" if ok else "MISSED"

    verdict = (
        f"best: {best.workers} worker{'s' if best.workers > 1 else ''}: "
        f"{of_ceiling(best, ceil):.0%} of the ceiling "
        f"(target 60%: {mark(checks['ceiling'])}), "
        + (
            f"{best.rate / batched.rate:.1f}x Celery batched (target 3x: "
            f"{mark(checks['celery'])}), "
            if batched is not None
            else "Celery not measured, "
        )
        + f"{'-' if writes is None else f'{writes:.3f}'} store documents written per "
        f"recipient (target 0.05: {mark(checks['writes'])}); {best.rate / nv.rate:.1f}x naive; "
        f"worker CPU per recipient {'-' if lean is None else f'{lean:.2f}x'} the bare "
        f"client's at {leanest.workers} worker{'s' if leanest.workers > 1 else ''} "
        f"(target 1.5x: {mark(lean is not None and lean <= 1.5)})"
    )
    print(verdict)
    if args.markdown:
        Path(args.markdown).write_text(
            f"{args.size:,} recipients, store: {store}, {cpu}\n\n{out}\n\n{verdict}\n"
        )
    if args.json:
        doc = figures(args.size, ceil, nv, celery_runs, runs)
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    return 1 if args.check and not all(checks.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
