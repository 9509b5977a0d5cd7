"""A pod's kubeconfig: a token of its ServiceAccount from the TokenRequest API, bound to the pod."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from .api import CALL_FAILED, Api
from .status import now, parse_time

log = logging.getLogger(__name__)


def wants_token(pod: Mapping[str, Any]) -> bool:
    """Whether the pod gets API credentials.

    The pod's own ``automountServiceAccountToken`` decides when set. Otherwise the
    ServiceAccount admission plugin has already weighed the ServiceAccount's own setting:
    it adds the projected token volume exactly when the token is to be mounted.
    """
    spec = pod.get("spec") or {}
    explicit = spec.get("automountServiceAccountToken")
    if explicit is not None:
        return bool(explicit)
    for volume in spec.get("volumes") or []:
        for source in (volume.get("projected") or {}).get("sources") or []:
            if "serviceAccountToken" in source:
                return True
    return False


def kubeconfig_text(server: str, ca_pem: bytes, token: str, namespace: str) -> str:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "devstack",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_pem).decode(),
                },
            }
        ],
        "users": [{"name": "serviceaccount", "user": {"token": token}}],
        "contexts": [
            {
                "name": "devstack",
                "context": {
                    "cluster": "devstack",
                    "user": "serviceaccount",
                    "namespace": namespace,
                },
            }
        ],
        "current-context": "devstack",
    }
    return yaml.safe_dump(config, sort_keys=False)


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` atomically with mode 0600: a reader never sees half a token."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def refresh_at(issued: datetime, expires: datetime, ttl: float) -> datetime:
    """When to fetch a new token: after 80% of its life, as the kubelet does."""
    life = min((expires - issued).total_seconds(), ttl)
    return issued + timedelta(seconds=life * 0.8)


class PodToken:
    """Keeps ``<pod dir>/kubeconfig`` holding a valid token of the pod's ServiceAccount."""

    def __init__(self, api: Api, pod: Mapping[str, Any], pod_dir: Path, ttl: int) -> None:
        self.api = api
        meta = pod["metadata"]
        self.namespace: str = meta["namespace"]
        self.pod_name: str = meta["name"]
        self.uid: str = meta["uid"]
        self.service_account: str = (pod.get("spec") or {}).get("serviceAccountName") or "default"
        self.path = pod_dir / "kubeconfig"
        self.token_path = pod_dir / "token"
        self.ttl = ttl
        self.next_refresh: datetime | None = None

    async def fetch(self) -> None:
        """Request a token bound to the pod and write the kubeconfig."""
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": self.ttl,
                # Node authorization only lets a node ask for tokens bound to its pods.
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": self.pod_name,
                    "uid": self.uid,
                },
            },
        }
        issued = now()
        result = await self.api.create(
            f"/api/v1/namespaces/{self.namespace}/serviceaccounts/{self.service_account}/token",
            body,
        )
        token: str = result["status"]["token"]
        expires = parse_time(result["status"].get("expirationTimestamp")) or issued
        write_private(
            self.path,
            kubeconfig_text(self.api.access.server, self.api.access.ca_pem, token, self.namespace),
        )
        write_private(self.token_path, token)
        self.next_refresh = refresh_at(issued, expires, self.ttl)
        log.info(
            "token for %s/%s (serviceaccount %s) valid until %s",
            self.namespace,
            self.pod_name,
            self.service_account,
            expires.isoformat(),
        )

    async def keep_fresh(self) -> None:
        """Refresh before expiry, forever (the pod worker cancels this task)."""
        while True:
            wait = (self.next_refresh - now()).total_seconds() if self.next_refresh else 0.0
            await asyncio.sleep(max(wait, 0))
            try:
                await self.fetch()
            except CALL_FAILED as e:
                log.warning("token refresh for %s/%s failed: %s", self.namespace, self.pod_name, e)
                self.next_refresh = None
                await asyncio.sleep(10)

    def remove(self) -> None:
        for path in (self.path, self.token_path):
            path.unlink(missing_ok=True)
