"""Run real worker processes against a real MongoDB-wire server (integration tests, bench).

A run is planned and stored exactly as the operator does it (pushtask.planning + store),
then `pushtask-worker` OS processes work it with PUSHTASK_EXIT_WHEN_DONE=1.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pushtask.models import PushTaskSpec
from pushtask.planning import TaskRef, plan_run
from pushtask.records import RunTotals
from pushtask.store import Store
from tests.support.sink import free_port

WORKER_BIN = str(Path(sys.executable).with_name("pushtask-worker"))
INLINE_MAX = 10_000  # the largest inline list the models accept
# Audiences spec_for put into collections, written by create_run: collection → users.
SEEDS: dict[str, list[Any]] = {}


def db_uri(uri: str, db: str) -> str:
    """The server's URI naming database `db` (workers take their database from the URI)."""
    base, _, query = uri.partition("?")
    base = base.rstrip("/")
    if base.count("/") > 2:  # already names a database
        base = base.rsplit("/", 1)[0]
    return f"{base}/{db}" + (f"?{query}" if query else "")


def drop_db(uri: str) -> None:
    from pymongo import MongoClient
    from pymongo.uri_parser import parse_uri

    name = parse_uri(uri).get("database")
    if name:
        client: MongoClient[dict[str, Any]] = MongoClient(uri, serverSelectionTimeoutMS=5000)
        try:
            client.drop_database(name)
        finally:
            client.close()


def spec_for(
    users: Iterable[Any] | None = None,
    *,
    url: str,
    sources: list[dict[str, Any]] | None = None,
    exclude: list[dict[str, Any]] | None = None,
    rate: float = 100_000,
    shards: int = 16,
    workers: int = 4,
    guarantee: str = "AtMostOnce",
    max_attempts: int = 3,
    backoff: Mapping[str, float] | None = None,
    template: Mapping[str, Any] | None = None,
    failure: Mapping[str, Any] | None = None,
    secret: bool = True,
) -> dict[str, Any]:
    """A validated spec in its frozen JSON form (what the run document keeps).

    An audience larger than an inline list may hold goes into a MongoDB collection source
    instead (create_run seeds it into the run's database), as a user would do it."""
    if sources is not None:
        srcs = sources
    else:
        listed = list(users or [])
        if len(listed) > INLINE_MAX:
            collection = f"audience_{secrets.token_hex(4)}"
            SEEDS[collection] = listed
            srcs = [{"kind": "mongo", "collection": collection, "idField": "_id"}]
        else:
            srcs = [{"kind": "inline", "users": listed}]
    webhook: dict[str, Any] = {"url": url, "timeoutSeconds": 5}
    if secret:
        webhook["secretRef"] = {"name": "hook"}
    raw = {
        "run": 1,
        "workers": workers,
        "rate": {"perSecond": rate},
        "audience": {"shards": shards, "sources": srcs, "exclude": exclude or []},
        "message": {
            "channel": "webhook",
            "webhook": webhook,
            "template": dict(template or {"title": "Hi {{ user }}", "body": "Run {{ run }}"}),
        },
        "delivery": {
            "guarantee": guarantee,
            "maxAttempts": max_attempts,
            "backoff": dict(backoff or {"initialSeconds": 0.2, "maxSeconds": 2}),
            **({"failureThreshold": dict(failure)} if failure else {}),
        },
    }
    return PushTaskSpec.model_validate(raw).model_dump(
        by_alias=True, mode="json", exclude_none=True
    )


def _seed(uri: str, spec: Mapping[str, Any]) -> None:
    """Write the audiences spec_for routed to a collection into the run's database."""
    from pymongo import MongoClient
    from pymongo.uri_parser import parse_uri

    names = [s["collection"] for s in spec["audience"]["sources"] if s["kind"] == "mongo"]
    todo = [n for n in names if n in SEEDS]
    if not todo:
        return
    client: MongoClient[dict[str, Any]] = MongoClient(uri, serverSelectionTimeoutMS=5000)
    try:
        db = client[parse_uri(uri).get("database") or "pushtask"]
        for name in todo:
            docs = [
                {**{k: v for k, v in u.items() if k != "id"}, "_id": u["id"]}
                if isinstance(u, Mapping)
                else {"_id": u}
                for u in SEEDS.pop(name)
            ]
            for i in range(0, len(docs), 10_000):
                db[name].insert_many(docs[i : i + 10_000], ordered=False)
    finally:
        client.close()


async def _create(
    uri: str,
    task: TaskRef,
    spec: dict[str, Any],
    inline: dict[str, str],
    chunk_size: int | None,
    labels: Mapping[str, str] | None = None,
) -> str:
    store = Store.connect(uri)
    try:
        await store.ensure_indexes()
        extra = {"chunk_size": chunk_size} if chunk_size else {}
        plan = plan_run(task, 1, spec, inline=inline, labels=labels, now=datetime.now(UTC), **extra)
        await store.create_run(plan.run_doc, plan.splits)
        return str(plan.run_doc["_id"])
    finally:
        await store.close()


