"""The webhook sink (tests/support/sink.py) as a process of its own, ahead of the workers
for the CPU, for tests that count arrivals second by second.

A sink thread shares the test's interpreter; on two loaded CPUs it stalls now and then,
and the requests that queued meanwhile are recorded as a burst that no sender made (a
CI run read 756 then 997 under a budget of 900: 1,753 in two seconds, within it).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).parents[2]


@dataclass
class SinkProcess:
    url: str
    record: Path

    def requests(self) -> list[dict[str, object]]:
        lines = self.record.read_text().splitlines() if self.record.exists() else []
        return [json.loads(line) for line in lines if line.endswith("}")]

    def arrivals(self, task: str | None = None) -> list[float]:
        """Arrival times of the requests answered 200 (of one task: "namespace/name")."""
        return [
            float(str(r["t"]))
            for r in self.requests()
            if r["status"] == 200 and (task is None or r.get("task") == task)
        ]

    def assert_each_once(self, audience: list[str]) -> None:
        got = Counter(str(r["user"]) for r in self.requests() if r["status"] == 200)
        assert set(got) == set(audience), f"{len(set(audience) - set(got))} never delivered"
        assert max(got.values()) == 1, [u for u, n in got.items() if n > 1][:10]


@contextlib.contextmanager
def sink_process(tmp_path: Path, host: str) -> Iterator[SinkProcess]:
    ready, record = tmp_path / "sink.url", tmp_path / "sink.jsonl"
    args = [sys.executable, "-m", "tests.support.sink", "--host", host]
    args += ["--record", str(record), "--ready-file", str(ready)]
    # Ahead of the workers for the CPU (nice refuses -10 quietly to a user who may not:
    # the sink then runs at the usual priority).
    proc = subprocess.Popen(["nice", "-n", "-10", *args], cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "sink did not start"
            time.sleep(0.05)
        yield SinkProcess(ready.read_text().strip(), record)
    finally:
        proc.terminate()
        proc.wait(10)
