"""What the kubelet persists in its state dir, so a restarted kubelet finds what it left."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .process import ProcessRecord


class ProcessStore:
    """``processes.json``: the pid of every container process the kubelet started.

    Written on every start and exit, so that whatever kills the kubelet, the next one can
    stop every process the previous one left running.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._data: dict[str, dict[str, list[int]]] = {}
        if path.exists():
            self._data = json.loads(path.read_text() or "{}")

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._data, sort_keys=True))
        os.replace(tmp, self.path)

    def record(self, uid: str, container: str, rec: ProcessRecord | None) -> None:
        pod = self._data.setdefault(uid, {})
        if rec is None:
            pod.pop(container, None)
            if not pod:
                self._data.pop(uid, None)
        else:
            pod[container] = [rec.pid, rec.start_ticks]
        self._save()

    def forget_pod(self, uid: str) -> None:
        if self._data.pop(uid, None) is not None:
            self._save()

    def all(self) -> list[ProcessRecord]:
        return [
            ProcessRecord(pid, ticks) for pod in self._data.values() for pid, ticks in pod.values()
        ]

    def clear(self) -> None:
        self._data = {}
        self._save()
