"""bench/tracker.py runs and prints its table (a smoke test: no figure is judged)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_tracker_bench_prints_rates_against_its_baseline() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "tracker.py"),
         "--seconds", "0.3", "--clients", "1", "--concurrency", "4", "--rounds", "1"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "redirects/s" in lines[1] and "vs baseline" in lines[1]
    names = [line.split("  ")[0] for line in lines[2:]]
    assert names == [
        "baseline GET (bare aiohttp 302)",
        "baseline HEAD (bare aiohttp 302)",
        "tracker HEAD (verify, no write)",
        "tracker GET, prefetcher (no write)",
    ]
    assert [line.split()[-1] for line in lines[2:4]] == ["1.00", "1.00"]
