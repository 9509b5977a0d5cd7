"""Workers whose clocks disagree with everyone else's, on devstack (libfaketime).

A node with NTP down, or a VM resumed from suspend, runs minutes off. Beside the task's two
worker pods, two more `pushtask-worker` processes with the Deployment's environment join
the run, one at +5 minutes and one at -5 minutes (Debian's `faketime`). Leases, heartbeats
and the rate are judged on the store's clock, so: nobody is in doubt, everyone is
delivered once, no live lease is stolen, no worker is reported lost and the task never
enters Reboot. Then a worker that really dies is still reclaimed within two lease periods.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.database import Database

from tests.e2e.release import on_devstack
from tests.e2e.test_operator_e2e import (
    Env,
    assert_each_once,
    configmap_audience,
    kill_processes_of,
    push_task,
    users,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]
WORKER_BIN = str(Path(sys.executable).with_name("pushtask-worker"))
LEASE = 10.0  # worker.leaseSeconds of the tests' releases (test_operator_e2e.install)


def skewed_worker(
    env: Env, run_id: str, name: str, offset: str, log: Path
) -> subprocess.Popen[bytes]:
    """A worker process as the Deployment would run it, on a clock `offset` off."""
    faketime = shutil.which("faketime")
    assert faketime, "faketime is missing (scripts/bootstrap.sh installs it)"
    worker_env = {
        **os.environ,
        "PUSHTASK_MONGO_URI": env.mongo_uri,
        "PUSHTASK_RUN_ID": run_id,
        "PUSHTASK_WORKER_ID": name,
        "PUSHTASK_LEASE_SECONDS": str(LEASE),
        "PUSHTASK_METRICS_PORT": "0",
        "PUSHTASK_EXIT_WHEN_DONE": "1",
    }
    out = open(log, "wb")
    try:
        return subprocess.Popen(
            [faketime, "-f", offset, WORKER_BIN],
            env=worker_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    finally:
        out.close()


class PhaseWatch:
    """Every phase the task shows while the test runs (polled: a Reboot lasts seconds)."""

    def __init__(self, env: Env, name: str) -> None:
        self.env, self.name, self.seen = env, name, Counter[str]()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                phase = self.env.phase(self.name)
            except AssertionError:
                phase = None
            if phase:
                self.seen[phase] += 1
            self._stop.wait(0.3)

    def __enter__(self) -> PhaseWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def positions_by_worker(env: Env, run_id: str) -> Counter[str]:
    """Recipients each worker recorded as sent (the ledger's first-attempt writes)."""
    client: MongoClient[dict[str, Any]]
    with MongoClient(env.mongo_uri, serverSelectionTimeoutMS=5000) as client:
        db: Database[dict[str, Any]] = client.get_default_database()
        by: Counter[str] = Counter()
        for chunk in db["chunks"].find({"run": run_id}, {"ok": 1}):
            for write in (chunk.get("ok") or {}).values():
                by[str(write.get("w"))] += len(write.get("p") or [])
        return by


def held_tokens(env: Env, run_id: str, ids: set[str]) -> dict[str, int]:
    client: MongoClient[dict[str, Any]]
    with MongoClient(env.mongo_uri, serverSelectionTimeoutMS=5000) as client:
        chunks: Collection[dict[str, Any]] = client.get_default_database()["chunks"]
        return {
            c["_id"]: int(c.get("token") or 0) for c in chunks.find({"_id": {"$in": list(ids)}})
        }


def held_chunks(env: Env, run_id: str, owner: str) -> dict[str, int]:
    """Chunks `owner` holds now, with their fencing tokens."""
    client: MongoClient[dict[str, Any]]
    with MongoClient(env.mongo_uri, serverSelectionTimeoutMS=5000) as client:
        chunks: Collection[dict[str, Any]] = client.get_default_database()["chunks"]
        query = {"run": run_id, "status": "leased", "owner": owner}
        return {c["_id"]: int(c.get("token") or 0) for c in chunks.find(query, {"token": 1})}


def start(env: Env, tmp_path: Path, name: str, audience: list[str], **spec: Any) -> str:
    """A task with a ConfigMap audience, applied and Started: its run id."""
    on_devstack()
    task = push_task(name, env.sink.url, [], **spec)
    task["spec"]["audience"] = configmap_audience(env, tmp_path, name, audience)
    env.apply(task)
    return str(env.wait_phase(name, "Started", 120)["runId"])


@pytest.fixture
def skewed(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(10)


def test_workers_five_minutes_ahead_and_behind_lose_nobody(
    env: Env, tmp_path: Path, skewed: list[subprocess.Popen[bytes]]
) -> None:
    audience = users(30_000, "c")
    with PhaseWatch(env, "skew") as watch:
        run_id = start(env, tmp_path, "skew", audience, workers=2, rate=1500)
        for name, offset in (("ahead", "+5m"), ("behind", "-5m")):
            skewed.append(skewed_worker(env, run_id, name, offset, tmp_path / f"{name}.log"))
        status = env.wait_phase("skew", "Finished", timeout=300)
    for p in skewed:
        p.wait(60)
    logs = {
        p: (tmp_path / f"{p}.log").read_text(errors="replace")[-2000:] for p in ("ahead", "behind")
    }
    by_worker = positions_by_worker(env, run_id)
    print(f"\nphases seen: {dict(watch.seen)}; sent by worker: {dict(by_worker)}")
    counts = status["counts"]
    print(f"counts: {counts}")
    assert counts["unknown"] == 0, (counts, logs)
    assert counts["sent"] == len(audience), counts
    assert_each_once(env, audience)
    # The skewed workers really worked beside the pods (each sent a share).
    assert by_worker["ahead"] > 0 and by_worker["behind"] > 0, (by_worker, logs)
    assert "Reboot" not in watch.seen, dict(watch.seen)
    reasons = {e.get("reason") for e in env.events("skew")}
    assert "WorkerLost" not in reasons, reasons


def test_a_worker_really_killed_is_reclaimed_within_two_lease_periods(
    env: Env, tmp_path: Path, skewed: list[subprocess.Popen[bytes]]
) -> None:
    audience = users(6000, "k")
    run_id = start(env, tmp_path, "killed", audience, workers=1, rate=200)
    # One skewed worker beside the pod; then the pod's worker is killed mid-chunk.
    skewed.append(skewed_worker(env, run_id, "ahead", "+5m", tmp_path / "ahead.log"))
    wait_for("sending under way", lambda: len(env.delivered()) > 600, 180)
    pod = env.worker_pods("killed")[0]["metadata"]["name"]
    held = wait_for("a chunk held by the pod", lambda: held_chunks(env, run_id, pod), 60, 0.1)
    assert kill_processes_of(pod) > 0
    killed_at = time.monotonic()

    def reclaimed() -> bool:
        now = held_tokens(env, run_id, set(held))
        return all(now.get(c, 0) > token for c, token in held.items())

    wait_for("the dead worker's chunks reclaimed", reclaimed, 2 * LEASE + 5, 0.2)
    took = time.monotonic() - killed_at
    print(f"\nreclaimed {len(held)} chunk(s) {took:.1f}s after the kill (lease {LEASE:g}s)")
    assert took <= 2 * LEASE
    env.wait_phase("killed", "Finished", timeout=300)
    got = env.delivered()
    assert max(got.values()) == 1
    assert len(got) >= len(audience) - 64  # at most one window in doubt (AtMostOnce)