def create_run(
    uri: str,
    spec: dict[str, Any],
    name: str = "t",
    inline: dict[str, str] | None = None,
    *,
    chunk_size: int | None = None,
    labels: Mapping[str, str] | None = None,
) -> tuple[str, TaskRef]:
    _seed(uri, spec)
    task = TaskRef("ns", f"{name}-{secrets.token_hex(3)}", secrets.token_hex(8))
    return asyncio.run(_create(uri, task, spec, inline or {}, chunk_size, labels)), task


async def _with_store(uri: str, fn: Any) -> Any:
    store = Store.connect(uri)
    try:
        return await fn(store)
    finally:
        await store.close()


def totals(uri: str, run_id: str) -> RunTotals:
    return asyncio.run(_with_store(uri, lambda s: s.totals(run_id)))


def run_doc(uri: str, run_id: str) -> dict[str, Any]:
    return asyncio.run(_with_store(uri, lambda s: s.get_run(run_id))) or {}


def recipient_statuses(uri: str, run_id: str) -> dict[str, str]:
    async def go(store: Store) -> dict[str, str]:
        return {user: status async for user, status in store.statuses(run_id)}

    return dict(asyncio.run(_with_store(uri, go)))


def set_control(uri: str, run_id: str, **control: Any) -> None:
    asyncio.run(_with_store(uri, lambda s: s.set_control(run_id, **control)))


@dataclass
class WorkerProcs:
    """A group of `pushtask-worker` processes for one run, with their logs."""

    uri: str
    run_id: str
    log_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    generation: dict[str, int] = field(default_factory=dict)
    metrics_ports: dict[str, int] = field(default_factory=dict)

    def start(self, name: str) -> subprocess.Popen[bytes]:
        gen = self.generation.get(name, 0) + 1
        self.generation[name] = gen
        env = {
            **os.environ,
            "PUSHTASK_MONGO_URI": self.uri,
            "PUSHTASK_RUN_ID": self.run_id,
            "PUSHTASK_WORKER_ID": f"{name}-{gen}",
            "PUSHTASK_METRICS_PORT": "0",
            "PUSHTASK_EXIT_WHEN_DONE": "1",
            "PUSHTASK_LEASE_SECONDS": "6",
            "PUSHTASK_WEBHOOK_SECRET": "s3cret",
            **self.env,
        }
        if env["PUSHTASK_METRICS_PORT"] == "auto":  # a free port each, to scrape
            env["PUSHTASK_METRICS_PORT"] = str(free_port())
            env["PUSHTASK_METRICS_HOST"] = "127.0.0.1"
        self.metrics_ports[name] = int(env["PUSHTASK_METRICS_PORT"])
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{name}-{gen}.log", "wb")
        proc = subprocess.Popen([WORKER_BIN], env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs[name] = proc
        return proc

    def metrics(self, name: str) -> str:
        """The Prometheus text a running worker serves (PUSHTASK_METRICS_PORT=auto)."""
        import urllib.request

        url = f"http://127.0.0.1:{self.metrics_ports[name]}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return str(resp.read().decode())

    def start_many(self, n: int, prefix: str = "w") -> None:
        for i in range(n):
            self.start(f"{prefix}{i}")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        self.procs[name].send_signal(sig)
        self.procs[name].wait(30)

    def wait(self, timeout: float) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        codes: dict[str, int] = {}
        for name, p in self.procs.items():
            left = max(0.1, deadline - time.monotonic())
            try:
                codes[name] = p.wait(left)
            except subprocess.TimeoutExpired:
                raise AssertionError(
                    f"worker {name} still running after {timeout}s; logs in {self.log_dir}"
                ) from None
        return codes

    def stop_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(10)

    def logs(self) -> str:
        return "\n".join(
            f"== {f.name}\n{f.read_text(errors='replace')[-3000:]}"
            for f in sorted(self.log_dir.glob("*.log"))
        )

    def __enter__(self) -> WorkerProcs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def mongo_java_binary() -> Path:
    from devstack import build

    return Path(build.tool_path("mongo-java-server"))


class PrivateMongo:
    """A MongoDB-wire server of our own (devstack's mongo-java-server binary, H2 data file
    `data`, a free port): a test may stop it or load it heavily without touching the
    shared one. With `memory`, its in-memory backend (nothing survives a restart; the
    data path only names the log)."""

    def __init__(self, data: Path, db: str = "pushtask", *, memory: bool = False) -> None:
        self.port = free_port()
        self.data = data
        self.memory = memory
        self.proc: subprocess.Popen[bytes] | None = None
        self.uri = f"mongodb://127.0.0.1:{self.port}/{db}"

    def available(self) -> bool:
        return mongo_java_binary().exists()

    def start(self) -> None:
        log = open(self.data.with_suffix(".log"), "ab")
        self.proc = subprocess.Popen(
            [str(mongo_java_binary()), "127.0.0.1", str(self.port)]
            + ([] if self.memory else [str(self.data)]),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.2)
        raise AssertionError("private mongo-java-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # flushes its data file
            self.proc.wait(30)
        self.proc = None

    def __enter__(self) -> PrivateMongo:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def peak_rss_kib(pid: int) -> int:
    """VmHWM (peak resident set) of a live process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0
