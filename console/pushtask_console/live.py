"""Live updates: one poller lists the PushTasks every second and every open page gets
the changed summaries as server-sent events.

One poller for all pages, however many are open: the API server sees one list call a
second (per served namespace), not one per browser tab.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pushtask_client.taskapi import ClusterError
from pushtask_console import views

log = logging.getLogger("pushtask.console")
Lister = Callable[[], Awaitable[list[dict[str, Any]]]]


class Live:
    def __init__(self, lister: Lister, every: float = 1.0) -> None:
        self._lister = lister
        self.every = every
        self.history = views.History()
        self.tasks: dict[str, dict[str, Any]] = {}  # "ns/name" -> summary, the latest
        self.error = ""
        self._message = ""  # the latest payload, sent to each new subscriber at once
        self._queues: set[asyncio.Queue[str]] = set()
        self._runner: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._runner = asyncio.create_task(self._loop(), name="console-poller")

    async def stop(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner

    async def poll(self) -> None:
        """List once, remember the rate, and tell subscribers when anything changed."""
        try:
            summaries = [views.summary(t) for t in await self._lister()]
            self.error = ""
        except ClusterError as error:
            summaries, self.error = list(self.tasks.values()), str(error)
        now = time.time()
        if not self.error:
            self.history.add(now, summaries)
            self.tasks = {f"{s['namespace']}/{s['name']}": s for s in summaries}
        payload = json.dumps({"tasks": summaries, "error": self.error})
        if payload == self._message:
            return
        self._message = payload
        for queue in list(self._queues):
            if queue.full():  # a stalled reader keeps only the newest state
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(payload)

    async def _loop(self) -> None:
        while True:
            try:
                await self.poll()
            except Exception:  # one bad poll must not end live updates for everyone
                log.exception("polling PushTasks failed")
            await asyncio.sleep(self.every)

    def subscribe(self) -> asyncio.Queue[str]:
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize=4)
        if self._message:
            queue.put_nowait(self._message)
        self._queues.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[str]) -> None:
        self._queues.discard(queue)
