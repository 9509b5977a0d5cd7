"""bench/worker.py at a smoke size: it runs end to end and prints its table (CI).

The full size (100,000 recipients) is run by hand: `make bench`; see docs/benchmarks.md.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_bench_smoke(mongo_uri: str, tmp_path: Path) -> None:
    # mongo_uri: devstack builds mongo-java-server; the bench starts a private one.
    out = tmp_path / "bench.md"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "worker.py"),
            "--size",
            "1000",
            "--workers",
            "1,2",
            "--naive-seconds",
            "3",
            "--markdown",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = out.read_text()
    for row in ("ceiling (plain aiohttp)", "naive (find-and-modify per user)", "| pushtask | 2 |"):
        assert row in table, table
    # The CPU table: every part of a pushtask measurement was metered (the private store too).
    cpu_table = table[table.index("| bound on") :]
    cpu_rows = [r for r in cpu_table.splitlines() if r.startswith("| pushtask |")]
    assert len(cpu_rows) == 2, table
    for row in cpu_rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert all(c.replace(",", "").isdigit() for c in cells[2:6]), row
