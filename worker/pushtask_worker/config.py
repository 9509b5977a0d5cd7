"""The worker's settings, all from its environment: it needs only the store and a run id."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class WorkerConfig:
    mongo_uri: str
    run_id: str
    worker_id: str
    lease_seconds: float = 30.0
    metrics_port: int = 9090
    metrics_host: str = "0.0.0.0"
    exit_when_done: bool = False
    # How many sends a worker keeps in flight at once, and the send window: how many
    # positions of a chunk may be started before their results are recorded (what a crash
    # can leave in doubt). 0 = the concurrency.
    concurrency: int = 64
    window: int = 0
    idle_seconds: float = 1.0

    @property
    def send_window(self) -> int:
        return self.window or self.concurrency

    @property
    def heartbeat_seconds(self) -> float:
        # Three chances to renew before a lease runs out.
        return max(0.2, self.lease_seconds / 3)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WorkerConfig:
        env = os.environ if env is None else env
        missing = [k for k in ("PUSHTASK_MONGO_URI", "PUSHTASK_RUN_ID") if not env.get(k)]
        if missing:
            raise ConfigError(f"missing environment: {', '.join(missing)}")
        worker_id = (
            env.get("PUSHTASK_WORKER_ID")
            or env.get("POD_NAME")
            or f"{socket.gethostname()}-{os.getpid()}"
        )
        try:
            return cls(
                mongo_uri=env["PUSHTASK_MONGO_URI"],
                run_id=env["PUSHTASK_RUN_ID"],
                worker_id=worker_id,
                lease_seconds=float(env.get("PUSHTASK_LEASE_SECONDS", "30")),
                metrics_port=int(env.get("PUSHTASK_METRICS_PORT", "9090") or 0),
                metrics_host=env.get("POD_IP") or env.get("PUSHTASK_METRICS_HOST", "0.0.0.0"),
                exit_when_done=env.get("PUSHTASK_EXIT_WHEN_DONE", "") in {"1", "true", "yes"},
                concurrency=int(env.get("PUSHTASK_CONCURRENCY", "64")),
                window=int(env.get("PUSHTASK_WINDOW", "0") or 0),
            )
        except ValueError as error:
            raise ConfigError(f"bad worker setting: {error}") from None
