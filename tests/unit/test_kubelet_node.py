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
    settings = Settings(
        node_name="n", state_dir=tmp_path, kubeconfig=tmp_path / "k", cpu="32", port=10250
    )
    cap = capacity(settings)
    assert cap["cpu"] == "32" and cap["pods"] == "110" and cap["memory"].endswith("Ki")
    t = datetime(2026, 1, 1, tzinfo=UTC)
    status = node_status(settings, cap, t, t)
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and ready["reason"] == "KubeletReady"
    assert status["addresses"] == [{"type": "InternalIP", "address": "127.0.0.1"}]
    assert status["daemonEndpoints"] == {"kubeletEndpoint": {"Port": 10250}}


def test_old_pod_dirs_are_removed(tmp_path: Path) -> None:
    import os
    import time

    from devstack.kubelet.pods import remove_old_pod_dirs

    def make(ns: str, pod: str, uid: str, age: float) -> Path:
        d = tmp_path / ns / pod
        d.mkdir(parents=True)
        (d / ".uid").write_text(uid)
        (d / "c.log").write_text("x")
        for f in d.iterdir():
            os.utime(f, (time.time() - age, time.time() - age))
        return d

    live = make("a", "live", "u1", age=10 * 86400)
    recent = make("a", "recent", "u2", age=60)
    old = make("b", "old", "u3", age=2 * 86400)
    assert remove_old_pod_dirs(tmp_path, {"u1"}) == 1
    assert live.exists() and recent.exists() and not old.exists()
    assert not (tmp_path / "b").exists()


def test_backoff_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from devstack.kubelet.__main__ import parse_args

    monkeypatch.setenv("DEVSTACK_KUBELET_BACKOFF_BASE", "1")
    settings, _ = parse_args(["--kubeconfig", "k", "--node-name", "n", "--state-dir", "s"])
    assert settings.backoff_base == 1 and settings.backoff_max == 300
    settings, _ = parse_args(
        [
            "--kubeconfig",
            "k",
            "--node-name",
            "n",
            "--state-dir",
            "s",
            "--backoff-base",
            "2",
            "--register-with-taints",
            "a=b:NoSchedule",
        ]
    )
    assert settings.backoff_base == 2 and settings.taints == ("a=b:NoSchedule",)


def test_transition_times_survive_a_restart(tmp_path: Path) -> None:
    settings = Settings(node_name="n", state_dir=tmp_path, kubeconfig=tmp_path / "k")
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    t1 = datetime(2026, 1, 2, tzinfo=UTC)
    first = {c["type"]: c for c in node_status(settings, {}, t0, t0)["conditions"]}
    first["MemoryPressure"] = {**first["MemoryPressure"], "status": "True"}
    again = {c["type"]: c for c in node_status(settings, {}, t1, t1, first)["conditions"]}
    assert again["Ready"]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert again["Ready"]["lastHeartbeatTime"] == "2026-01-02T00:00:00Z"
    assert again["MemoryPressure"]["lastTransitionTime"] == "2026-01-02T00:00:00Z"
