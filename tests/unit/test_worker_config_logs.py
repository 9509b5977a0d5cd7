"""The worker's environment and its JSON logs."""

from __future__ import annotations

import json
import logging

import pytest

from pushtask_worker.config import ConfigError, WorkerConfig
from pushtask_worker.logs import JsonFormatter


def test_config_from_env_defaults_and_errors() -> None:
    cfg = WorkerConfig.from_env(
        {"PUSHTASK_MONGO_URI": "mongodb://m/", "PUSHTASK_RUN_ID": "r", "POD_NAME": "pod-1"}
    )
    assert (cfg.worker_id, cfg.lease_seconds, cfg.metrics_port) == ("pod-1", 30.0, 9090)
    assert cfg.heartbeat_seconds == 10.0 and not cfg.exit_when_done
    cfg = WorkerConfig.from_env(
        {
            "PUSHTASK_MONGO_URI": "mongodb://m/",
            "PUSHTASK_RUN_ID": "r",
            "PUSHTASK_WORKER_ID": "w",
            "PUSHTASK_LEASE_SECONDS": "6",
            "PUSHTASK_METRICS_PORT": "0",
            "PUSHTASK_EXIT_WHEN_DONE": "1",
        }
    )
    assert (cfg.worker_id, cfg.heartbeat_seconds, cfg.metrics_port) == ("w", 2.0, 0)
    assert cfg.exit_when_done
    with pytest.raises(ConfigError, match="PUSHTASK_RUN_ID"):
        WorkerConfig.from_env({"PUSHTASK_MONGO_URI": "mongodb://m/"})
    with pytest.raises(ConfigError):
        WorkerConfig.from_env(
            {"PUSHTASK_MONGO_URI": "m", "PUSHTASK_RUN_ID": "r", "PUSHTASK_LEASE_SECONDS": "x"}
        )


def test_logs_are_one_json_object_per_line_with_extra_fields() -> None:
    fmt = JsonFormatter(worker="w1")
    record = logging.makeLogRecord(
        {
            "name": "pushtask.worker",
            "levelname": "WARNING",
            "msg": "lease lost on %s",
            "args": ("s/1",),
            "split": "s/1",
        }
    )
    out = json.loads(fmt.format(record))
    assert out["msg"] == "lease lost on s/1"
    assert (out["level"], out["worker"], out["split"]) == ("warning", "w1", "s/1")
    assert out["ts"].endswith("+00:00")
