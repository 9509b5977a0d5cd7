"""Background processes tracked by pid files.

A pid alone can be reused by an unrelated process after ours died, so each pid file also
records the process' start time (field 22 of /proc/<pid>/stat); a process counts as ours
only if both match. Stopping is by pid: SIGTERM, wait, SIGKILL, and the same for any
descendant still alive (a kubelet's pod processes), so ``down`` leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    rest = raw[raw.rindex(")") + 2 :].split()
    return [str(pid), "comm", *rest]


def start_time(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[21]) if fields else None


def _is_zombie(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is None or fields[2] == "Z"


def children_map() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields:
            tree.setdefault(int(fields[3]), []).append(int(entry.name))
    return tree


def descendants(pid: int) -> list[tuple[int, int]]:
    """(pid, start time) of every live descendant of ``pid``."""
    tree = children_map()
    out: list[tuple[int, int]] = []
    todo = list(tree.get(pid, []))
    while todo:
        child = todo.pop()
        st = start_time(child)
        if st is not None:
            out.append((child, st))
        todo.extend(tree.get(child, []))
    return out


@dataclass(frozen=True)
class ProcRecord:
    """What a pid file holds."""

    name: str
    pid: int
    start_time: int
    argv: list[str]
    started_by: str  # "cli" or "pytest": the fixtures only tear down what they started
    started_at: float = 0.0  # wall clock, for "has it reported since it started?" checks

    def alive(self) -> bool:
        return start_time(self.pid) == self.start_time and not _is_zombie(self.pid)


class PidDir:
    """The ``run/`` directory: one ``<name>.json`` per started process."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, name: str) -> Path:
        return self.root / f"{name}.json"

    def read(self, name: str) -> ProcRecord | None:
        try:
            data = json.loads(self.path(name).read_text())
            return ProcRecord(**data)
        except (OSError, ValueError, TypeError):
            return None

    def live(self, name: str) -> ProcRecord | None:
        rec = self.read(name)
        return rec if rec is not None and rec.alive() else None

    def write(self, rec: ProcRecord) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.path(rec.name).with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(rec)))
        tmp.replace(self.path(rec.name))

    def remove(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    log: Path,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    started_by: str = "cli",
) -> ProcRecord:
    """Start ``argv`` detached (own session: a Ctrl-C in the terminal does not reach it)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as fh:
        fh.write(f"\n==== {time.strftime('%Y-%m-%dT%H:%M:%S')} starting {name}\n".encode())
        fh.flush()
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    st = start_time(proc.pid)
    if st is None:  # died at once (e.g. bad binary); report through the caller's health wait
        st = -1
    # Popen objects are dropped: a later `down` (another process) stops it by pid. The
    # detached child is reaped by init once the CLI exits; in long-lived callers (pytest)
    # `_reap` below collects it.
    _spawned[proc.pid] = proc
    return ProcRecord(name, proc.pid, st, list(argv), started_by, time.time())


_spawned: dict[int, subprocess.Popen[bytes]] = {}


def _reap(pid: int) -> None:
    proc = _spawned.pop(pid, None)
    if proc is not None:
        try:
            proc.wait(timeout=0.1)
        except subprocess.TimeoutExpired:
            _spawned[pid] = proc


def _signal(pid: int, st: int, sig: int) -> None:
    if start_time(pid) == st:  # never signal a recycled pid
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _gone(pid: int, st: int) -> bool:
    _reap(pid)
    return start_time(pid) != st or _is_zombie(pid)


def stop(rec: ProcRecord, grace: float = 15.0) -> bool:
    """SIGTERM ``rec`` and its descendants, SIGKILL what is left after ``grace`` s.

    Returns True if the process had to be killed.
    """
    if not rec.alive():
        return False
    family = descendants(rec.pid)
    _signal(rec.pid, rec.start_time, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and not _gone(rec.pid, rec.start_time):
        time.sleep(0.1)
    killed = not _gone(rec.pid, rec.start_time)
    if killed:
        _signal(rec.pid, rec.start_time, signal.SIGKILL)
    # Descendants the process did not take down itself (pods of a killed kubelet).
    family += [d for d in descendants(rec.pid) if d not in family]
    for pid, st in family:
        _signal(pid, st, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not all(_gone(p, s) for p, s in family):
        time.sleep(0.1)
    for pid, st in family:
        _signal(pid, st, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not _gone(rec.pid, rec.start_time):
        time.sleep(0.05)
    return killed
