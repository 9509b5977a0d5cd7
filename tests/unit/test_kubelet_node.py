"""The Node the kubelet registers: taints, capacity, status."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from devstack.kubelet.config import Settings
from devstack.kubelet.node import capacity, node_status, parse_taint


def test_parse_taint() -> None:
    assert parse_taint("a=b:NoSchedule") == {"key": "a", "value": "b", "effect": "NoSchedule"}
    assert parse_taint("a:NoExecute") == {"key": "a", "effect": "NoExecute"}
    with pytest.raises(ValueError):
        parse_taint("a=b")


def test_capacity_and_status(tmp_path: Path) -> None:
    settings = Settings(node_name="n", state_dir=tmp_path, kubeconfig=tmp_path / "k",
                        cpu="32", port=10250)
    cap = capacity(settings)
    assert cap["cpu"] == "32" and cap["pods"] == "110" and cap["memory"].endswith("Ki")
    t = datetime(2026, 1, 1, tzinfo=UTC)
    status = node_status(settings, cap, t, t)
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and ready["reason"] == "KubeletReady"
    assert status["addresses"] == [{"type": "InternalIP", "address": "127.0.0.1"}]
    assert status["daemonEndpoints"] == {"kubeletEndpoint": {"Port": 10250}}
