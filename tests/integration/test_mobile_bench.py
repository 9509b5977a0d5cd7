"""bench/mobile.py at a smoke size (CI): every mode delivers each notification exactly
once (the bench checks at each server) and gets a row; APNs sends over one connection.
The figures themselves are for docs/benchmarks.md, not for CI on a shared machine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_mobile_bench_runs_every_mode() -> None:
    out = subprocess.run(
        [sys.executable, "bench/mobile.py", "--size", "200", "--rounds", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    rows = {
        cells[0]: cells[1:]
        for line in out.splitlines()
        if line.startswith("| ") and not line.startswith(("| mode", "| ---"))
        for cells in [[c.strip() for c in line.strip().strip("|").split("|")]]
    }
    assert set(rows) == {
        "webhook",
        "fcm",
        "apns (HTTP/2, one connection)",
        "apns, a connection per send",
    }
    assert rows["webhook"][2] == "1.00x"
    for rate, cpu, ratio, _ in rows.values():
        assert float(rate.replace(",", "")) > 0 and float(cpu) > 0 and ratio.endswith("x")
    assert rows["apns (HTTP/2, one connection)"][3] == "1"  # one connection, many streams
    assert int(rows["apns, a connection per send"][3]) > 100
