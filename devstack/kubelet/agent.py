"""The kubelet as a whole: start-up (clean up after a previous run), run, shut down."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from typing import IO

from . import process
from .api import Api, retry
from .config import Settings, load_kubeconfig
from .events import EventRecorder
from .ipam import IPAM
from .node import NodeAgent, capacity
from .pods import Node, PodManager
from .server import KubeletServer
from .state import ProcessStore

log = logging.getLogger(__name__)


class AlreadyRunning(RuntimeError):
    pass


def lock_state_dir(settings: Settings) -> IO[str]:
    """One kubelet per state dir: two would each kill the other's processes as stale."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    handle = open(settings.state_dir / "kubelet.lock", "a+")  # held open for the kubelet's life
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as e:
        handle.close()
        raise AlreadyRunning(f"another kubelet uses {settings.state_dir}") from e
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


async def run(settings: Settings, stop: asyncio.Event) -> None:
    """Run the kubelet until ``stop`` is set, then stop every pod's processes."""
    lock = lock_state_dir(settings)
    access = load_kubeconfig(settings.kubeconfig, settings.state_dir / "pki")
    api = Api(access, user_agent=f"devstack-kubelet/{settings.node_name}")
    try:
        store = ProcessStore(settings.state_dir / "processes.json")
        stale = await process.kill_stale(store.all())
        if stale:
            log.info("stopped %d process(es) left by a previous kubelet", stale)
        store.clear()
        cap = capacity(settings)
        node = Node(
            settings=settings,
            api=api,
            ipam=IPAM(settings.state_dir / "ipam.json", settings.pod_network),
            processes=store,
            events=EventRecorder(api, settings.node_name),
            capacity=cap,
        )
        agent = NodeAgent(settings, api, cap)
        await retry("register node", agent.register)
        pods = PodManager(node)
        server = KubeletServer(settings, pods.is_running)
        if settings.port:
            await server.start()
        tasks = [
            asyncio.create_task(agent.run(), name="node"),
            asyncio.create_task(pods.run(), name="pods"),
        ]
        log.info(
            "kubelet for node %s running (state in %s)", settings.node_name, settings.state_dir
        )
        stopping = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([*tasks, stopping], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stopping and task.exception():
                log.error("%s stopped: %r", task.get_name(), task.exception())
        log.info("kubelet stopping: stopping every pod's processes")
        tasks[1].cancel()  # no new pods while the old ones stop
        await pods.shutdown()
        # Safety net: whatever a stuck pod worker left running dies with the kubelet, so a
        # `devstack down` leaves no process behind.
        left = await process.kill_stale(store.all(), grace=0)
        if left:
            log.warning("killed %d container process(es) still running at exit", left)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        stopping.cancel()
        await server.stop()
    finally:
        await api.close()
        lock.close()
