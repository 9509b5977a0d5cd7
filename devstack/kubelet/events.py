"""Events about pods (Started, Killing, BackOff, Unhealthy), as `kubectl describe` shows them."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping
from typing import Any

from .api import CALL_FAILED, Api
from .status import now, rfc3339

log = logging.getLogger(__name__)


class EventRecorder:
    """Posts core/v1 Events in the background; losing one never stops the kubelet."""

    def __init__(self, api: Api | None, node_name: str) -> None:
        self.api = api
        self.node_name = node_name
        self._pending: set[asyncio.Task[None]] = set()

    def pod_event(self, pod: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        log.info(
            "%s/%s %s: %s",
            pod["metadata"].get("namespace"),
            pod["metadata"].get("name"),
            reason,
            message,
        )
        if self.api is None:
            return
        task = asyncio.create_task(self._post(pod, type_, reason, message))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _post(self, pod: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        assert self.api is not None
        meta = pod["metadata"]
        when = now()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{meta['name']}.{uuid.uuid4().hex[:16]}",
                "namespace": meta["namespace"],
            },
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
                "resourceVersion": meta.get("resourceVersion", ""),
            },
            "reason": reason,
            "message": message[:1024],
            "type": type_,
            "source": {"component": "kubelet", "host": self.node_name},
            "reportingComponent": "kubelet",
            "reportingInstance": self.node_name,
            "firstTimestamp": rfc3339(when),
            "lastTimestamp": rfc3339(when),
            "eventTime": None,
            "count": 1,
        }
        try:
            await self.api.create(f"/api/v1/namespaces/{meta['namespace']}/events", body)
        except CALL_FAILED as e:
            log.debug("event %s for %s not posted: %s", reason, meta["name"], e)
