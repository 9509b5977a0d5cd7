"""The kubelet's settings and its credentials, read from a kubeconfig file."""

from __future__ import annotations

import base64
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


@dataclass
class Settings:
    node_name: str
    state_dir: Path
    kubeconfig: Path
    # Crash-loop back-off: 10 s doubling to 5 min like the real kubelet; tests scale it down.
    backoff_base: float = 10.0
    backoff_max: float = 300.0
    # Lease renewal and node status heartbeat.
    lease_duration: int = 40
    lease_renew: float = 10.0
    status_interval: float = 60.0
    token_ttl: int = 3600
    pod_network: str = "127.10.0.0/16"
    host_ip: str = "127.0.0.1"
    max_pods: int = 110
    # CPUs the node advertises. Requests do not confine a local process, and the real
    # core count (2 here) would leave pods Pending after 20 requests of 100m.
    cpu: str = ""
    # Taints the Node is created with ("key=value:Effect"), like --register-with-taints.
    taints: tuple[str, ...] = ()
    # HTTPS port for `kubectl logs` (the API server proxies there); 0 turns it off.
    port: int = 10250
    # Kubelet shutdown stops every pod, each with its grace period but at most this long.
    shutdown_grace: float = 20.0

    @property
    def pods_dir(self) -> Path:
        return self.state_dir / "pods"

    def pod_dir(self, namespace: str, name: str) -> Path:
        return self.pods_dir / namespace / name

    @staticmethod
    def env_defaults() -> dict[str, float]:
        return {
            "backoff_base": _env_float("DEVSTACK_KUBELET_BACKOFF_BASE", 10.0),
            "backoff_max": _env_float("DEVSTACK_KUBELET_BACKOFF_MAX", 300.0),
        }


@dataclass
class ClusterAccess:
    """Where the API server is and how the kubelet proves who it is."""

    server: str
    ca_pem: bytes
    cert_file: Path | None = None
    key_file: Path | None = None
    token: str | None = None

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cadata=self.ca_pem.decode())
        if self.cert_file and self.key_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


def _material(entry: dict[str, Any], key: str, base: Path) -> bytes | None:
    """A kubeconfig field given inline (``key-data``, base64) or as a file path."""
    if entry.get(f"{key}-data"):
        return base64.b64decode(entry[f"{key}-data"])
    if entry.get(key):
        path = Path(entry[key])
        return (path if path.is_absolute() else base / path).read_bytes()
    return None


def load_kubeconfig(path: Path, secrets_dir: Path) -> ClusterAccess:
    """The current context of ``path``. Inline client certs are written to ``secrets_dir``
    (mode 0600) because :meth:`ssl.SSLContext.load_cert_chain` reads only files."""
    config = yaml.safe_load(path.read_text())
    current = config.get("current-context")
    contexts = {c["name"]: c["context"] for c in config.get("contexts") or []}
    context = contexts.get(current) if current else next(iter(contexts.values()), None)
    if context is None:
        raise ValueError(f"{path}: no current context")
    cluster = {c["name"]: c["cluster"] for c in config["clusters"]}[context["cluster"]]
    user = {u["name"]: u["user"] for u in config["users"]}[context["user"]]
    base = path.parent
    ca = _material(cluster, "certificate-authority", base)
    if ca is None:
        raise ValueError(f"{path}: cluster has no certificate-authority")
    access = ClusterAccess(server=cluster["server"].rstrip("/"), ca_pem=ca, token=user.get("token"))
    cert = _material(user, "client-certificate", base)
    key = _material(user, "client-key", base)
    if cert and key:
        secrets_dir.mkdir(parents=True, exist_ok=True)
        access.cert_file = secrets_dir / "client.crt"
        access.key_file = secrets_dir / "client.key"
        for target, data in ((access.cert_file, cert), (access.key_file, key)):
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
    return access
