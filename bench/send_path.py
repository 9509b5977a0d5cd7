"""Where a worker's CPU per send goes: the send path alone, layer by layer, against the
bare client, in one process and one run (no store, no audience, no process start-up).

    python bench/send_path.py [--size 20000] [--rounds 3]

Modes, each `--size` requests, CONCURRENCY in flight, against the same sink:

- ceiling: plain aiohttp, the request of bench/worker.py's ceiling (its baseline);
- channel: the webhook channel's `send` (headers, timestamp, signature, timeout, classify);
- sender: `Sender.send` on that channel (render, rate token, idempotency key, metrics);
- lanes: a ChunkDelivery's lanes over the sender, with the writer's results to a store
  that takes them without a server (what the ledger costs in the worker, less pymongo).

Rounds alternate the modes so a drift of the machine's speed hits each alike; the table
shows the median of CPU µs per send of this process and the ratio to the ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from bench.payload import body_for, headers_for  # noqa: E402
from bench.worker import CONCURRENCY, SinkProcess, run_loop  # noqa: E402
from pushtask.leases import Lease, now_utc  # noqa: E402
from pushtask.models import Guarantee, PushTaskSpec  # noqa: E402
from pushtask.templates import compile_message  # noqa: E402
from pushtask_worker.channels.base import ChannelContext, Delivery  # noqa: E402
from pushtask_worker.channels.webhook import WebhookChannel  # noqa: E402
from pushtask_worker.delivery import ChunkDelivery  # noqa: E402
from pushtask_worker.ratelimit import TokenBucket  # noqa: E402
from pushtask_worker.resilience import StoreGuard  # noqa: E402
from pushtask_worker.sending import Sender  # noqa: E402
from tests.support.workers import spec_for  # noqa: E402

TASK = {"namespace": "bench", "name": "bench", "uid": "bench"}


def cpu() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


async def pool(users: list[str], one: Callable[[int, str], Awaitable[Any]]) -> None:
    it = iter(enumerate(users))

    async def lane() -> None:
        for p, u in it:
            await one(p, u)

    await asyncio.gather(*(lane() for _ in range(CONCURRENCY)))


class NoStore:
    """Takes a chunk's writes like the store would, without a server."""

    writes = 0

    async def write_chunk(self, lease: Lease, **_: Any) -> Lease:
        self.writes += 1
        return lease

    def now(self) -> datetime:
        return now_utc()

    def due_by(self) -> datetime:
        return now_utc()


def sender_for(url: str) -> tuple[Sender, WebhookChannel]:
    spec = PushTaskSpec.model_validate(spec_for(["u"], url=url, rate=1_000_000, secret=False))
    channel = WebhookChannel(
        ChannelContext({"url": url, "timeoutSeconds": 5}, env={}, concurrency=CONCURRENCY)
    )
    compiled = compile_message(spec.message.template)
    bucket = TokenBucket(1_000_000, burst=1_000_000)
    return Sender(TASK, 1, "bench-1", spec, compiled, channel, bucket), channel


async def ceiling(url: str, users: list[str]) -> None:
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(_: int, u: str) -> None:
            async with session.post(url, data=body_for(u), headers=headers_for(u)) as resp:
                await resp.read()

        await pool(users, one)


async def channel(url: str, users: list[str]) -> None:
    _, ch = sender_for(url)
    await ch.start()

    async def one(_: int, u: str) -> None:
        message = {"title": f"Hi {u}", "body": "Run 1"}
        await ch.send(
            Delivery(TASK, 1, "bench-1", u, message, {}, headers_for(u)["Idempotency-Key"])
        )

    await pool(users, one)
    await ch.close()


async def sender(url: str, users: list[str]) -> None:
    s, ch = sender_for(url)
    await ch.start()
    await pool(users, lambda p, u: s.send(p, u, {}))
    await ch.close()


async def lanes(url: str, users: list[str]) -> None:
    s, ch = sender_for(url)
    await ch.start()
    store = NoStore()
    guard = StoreGuard()
    size = 1_000
    for n in range(0, len(users), size):
        part = users[n : n + size]
        chunk_id = f"c{n}"
        chunk = {"_id": chunk_id, "size": len(part), "users": part, "hi": 0, "res": {}}
        lease = Lease(chunk_id, "bench", 1, now_utc(), 30.0, "chunks")
        d = ChunkDelivery(
            store,  # type: ignore[arg-type]
            guard,
            s,
            lease,
            chunk,
            guarantee=Guarantee.AT_MOST_ONCE,
            concurrency=CONCURRENCY,
            window=CONCURRENCY,
            halt=lambda: False,
        )
        assert await d.run()
    await ch.close()


MODES: dict[str, Callable[[str, list[str]], Coroutine[Any, Any, None]]] = {
    "ceiling (plain aiohttp)": ceiling,
    "webhook channel": channel,
    "Sender.send": sender,
    "chunk lanes + writer (no server)": lanes,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    users = [f"user-{i:07d}" for i in range(args.size)]
    us: dict[str, list[float]] = {m: [] for m in MODES}
    with SinkProcess() as sink:
        for _ in range(args.rounds):
            for name, mode in MODES.items():
                sink.reset()
                started = cpu()
                t = time.monotonic()
                run_loop(mode(sink.url, users))
                used = cpu() - started
                sink.check_exactly_once(name, args.size)
                us[name].append(used / args.size * 1e6)
                print(f"  {name}: {used / args.size * 1e6:.1f} µs, {time.monotonic() - t:.1f} s")
    base = statistics.median(us["ceiling (plain aiohttp)"])
    print(f"\n{args.size:,} sends x {args.rounds} rounds, {CONCURRENCY} in flight\n")
    print("| mode | CPU µs per send (median) | vs ceiling |")
    print("| --- | ---: | ---: |")
    for name, values in us.items():
        med = statistics.median(values)
        print(f"| {name} | {med:.1f} | {med / base:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
