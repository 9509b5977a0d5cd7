"""Which pods get a kubeconfig, what it holds, and when its token is refreshed."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from devstack.kubelet.tokens import (
    PodToken,
    kubeconfig_text,
    refresh_at,
    wants_token,
    write_private,
)

PROJECTED = {
    "name": "kube-api-access-x",
    "projected": {
        "sources": [{"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}}]
    },
}


def test_wants_token() -> None:
    assert wants_token({"spec": {"volumes": [PROJECTED]}})
    assert not wants_token(
        {"spec": {"volumes": [PROJECTED], "automountServiceAccountToken": False}}
    )
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


class TokenApi:
    """Stands in for the API server's TokenRequest endpoint (a unit test, no cluster)."""

    def __init__(self) -> None:
        from devstack.kubelet.config import ClusterAccess

        self.access = ClusterAccess(server="https://127.0.0.1:6443", ca_pem=b"PEM")
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append((path, body))
        expires = datetime.now(UTC) + timedelta(seconds=body["spec"]["expirationSeconds"])
        return {
            "status": {
                "token": f"t{len(self.calls)}",
                "expirationTimestamp": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        }


def test_pod_token_requests_a_bound_token_and_refreshes(tmp_path: Path) -> None:
    api = TokenApi()
    pod = {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
        "spec": {"serviceAccountName": "runner"},
    }
    token = PodToken(api, pod, tmp_path, ttl=3600)  # type: ignore[arg-type]

    async def main() -> None:
        await token.fetch()
        token.next_refresh = datetime.now(UTC) - timedelta(seconds=1)  # due now
        refresher = asyncio.create_task(token.keep_fresh())
        for _ in range(100):
            if len(api.calls) >= 2:
                break
            await asyncio.sleep(0.01)
        refresher.cancel()

    asyncio.run(main())
    path, body = api.calls[0]
    assert path == "/api/v1/namespaces/ns/serviceaccounts/runner/token"
    assert body["spec"]["boundObjectRef"] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": "p",
        "uid": "u1",
    }
    assert len(api.calls) == 2
    assert yaml.safe_load((tmp_path / "kubeconfig").read_text())["users"][0]["user"] == {
        "token": "t2"
    }
    token.remove()
    assert not (tmp_path / "kubeconfig").exists()
