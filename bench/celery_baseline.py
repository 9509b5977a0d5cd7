"""The Celery baseline's machinery: a private redis-server, a Celery worker, the enqueue.

redis-server is Debian's (scripts/bench-setup.sh), run on a free loopback port with
persistence off (the pushtask store is mongo-java-server's memory backend: neither side
pays for a disk). The worker is `celery worker` with the prefork pool and one process per
CPU, started before a measurement and stopped after it, so its start-up is not timed; a
measurement runs from the first enqueue until the tasks have counted all N sends.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tests.support.sink import free_port

ROOT = Path(__file__).resolve().parents[1]
BATCH = 100  # recipients per task in the batched mode


def available() -> str | None:
    """Why the Celery baseline cannot run here (None: it can)."""
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (run scripts/bench-setup.sh)"
    try:
        import celery  # noqa: F401
        import redis  # noqa: F401
    except ImportError:
        return "the bench extra (celery[redis]) is not installed (run scripts/bench-setup.sh)"
    return None


class RedisServer:
    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def __enter__(self) -> RedisServer:
        out = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.log.parent),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        out.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited; see {self.log}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)
        self.proc = None

    def flush(self) -> None:
        """Nothing of an earlier mode (a queue, the counter) carries over into the next."""
        import redis

        client = redis.Redis.from_url(self.url)
        try:
            client.flushall()
        finally:
            client.close()


class CeleryWorker:
    """`celery worker`, prefork, `processes` pool processes, ready to take tasks."""

    def __init__(self, broker: str, sink_url: str, processes: int, log: Path) -> None:
        self.broker = broker
        self.sink_url = sink_url
        self.processes = processes
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def __enter__(self) -> CeleryWorker:
        from bench import celery_tasks

        out = open(self.log, "ab")
        env = {
            **os.environ,
            "BENCH_CELERY_BROKER": self.broker,
            "BENCH_SINK_URL": self.sink_url,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        }
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "bench.celery_tasks",
                "worker",
                "--pool",
                "prefork",
                "--concurrency",
                str(self.processes),
                "--loglevel",
                "WARNING",
                "--hostname",
                f"bench{os.getpid()}@%h",
                # Cluster chatter among workers; one worker has no one to talk to.
                "--without-gossip",
                "--without-mingle",
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        out.close()
        celery_tasks.app.conf.broker_url = self.broker
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"celery worker exited; see {self.log}")
            replies = celery_tasks.app.control.ping(timeout=0.5)
            if replies:
                return self
        raise RuntimeError(f"celery worker did not answer a ping; see {self.log}")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # warm shutdown: the pool exits too
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


def chunks(users: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(users), size):
        yield users[i : i + size]


def enqueue_and_wait(broker: str, users: list[str], batch: int, timeout: float) -> float:
    """Seconds from the first enqueue until the tasks have counted every send.

    batch 1: one task per recipient; else one task per `batch` recipients. One producer
    (one broker connection) for the whole enqueue, as Celery's docs advise for bulk sends."""
    import redis

    from bench import celery_tasks

    counter = redis.Redis.from_url(broker)
    counter.delete(celery_tasks.SENT_KEY)
    app = celery_tasks.app
    app.conf.broker_url = broker
    started = time.monotonic()
    with app.producer_or_acquire() as producer:
        if batch == 1:
            for user in users:
                celery_tasks.send_one.apply_async((user,), producer=producer)
        else:
            for part in chunks(users, batch):
                celery_tasks.send_batch.apply_async((part,), producer=producer)
    deadline = started + timeout
    while int(counter.get(celery_tasks.SENT_KEY) or 0) < len(users):
        if time.monotonic() > deadline:
            got = int(counter.get(celery_tasks.SENT_KEY) or 0)
            raise RuntimeError(f"celery: {got} of {len(users)} sent after {timeout:.0f}s")
        time.sleep(0.01)
    elapsed = time.monotonic() - started
    counter.close()
    return elapsed
