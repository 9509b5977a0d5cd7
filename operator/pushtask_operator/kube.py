"""The operator's few Kubernetes calls, off the event loop.

The `kubernetes` client is synchronous; kopf runs on asyncio. Every call here runs in a
worker thread (`asyncio.to_thread`) so a slow API server never stalls the other tasks'
handlers and timers. Credentials are reloaded when the kubeconfig file changes: a pod's
token is short-lived and rotated on disk (in-cluster and on devstack alike).
"""

from __future__ import annotations

import asyncio
import base64
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from pushtask.models import GROUP, PLURAL, VERSION

MERGE_PATCH = "application/merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
FIELD_MANAGER = "pushtask-operator"
_TOKEN_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


class Kube:
    """A lazily (re)configured API client and the calls the operator makes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._api: client.ApiClient | None = None
        self._stamp: tuple[str, float] | None = None

    def _source_stamp(self) -> tuple[str, float]:
        path = os.environ.get("KUBECONFIG") or ""
        candidate = Path(path.split(os.pathsep)[0]) if path else _TOKEN_FILE
        if not path and not _TOKEN_FILE.exists():
            candidate = Path.home() / ".kube" / "config"
        try:
            return str(candidate), candidate.stat().st_mtime
        except OSError:
            return str(candidate), 0.0

    def api(self) -> client.ApiClient:
        with self._lock:
            stamp = self._source_stamp()
            if self._api is None or stamp != self._stamp:
                cfg = client.Configuration()
                if os.environ.get("KUBECONFIG") or not _TOKEN_FILE.exists():
                    config.load_kube_config(client_configuration=cfg)
                else:
                    config.load_incluster_config(client_configuration=cfg)
                self._api = client.ApiClient(cfg)
                self._stamp = stamp
            return self._api

    # -- sync calls (run in threads) ------------------------------------------------------

    def _get(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _secret_keys(self, namespace: str, name: str) -> set[str] | None:
        obj = self._get(client.CoreV1Api(self.api()).read_namespaced_secret, name, namespace)
        if obj is None:
            return None
        return set((obj.data or {}).keys()) | set((obj.string_data or {}).keys())

    def _configmap_data(self, namespace: str, name: str) -> dict[str, str] | None:
        obj = self._get(client.CoreV1Api(self.api()).read_namespaced_config_map, name, namespace)
        if obj is None:
            return None
        data = dict(obj.data or {})
        for key, value in (obj.binary_data or {}).items():
            data.setdefault(key, base64.b64decode(value).decode("utf-8", "replace"))
        return data

    def _service_account_exists(self, namespace: str, name: str) -> bool:
        api = client.CoreV1Api(self.api())
        return self._get(api.read_namespaced_service_account, name, namespace) is not None

    def _read_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        api = client.AppsV1Api(self.api())
        obj = self._get(api.read_namespaced_deployment, name, namespace)
        if obj is None:
            return None
        result: dict[str, Any] = self.api().sanitize_for_serialization(obj)
        return result

    def _apply_deployment(self, body: Mapping[str, Any]) -> None:
        """Server-side apply: creates the Deployment or updates the fields we own.

        force=True: the operator is the Deployment's controller; a hand edit of replicas
        or of the template is put back (scale the PushTask instead).
        """
        api = client.AppsV1Api(self.api())
        meta = body["metadata"]
        api.patch_namespaced_deployment(
            meta["name"],
            meta["namespace"],
            dict(body),
            field_manager=FIELD_MANAGER,
            force=True,
            _content_type=APPLY_PATCH,
        )

    def _patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        api = client.CustomObjectsApi(self.api())
        api.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            {"status": dict(status)},
            _content_type=MERGE_PATCH,
        )

    # -- async wrappers -----------------------------------------------------------------

    async def secret_keys(self, namespace: str, name: str) -> set[str] | None:
        return await asyncio.to_thread(self._secret_keys, namespace, name)

    async def configmap_data(self, namespace: str, name: str) -> dict[str, str] | None:
        return await asyncio.to_thread(self._configmap_data, namespace, name)

    async def service_account_exists(self, namespace: str, name: str) -> bool:
        return await asyncio.to_thread(self._service_account_exists, namespace, name)

    async def read_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await asyncio.to_thread(self._read_deployment, namespace, name)

    async def apply_deployment(self, body: Mapping[str, Any]) -> None:
        await asyncio.to_thread(self._apply_deployment, body)

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        await asyncio.to_thread(self._patch_status, namespace, name, status)

    probe_timeout: float = 10.0

    async def probe_url(self, url: str) -> str | None:
        """None when `url` answers 2xx/3xx to a GET (only the headers are read)."""
        limit = aiohttp.ClientTimeout(total=self.probe_timeout)
        try:
            async with (
                aiohttp.ClientSession(timeout=limit) as session,
                session.get(url, allow_redirects=True) as resp,
            ):
                if resp.status >= 400:
                    return f"HTTP {resp.status}"
                return None
        except (TimeoutError, aiohttp.ClientError) as exc:
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
