"""The Node object: registration, its Lease in kube-node-lease, and status heartbeats."""

from __future__ import annotations

import asyncio
import logging
import os
import platform
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from .api import TRANSIENT, Api, ApiError
from .config import Settings
from .status import micro_time, now, rfc3339

log = logging.getLogger(__name__)

KUBELET_VERSION = "v1.37.2"


def capacity(settings: Settings) -> dict[str, str]:
    """What the scheduler may place here: this machine's CPUs and memory."""
    mem_kib = 0
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
                break
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    fs = os.statvfs(settings.state_dir)
    return {
        "cpu": settings.cpu or str(8 * (os.cpu_count() or 1)),
        "memory": f"{mem_kib}Ki",
        "pods": str(settings.max_pods),
        "ephemeral-storage": f"{fs.f_blocks * fs.f_frsize // 1024}Ki",
    }


def parse_taint(text: str) -> dict[str, str]:
    """``key=value:Effect`` or ``key:Effect``, as the kubelet's --register-with-taints."""
    spec, _, effect = text.rpartition(":")
    key, _, value = spec.partition("=")
    if not key or effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
        raise ValueError(
            f"bad taint {text!r}: want key=value:NoSchedule|PreferNoSchedule|NoExecute"
        )
    taint = {"key": key, "effect": effect}
    if value:
        taint["value"] = value
    return taint


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _os_image() -> str:
    try:
        return platform.freedesktop_os_release().get("PRETTY_NAME", "Linux")
    except OSError:  # no /etc/os-release
        return "Linux"


def node_info() -> dict[str, str]:
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    return {
        "machineID": _read("/etc/machine-id"),
        "systemUUID": _read("/etc/machine-id"),
        "bootID": _read("/proc/sys/kernel/random/boot_id"),
        "kernelVersion": platform.release(),
        "osImage": _os_image(),
        "containerRuntimeVersion": "devstack://local-processes",
        "kubeletVersion": KUBELET_VERSION,
        "kubeProxyVersion": "",
        "operatingSystem": "linux",
        "architecture": arch,
    }


def node_status(
    settings: Settings,
    cap: dict[str, str],
    started: datetime,
    heartbeat: datetime,
    previous: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The Node's status; ``previous`` conditions (by type) keep their transition times."""

    def cond(ctype: str, status: str, reason: str, message: str) -> dict[str, str]:
        before = (previous or {}).get(ctype) or {}
        transition = before.get("lastTransitionTime") if before.get("status") == status else None
        return {
            "type": ctype,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": rfc3339(heartbeat),
            "lastTransitionTime": transition or rfc3339(started),
        }

    return {
        "capacity": cap,
        "allocatable": cap,
        "conditions": [
            cond(
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            ),
            cond(
                "DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"
            ),
            cond(
                "PIDPressure",
                "False",
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
            ),
            cond("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
        ],
        # No Hostname address: the API server would prefer it for reaching the kubelet and
        # the node name does not resolve.
        "addresses": [{"type": "InternalIP", "address": settings.host_ip}],
        # Where the API server proxies `kubectl logs` to (see server.py).
        "daemonEndpoints": {"kubeletEndpoint": {"Port": settings.port}},
        "nodeInfo": node_info(),
    }


class NodeAgent:
    """Registers the Node and keeps it alive in the API server's eyes."""

    def __init__(self, settings: Settings, api: Api, cap: dict[str, str]) -> None:
        self.settings = settings
        self.api = api
        self.capacity = cap
        self.started = now()
        self.uid = ""
        self._lease: dict[str, Any] | None = None
        self._previous: dict[str, Any] = {}

    @property
    def path(self) -> str:
        return f"/api/v1/nodes/{self.settings.node_name}"

    async def register(self) -> None:
        s = self.settings
        arch = node_info()["architecture"]
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": s.node_name,
                "labels": {
                    "kubernetes.io/hostname": s.node_name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": arch,
                    "beta.kubernetes.io/os": "linux",
                    "beta.kubernetes.io/arch": arch,
                },
            },
            "spec": {"taints": [parse_taint(t) for t in s.taints]} if s.taints else {},
            "status": node_status(s, self.capacity, self.started, now()),
        }
        try:
            node = await self.api.create("/api/v1/nodes", body)
            log.info("registered node %s", s.node_name)
        except ApiError as e:
            if e.status != 409:
                raise
            node = await self.api.get(self.path)
            log.info("node %s already registered", s.node_name)
        self.uid = node["metadata"]["uid"]
        self._previous = {c["type"]: c for c in node.get("status", {}).get("conditions") or []}
        await self.post_status()

    async def post_status(self) -> None:
        status = node_status(self.settings, self.capacity, self.started, now(), self._previous)
        await self.api.patch(f"{self.path}/status", {"status": status})

    async def renew_lease(self) -> None:
        s = self.settings
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{s.node_name}"
        if self._lease is None:
            self._lease = await self.api.get_or_none(path)
        if self._lease is None:
            self._lease = await self.api.create(
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {
                        "name": s.node_name,
                        "namespace": "kube-node-lease",
                        "ownerReferences": [
                            {
                                "apiVersion": "v1",
                                "kind": "Node",
                                "name": s.node_name,
                                "uid": self.uid,
                            }
                        ],
                    },
                    "spec": {
                        "holderIdentity": s.node_name,
                        "leaseDurationSeconds": s.lease_duration,
                        "renewTime": micro_time(now()),
                    },
                },
            )
            return
        lease = dict(self._lease)
        lease["spec"] = {
            **lease.get("spec", {}),
            "holderIdentity": s.node_name,
            "leaseDurationSeconds": s.lease_duration,
            "renewTime": micro_time(now()),
        }
        try:
            self._lease = await self.api.put(path, lease)
        except ApiError as e:
            self._lease = None  # conflict or gone: read it again next time
            if e.status not in (404, 409):
                raise

    async def run(self) -> None:
        """Renew the lease every few seconds; post status heartbeats less often."""
        loop = asyncio.get_running_loop()
        next_status = loop.time() + self.settings.status_interval
        while True:
            try:
                await self.renew_lease()
                if loop.time() >= next_status:
                    await self.post_status()
                    next_status = loop.time() + self.settings.status_interval
            except ApiError as e:
                if e.status == 404 and e.path.startswith("/api/v1/nodes/"):
                    log.warning("node object gone: registering again")
                    await self.register()
                else:
                    log.warning("node heartbeat: %s", e)
            except TRANSIENT as e:
                log.warning("node heartbeat: %r", e)
            await asyncio.sleep(self.settings.lease_renew)
