"""bench/worker.py at a smoke size: it runs end to end, prints its tables and writes its
JSON, and every part of every mode is metered (CI). Nothing here looks at a time or a rate
beyond "it is a number": the machine is shared, and the targets are for `make bench`.

The full size (100,000 recipients) is run by hand: `make bench`; see docs/benchmarks.md.
The Celery baseline needs scripts/bench-setup.sh (redis-server, the `bench` extra); without
it the benchmark runs with --no-celery and the Celery test is skipped, saying why.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench import celery_baseline

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
CELERY_MISSING = celery_baseline.available()
CELERY_ROWS = ("celery (task per recipient)", f"celery (task per {celery_baseline.BATCH})")


@dataclass
class BenchRun:
    table: str
    figures: dict[str, Any]

    def rows(self, section: str, mode: str) -> list[list[str]]:
        """The cells of `mode`'s rows in the rate table ("rates") or the CPU table ("cpu")."""
        start = self.table.index("| bound on")
        text = self.table[:start] if section == "rates" else self.table[start:]
        return [
            [c.strip() for c in line.strip().strip("|").split("|")]
            for line in text.splitlines()
            if line.startswith(f"| {mode} |")
        ]


def number(cell: str) -> bool:
    return cell.replace(",", "").replace(".", "", 1).isdigit()


@pytest.fixture(scope="module")
def bench(mongo_uri: str, tmp_path_factory: pytest.TempPathFactory) -> BenchRun:
    # mongo_uri: devstack builds mongo-java-server; the bench starts a private one.
    out = tmp_path_factory.mktemp("bench")
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "worker.py"),
        "--size",
        "1000",
        "--workers",
        "1,2",
        "--naive-seconds",
        "3",
        "--markdown",
        str(out / "bench.md"),
        "--json",
        str(out / "bench.json"),
    ] + (["--no-celery"] if CELERY_MISSING else [])
    # Without PUSHTASK_MONGO_URI (a shell after `devstack env` has one), or the bench would
    # use that shared server and could not meter a store process of its own.
    environ = {k: v for k, v in os.environ.items() if k != "PUSHTASK_MONGO_URI"}
    proc = subprocess.run(cmd, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return BenchRun((out / "bench.md").read_text(), json.loads((out / "bench.json").read_text()))


def test_bench_smoke(bench: BenchRun) -> None:
    for mode in ("ceiling (plain aiohttp)", "naive (find-and-modify per user)", "pushtask"):
        assert bench.rows("rates", mode), bench.table
    assert [r[1] for r in bench.rows("rates", "pushtask")] == ["1", "2"], bench.table
    # Every pushtask run counted the store documents its workers wrote.
    for row in bench.rows("rates", "pushtask"):
        assert number(row[-1]), row
    # The CPU table: every part of a pushtask measurement was metered (the private store too).
    cpu_rows = bench.rows("cpu", "pushtask")
    assert len(cpu_rows) == 2, bench.table
    for row in cpu_rows:
        assert all(number(row[i]) for i in (2, 4, 5, 6)), row
        assert row[3].endswith("x") and number(row[3][:-1]), row  # vs the ceiling's client

    fig = bench.figures
    assert fig["size"] == 1000
    for key in ("ceiling_per_s", "naive_per_s"):
        assert fig[key] > 0, fig
    assert set(fig["pushtask"]) == {"1", "2"}, fig
    for run in fig["pushtask"].values():
        assert run["per_s"] > 0, fig
        for key in ("store_writes_per_recipient", "store_cpu_us", "worker_cpu_us"):
            assert isinstance(run[key], int | float), (key, fig)
        # Each run is compared with a ceiling measured just before it.
        assert run["ceiling_per_s"] > 0 and run["worker_cpu_vs_client"] > 0, fig
        assert run["of_ceiling"] == pytest.approx(run["per_s"] / run["ceiling_per_s"], 0.01)
    assert "ceiling measured 3 times" in bench.table, bench.table


@pytest.mark.skipif(CELERY_MISSING is not None, reason=str(CELERY_MISSING))
def test_bench_celery_smoke(bench: BenchRun) -> None:
    for mode in CELERY_ROWS:
        (row,) = bench.rows("rates", mode)
        assert row[5].endswith("%") and row[7].endswith("x"), row  # vs ceiling, vs Celery
        (cpu,) = bench.rows("cpu", mode)
        # The worker and its pool, the sink, and redis-server (Celery's store) all metered.
        assert all(number(cpu[i]) for i in (2, 4, 5, 6)), cpu
    # Ratios against Celery batched are in every pushtask row too.
    for row in bench.rows("rates", "pushtask"):
        assert row[7].endswith("x"), row
    for key in ("celery_per_recipient_per_s", "celery_batched_per_s"):
        assert bench.figures[key] > 0, bench.figures


def bench_output(script: str, *args: str) -> str:
    """The stdout of a bench script run to completion (it fails the test if the run does)."""
    return subprocess.run(
        [sys.executable, f"bench/{script}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout


def table_rows(out: str) -> dict[str, list[str]]:
    """A printed markdown table's rows by their first cell (header and rule left out)."""
    return {
        cells[0]: cells[1:]
        for line in out.splitlines()
        if line.startswith("| ") and not line.startswith(("| mode", "| ---", "| due"))
        for cells in [[c.strip() for c in line.strip().strip("|").split("|")]]
    }


def test_send_path_bench_measures_every_layer() -> None:
    """bench/send_path.py at a smoke size: every layer sends each user once (it checks the
    sink itself) and gets a row with a CPU figure and a ratio to the ceiling."""
    rows = table_rows(bench_output("send_path.py", "--size", "300", "--rounds", "1"))
    assert set(rows) == {
        "ceiling (plain aiohttp)",
        "webhook channel",
        "Sender.send",
        "chunk lanes + writer (no server)",
    }
    assert rows["ceiling (plain aiohttp)"][1] == "1.00x"
    for us, ratio in rows.values():
        assert float(us) > 0 and ratio.endswith("x") and float(ratio[:-1]) > 0


def test_lateness_bench_sends_nobody_early() -> None:
    """bench/lateness.py at a smoke size: every recipient arrives, none before its own
    due time (the figures themselves are for docs/benchmarks.md, not CI)."""
    out = bench_output("lateness.py", "--rates", "100", "--seconds", "3", "--lead", "8")
    recipients, *lateness, early = table_rows(out)["100"]
    assert recipients == "300"  # every recipient was sent and seen at the sink
    assert early == "0", f"sent before their due time: {early}"
    assert len(lateness) == 3 and all(c.endswith(" s") and float(c[:-2]) >= 0 for c in lateness)
