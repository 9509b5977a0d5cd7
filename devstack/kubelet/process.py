"""Containers as local processes: start, signal, reap, and find leftovers of a crashed kubelet.

Each container starts in a new session (``start_new_session``), so its session id is its
pid. Every process it forks stays in that session unless it calls setsid itself, which
lets the kubelet find and kill the whole container the way a runtime kills a cgroup.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProcessRecord:
    """Enough to recognise a container's process again after a kubelet restart."""

    pid: int
    start_ticks: int  # /proc/<pid>/stat field 22: tells a recycled pid apart


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after its ')'.
    return raw[raw.rindex(")") + 2 :].split()


def start_ticks(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None  # field 22 counted from field 3


def session_members(sid: int) -> list[int]:
    """Live processes (not zombies) whose session id is ``sid``."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields and fields[0] != "Z" and int(fields[3]) == sid:  # state, ..., session
            members.append(int(entry.name))
    return members


def signal_session(sid: int, sig: int) -> int:
    """Send ``sig`` to every process of the session; the number signalled."""
    count = 0
    for pid in session_members(sid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
            count += 1
    return count


def signal_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def alive(record: ProcessRecord) -> bool:
    return start_ticks(record.pid) == record.start_ticks


async def start(
    argv: Sequence[str], env: Mapping[str, str], cwd: Path, log_path: Path
) -> asyncio.subprocess.Process:
    """Start one container; its stdout and stderr go straight to ``log_path``.

    The log file is handed to the child, not piped through the kubelet: output survives
    a kubelet restart and costs the kubelet nothing.
    """
    out = open_log(log_path)
    try:
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            cwd=cwd,
            env=dict(env),
            start_new_session=True,
        )
    finally:
        os.close(out)  # the child has its own copy


def open_log(path: Path) -> int:
    """A descriptor appending to a container's log file (a local file: opening is instant)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


def rotate_log(path: Path, previous: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.replace(path, previous)


def append_log(path: Path, line: str) -> None:
    fd = open_log(path)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def exit_status(returncode: int) -> tuple[int, int | None]:
    """(exit code, signal) as a container runtime reports them: a signal N is 128+N."""
    if returncode < 0:
        return 128 - returncode, -returncode
    return returncode, None


async def stop(proc: asyncio.subprocess.Process, grace: float) -> int:
    """SIGTERM the container's process group, SIGKILL what is left after ``grace``.

    Returns the leader's return code. When the leader has exited, the rest of its session
    is killed at once, as a runtime kills a container when its PID 1 exits.
    """
    sid = proc.pid
    if proc.returncode is None:
        signal_group(sid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout=max(grace, 0))
        except TimeoutError:
            log.info("pid %d did not exit within %.0fs of SIGTERM: SIGKILL", sid, grace)
            signal_group(sid, signal.SIGKILL)
            signal_session(sid, signal.SIGKILL)
            await proc.wait()
    kill_leftovers(sid)
    assert proc.returncode is not None
    return proc.returncode


def kill_leftovers(sid: int) -> None:
    """SIGKILL whatever still runs in a container's session once its leader is gone."""
    if signal_session(sid, signal.SIGKILL):
        log.info("killed leftover processes of session %d", sid)


async def kill_stale(records: Iterable[ProcessRecord], grace: float = 5.0) -> int:
    """Stop processes a previous kubelet started (it crashed or was killed).

    They are not this process's children, so they are polled instead of awaited. A record
    whose pid now belongs to another process (start time differs) is left alone.
    """
    live = []
    for r in records:
        ticks = start_ticks(r.pid)
        if ticks == r.start_ticks:
            live.append(r)
        elif ticks is None:
            # The leader died while no kubelet watched; its children may still run.
            kill_leftovers(r.pid)
    for r in live:
        signal_group(r.pid, signal.SIGTERM)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    # Not our children: nothing to await, so poll /proc.
    while any(alive(r) for r in live) and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    for r in live:
        if alive(r):
            signal_group(r.pid, signal.SIGKILL)
        kill_leftovers(r.pid)
    return len(live)
