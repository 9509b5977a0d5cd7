"""A small asyncio client for the Kubernetes API (aiohttp, the kubelet's client cert)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote

import aiohttp

from .config import ClusterAccess

log = logging.getLogger(__name__)

JSON = dict[str, Any]


# Failures to reach the API server at all: worth retrying, never fatal to a loop.
TRANSIENT: tuple[type[Exception], ...] = (aiohttp.ClientError, OSError, TimeoutError)


class ApiError(Exception):
    def __init__(self, status: int, method: str, path: str, body: str) -> None:
        self.status = status
        self.method = method
        self.path = path
        self.body = body
        try:
            self.reason = json.loads(body).get("message", body)
        except ValueError:
            self.reason = body
        super().__init__(f"{method} {path}: {status} {self.reason}")


# Any failed call: the server said no, or could not be reached.
CALL_FAILED: tuple[type[Exception], ...] = (ApiError, *TRANSIENT)


def pod_path(namespace: str, name: str, sub: str = "") -> str:
    path = f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(name)}"
    return f"{path}/{sub}" if sub else path


class Api:
    def __init__(self, access: ClusterAccess, user_agent: str = "devstack-kubelet") -> None:
        self.access = access
        headers = {"User-Agent": user_agent, "Accept": "application/json"}
        if access.token:
            headers["Authorization"] = f"Bearer {access.token}"
        self._session = aiohttp.ClientSession(
            base_url=access.server,
            headers=headers,
            connector=aiohttp.TCPConnector(ssl=access.ssl_context(), limit=20),
            timeout=aiohttp.ClientTimeout(total=30),
        )

    async def close(self) -> None:
        await self._session.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> JSON:
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if data is not None else None
        async with self._session.request(
            method, path, data=data, params=params, headers=headers
        ) as resp:
            text = await resp.text()
            if resp.status >= 400:
                raise ApiError(resp.status, method, path, text)
            return json.loads(text) if text else {}

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> JSON:
        return await self.request("GET", path, params=params)

    async def get_or_none(self, path: str) -> JSON | None:
        try:
            return await self.get(path)
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    async def create(self, path: str, body: JSON) -> JSON:
        return await self.request("POST", path, body=body)

    async def put(self, path: str, body: JSON) -> JSON:
        return await self.request("PUT", path, body=body)

    async def patch(self, path: str, body: JSON, strategic: bool = True) -> JSON:
        ctype = (
            "application/strategic-merge-patch+json"
            if strategic
            else "application/merge-patch+json"
        )
        return await self.request("PATCH", path, body=body, content_type=ctype)

    async def delete(self, path: str, body: JSON | None = None) -> JSON:
        return await self.request("DELETE", path, body=body)

    async def watch(
        self, path: str, params: Mapping[str, str], server_timeout: int = 300
    ) -> AsyncIterator[JSON]:
        """Events of one watch request; returns when the server ends it."""
        query = {
            **params,
            "watch": "true",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(server_timeout),
        }
        async with self._session.get(
            path,
            params=query,
            timeout=aiohttp.ClientTimeout(total=None, sock_read=server_timeout + 30),
        ) as resp:
            if resp.status >= 400:
                raise ApiError(resp.status, "WATCH", path, await resp.text())
            # Our own line splitting: aiohttp's readline caps a line's length, a pod can
            # exceed it.
            buffer = b""
            async for chunk in resp.content.iter_any():
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)


async def retry(
    what: str,
    fn: Any,
    *args: Any,
    attempts: int = 0,
    delay: float = 0.5,
    max_delay: float = 5.0,
    **kwargs: Any,
) -> Any:
    """Call ``await fn(*args)`` until it succeeds (``attempts`` 0: forever), backing off.

    404 is not retried: the object is gone, which only the caller can judge.
    """
    n = 0
    while True:
        try:
            return await fn(*args, **kwargs)
        except ApiError as e:
            if e.status == 404:
                raise
            n += 1
            if attempts and n >= attempts:
                raise
            log.warning("%s: %s (retrying)", what, e)
        except (aiohttp.ClientError, TimeoutError) as e:
            n += 1
            if attempts and n >= attempts:
                raise
            log.warning("%s: %r (retrying)", what, e)
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_delay)
