"""`pushtask-worker`: the MongoDB URI and the run id from the environment, then work.
(`pushtask-worker test-send`: one test send, without any store; see testsend.py.)

SIGTERM (a pod being deleted, a scale-down): finish the batch in flight, give the split
back, exit 0 — well within the pod's grace period.
"""

from __future__ import annotations

import asyncio
import atexit
import gc
import heapq
import json
import logging
import os
import signal
import sys
import time
from collections import Counter
from typing import Any

from pymongo import monitoring

from pushtask.store import Store
from pushtask_worker import logs, metrics
from pushtask_worker.config import ConfigError, WorkerConfig
from pushtask_worker.worker import Worker

log = logging.getLogger("pushtask.worker")
GC_YOUNG_THRESHOLD = 50_000  # see tune_gc


async def amain(config: WorkerConfig) -> int:
    store = Store.connect(config.mongo_uri)
    worker = Worker(config, store)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stopping.set)
    metrics.serve(config.metrics_port, config.metrics_host)
    log.info("worker starting", extra={"run": config.run_id})
    try:
        return await worker.run_forever()
    finally:
        await store.close()
        log.info("worker stopped", extra={"run": config.run_id})


class _StoreStats(monitoring.CommandListener):
    """Documents this process wrote, per write command (the benchmark's store-cost figure),
    and how long each command took on each collection (where a slow store spends it)."""

    def __init__(self) -> None:
        self.commands: Counter[str] = Counter()
        self.documents: Counter[str] = Counter()
        self.on: dict[int, str] = {}  # request id -> "command collection"
        # "command collection" -> [calls, total ms, max ms]
        self.latency: dict[str, list[float]] = {}
        self.slowest: list[tuple[float, float, str]] = []  # a heap of (ms, ended at, key)

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        target = event.command.get(event.command_name)
        where = target if isinstance(target, str) else ""
        self.on[event.request_id] = f"{event.command_name} {where}".strip()

    def _timed(
        self, event: monitoring.CommandSucceededEvent | monitoring.CommandFailedEvent
    ) -> None:
        key = self.on.pop(event.request_id, event.command_name)
        ms = event.duration_micros / 1000
        row = self.latency.setdefault(key, [0, 0.0, 0.0])
        row[0] += 1
        row[1] += ms
        row[2] = max(row[2], ms)
        heapq.heappush(self.slowest, (ms, time.time(), key))
        if len(self.slowest) > 30:
            heapq.heappop(self.slowest)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self._timed(event)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        self._timed(event)
        name, reply = event.command_name, event.reply
        if name == "findAndModify":
            n = int(reply.get("lastErrorObject", {}).get("n", 0))
        elif name == "update":
            # Matched but unchanged documents cost no write.
            n = int(reply.get("nModified", reply.get("n", 0))) + len(reply.get("upserted", ()))
        elif name == "insert":
            # mongo-java-server counts an unordered insert's failed documents in n.
            n = int(reply.get("n", 0)) - len(reply.get("writeErrors", ()))
        elif name == "delete":
            n = int(reply.get("n", 0))
        else:
            return
        self.commands[name] += 1
        self.documents[name] += n

    def dump(self, path: str) -> None:
        latency = {
            k: {"calls": int(c), "ms": round(t), "max_ms": round(m)}
            for k, (c, t, m) in self.latency.items()
        }
        doc: dict[str, Any] = {
            "commands": self.commands,
            "documents": self.documents,
            "latency": latency,
            "slowest": [
                {"ms": round(ms), "ended": round(at, 1), "command": key}
                for ms, at, key in sorted(self.slowest, reverse=True)
            ],
        }
        # One short line per process, appended: workers sharing the file do not clobber it.
        with open(path, "a") as fh:
            fh.write(json.dumps(doc) + "\n")


def _record_store_stats(path: str) -> None:
    """Off unless PUSHTASK_STORE_STATS_FILE is set: then every MongoDB client of this process
    counts its writes and times its commands, appended to that file as one JSON line at exit."""
    stats = _StoreStats()
    monitoring.register(stats)
    atexit.register(stats.dump, path)


def main() -> None:
    if sys.argv[1:2] == ["test-send"]:  # a test send's one-shot pod (`kubectl push test`)
        from pushtask_worker import testsend

        logs.setup(os.environ.get("PUSHTASK_LOG_LEVEL", "info"), test_send=True)
        sys.exit(testsend.main())
    try:
        config = WorkerConfig.from_env()
    except ConfigError as error:
        print(f"pushtask-worker: {error}", file=sys.stderr)
        sys.exit(2)
    logs.setup(os.environ.get("PUSHTASK_LOG_LEVEL", "info"), worker=config.worker_id)
    if stats_file := os.environ.get("PUSHTASK_STORE_STATS_FILE"):
        _record_store_stats(stats_file)
    tune_gc()
    sys.exit(run(amain(config)))


def tune_gc() -> None:
    """Collect young objects every 50,000 net allocations instead of every 700.

    Measured over one worker's 100,000 sends (docs/benchmarks.md): the default thresholds ran
    5,967 young and 49 full collections, 2.2 s of its 16 s of CPU (the full ones walk the
    whole heap, and the audience makes it large), and together they found 107 objects in
    reference cycles: sends free their objects by reference counting. With this, 5
    collections; cycles (an error's traceback, say) are still collected, a little later."""
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 100)


def run(coro: Any) -> int:
    """uvloop where it is installed: its loop and transports cost the worker less CPU per
    send than asyncio's own (docs/benchmarks.md)."""
    try:
        import uvloop
    except ImportError:
        return int(asyncio.run(coro))
    return int(uvloop.run(coro))


if __name__ == "__main__":
    main()
