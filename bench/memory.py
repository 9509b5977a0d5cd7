"""Worker peak memory at a large audience, against a 20,000-recipient run (by hand, not CI).

    python bench/memory.py [--large 1000000]

The same measurement as tests/integration/test_worker_memory.py (two worker processes,
a mongo source, peak RSS from /proc), at a size too slow for CI. Target: the large run's
peak within 20% of the small run's.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.test_worker_memory import peak_rss_for  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", type=int, default=20_000)
    p.add_argument("--large", type=int, default=1_000_000)
    # Hash buckets of the runs: a shard is whole buckets, so with too few buckets for the
    # audience a shard (what a seal holds in memory) outgrows its target.
    p.add_argument("--shards", type=int, default=256, help="audience.shards (default 256)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        small, t_small = peak_rss_for(args.small, Path(tmp), args.shards)
        large, t_large = peak_rss_for(args.large, Path(tmp), args.shards)
    ratio = large / small
    print("| recipients | seconds | worker peak RSS | vs small |")
    print("| ---: | ---: | ---: | ---: |")
    print(f"| {args.small:,} | {t_small:.0f} | {small / 1024:.1f} MiB | 1.00x |")
    print(f"| {args.large:,} | {t_large:.0f} | {large / 1024:.1f} MiB | {ratio:.2f}x |")
    print("target met" if ratio <= 1.2 else "target MISSED: more than 20% above the small run")


if __name__ == "__main__":
    main()
