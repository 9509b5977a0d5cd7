"""Which pods get a kubeconfig, what it holds, and when its token is refreshed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

from devstack.kubelet.tokens import kubeconfig_text, refresh_at, wants_token, write_private

PROJECTED = {"name": "kube-api-access-x", "projected": {"sources": [
    {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}}]}}


def test_wants_token() -> None:
    assert wants_token({"spec": {"volumes": [PROJECTED]}})
    assert not wants_token({"spec": {"volumes": [PROJECTED],
                                     "automountServiceAccountToken": False}})
    assert wants_token({"spec": {"automountServiceAccountToken": True}})
    # No projected volume: the ServiceAccount admission plugin decided against mounting.
    assert not wants_token({"spec": {"volumes": [{"name": "d", "emptyDir": {}}]}})


def test_kubeconfig_and_private_file(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    write_private(path, kubeconfig_text("https://127.0.0.1:6443", b"PEM", "tok", "shop"))
    assert path.stat().st_mode & 0o777 == 0o600
    config = yaml.safe_load(path.read_text())
    assert config["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:6443"
    assert config["users"][0]["user"] == {"token": "tok"}
    assert config["contexts"][0]["context"]["namespace"] == "shop"


def test_refresh_at_80_percent() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    assert refresh_at(t0, t0 + timedelta(hours=1), 3600) == t0 + timedelta(minutes=48)
    # A server that extends the lifetime does not delay the refresh past what we asked.
    assert refresh_at(t0, t0 + timedelta(days=365), 3600) == t0 + timedelta(minutes=48)
