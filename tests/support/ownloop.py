"""An asyncio server (start() / stop()) on its own event loop in a daemon thread, so a
synchronous test can use it as a context manager: `with SinkThread(...) as sink:`."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, ClassVar, Protocol, TypeVar, cast


class _Serves(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


S = TypeVar("S", bound="OwnLoop")


class OwnLoop:
    """Mixin, listed before the server class: `class SinkThread(OwnLoop, Sink)`."""

    thread_name: ClassVar[str] = "server"
    start_timeout: ClassVar[float] = 10.0

    def __enter__(self: S) -> S:
        server = cast(_Serves, self)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, daemon=True, name=self.thread_name
        )
        self._thread.start()
        asyncio.run_coroutine_threadsafe(server.start(), self._loop).result(self.start_timeout)
        return self

    def __exit__(self, *exc: Any) -> None:
        server = cast(_Serves, self)
        asyncio.run_coroutine_threadsafe(server.stop(), self._loop).result(self.start_timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
