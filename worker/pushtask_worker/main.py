"""`pushtask-worker`: the MongoDB URI and the run id from the environment, then work.

SIGTERM (a pod being deleted, a scale-down): finish the batch in flight, give the split
back, exit 0 — well within the pod's grace period.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from pushtask.store import Store
from pushtask_worker import logs, metrics
from pushtask_worker.config import ConfigError, WorkerConfig
from pushtask_worker.worker import Worker

log = logging.getLogger("pushtask.worker")


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


def main() -> None:
    try:
        config = WorkerConfig.from_env()
    except ConfigError as error:
        print(f"pushtask-worker: {error}", file=sys.stderr)
        sys.exit(2)
    logs.setup(os.environ.get("PUSHTASK_LOG_LEVEL", "info"), worker=config.worker_id)
    sys.exit(asyncio.run(amain(config)))


if __name__ == "__main__":
    main()
