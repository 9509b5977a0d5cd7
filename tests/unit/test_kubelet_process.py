"""Containers as processes: log files, SIGTERM to the group, SIGKILL after grace, leftovers."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from devstack.kubelet import process

TRAP = """
import signal, sys, time, pathlib
marker = pathlib.Path(sys.argv[1])
def term(*_):
    marker.write_text("TERM")
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
print("ready", flush=True)
time.sleep(60)
"""

STUBBORN = """
import signal, time, subprocess, sys
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print(child.pid, flush=True)
time.sleep(60)
"""


def read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


async def wait_for_log(path: Path, text: str, within: float = 10) -> str:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if text in (content := read(path)):
            return content
        await asyncio.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in {path}")


def test_sigterm_reaches_the_process(tmp_path: Path) -> None:
    async def main() -> None:
        log = tmp_path / "c.log"
        marker = tmp_path / "marker"
        proc = await process.start(
            [sys.executable, "-c", TRAP, str(marker)], {"PATH": os.environ["PATH"]}, tmp_path, log
        )
        await wait_for_log(log, "ready")
        code = await process.stop(proc, grace=5)
        assert process.exit_status(code) == (0, None)
        assert marker.read_text() == "TERM"

    asyncio.run(main())


def test_sigkill_after_grace_takes_the_children_too(tmp_path: Path) -> None:
    async def main() -> None:
        log = tmp_path / "c.log"
        proc = await process.start([sys.executable, "-c", STUBBORN], {}, tmp_path, log)
        child = int((await wait_for_log(log, "\n")).split()[0])
        started = time.monotonic()
        code = await process.stop(proc, grace=0.5)
        assert time.monotonic() - started < 5
        assert process.exit_status(code) == (137, 9)
        await asyncio.sleep(0.2)
        assert process.start_ticks(child) is None or not process.session_members(proc.pid)

    asyncio.run(main())


def test_a_missing_executable_raises(tmp_path: Path) -> None:
    async def main() -> None:
        try:
            await process.start(
                ["no-such-binary-xyz"], {"PATH": "/usr/bin"}, tmp_path, tmp_path / "c.log"
            )
        except FileNotFoundError:
            return
        raise AssertionError("started a missing binary")

    asyncio.run(main())


def test_kill_stale_stops_what_a_dead_kubelet_left(tmp_path: Path) -> None:
    # A process started "by a previous kubelet": not our asyncio child, own session.
    leftover = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    try:
        ticks = process.start_ticks(leftover.pid)
        assert ticks is not None
        live = process.ProcessRecord(leftover.pid, ticks)
        recycled = process.ProcessRecord(os.getpid(), ticks + 12345)  # pid reused: untouched
        stopped = asyncio.run(process.kill_stale([live, recycled], grace=2))
        assert stopped == 1
        assert leftover.wait(timeout=5) == -signal.SIGTERM
    finally:
        if leftover.poll() is None:
            leftover.kill()
