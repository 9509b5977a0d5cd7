"""Mobile push throughput: one worker's channel sending to local servers that speak each
protocol, webhook beside FCM and APNs, in one process and one run.

    python bench/mobile.py [--size 5000] [--rounds 3]

Each mode sends `--size` notifications, CONCURRENCY in flight (a worker's default send
concurrency), through the channel's own `send` (auth tokens, request building, error
mapping included), to a server in its own process:

- webhook: the webhook channel to tests/support/sink.py (HTTP/1.1, a keep-alive pool);
- fcm: the FCM channel to tests/support/fcm_server.py (OAuth2 token endpoint and the
  HTTP v1 send API; HTTP/1.1, a keep-alive pool);
- apns: the APNs channel to tests/support/apns_server.py (hypercorn, HTTP/2 over TLS, one
  connection multiplexing every stream);
- apns, a connection per send: the same requests, each on a new TLS connection (what the
  channel avoids).

Every round checks at the server that each notification arrived exactly once. The table:
sends per second (median of the rounds), CPU µs per send of this process, the ratio of
sends per second to the webhook's, and the connections the server saw per round.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpcore  # noqa: E402

from pushtask_worker.channels.apns import ApnsChannel  # noqa: E402
from pushtask_worker.channels.base import Attempt, Channel, ChannelContext, Delivery  # noqa: E402
from pushtask_worker.channels.credentials import ssl_context  # noqa: E402
from pushtask_worker.channels.fcm import FcmChannel  # noqa: E402
from pushtask_worker.channels.webhook import WebhookChannel  # noqa: E402
from tests.support.sink import free_port  # noqa: E402

CONCURRENCY = 64  # a worker's default send concurrency
TASK = {"namespace": "bench", "name": "mobile", "uid": "bench"}
WEBHOOK = "webhook"
FCM = "fcm"
APNS = "apns (HTTP/2, one connection)"
APNS_PER_SEND = "apns, a connection per send"


def cpu() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def run_loop(coro: Awaitable[Any]) -> Any:
    """The worker's event loop (uvloop where installed)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]
    return uvloop.run(coro)  # type: ignore[arg-type]


class ServerProcess:
    """`python -m <module> ... --ready-file F`; F's JSON once it listens."""

    def __init__(self, module: str, *args: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bench-mobile-"))
        self.ready = self.dir / "ready.json"
        self.argv = [sys.executable, "-m", module, *args, "--ready-file", str(self.ready)]
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}

    def __enter__(self) -> ServerProcess:
        self.proc = subprocess.Popen(
            self.argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = self.ready.read_text() if self.ready.exists() else ""
            if text:
                # The sink writes its URL; the push servers a JSON document.
                self.info = json.loads(text) if text.startswith("{") else {"url": text}
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.__exit__()
        raise RuntimeError(f"{self.argv} did not start")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


@dataclass
class Mode:
    name: str
    channel: Callable[[], Channel]
    token: Callable[[str], str]  # user → device token
    stats: Callable[[], dict[str, Any]]
    rates: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)
    connections: list[int] = field(default_factory=list)


def http_stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return dict(json.loads(resp.read()))


def apns_stats(endpoint: str, ca: str) -> dict[str, Any]:
    with httpcore.ConnectionPool(ssl_context=ssl_context(ca), http1=False, http2=True) as pool:
        return dict(json.loads(pool.request("GET", f"{endpoint}/_stats").content))


def sink_stats(port: int) -> dict[str, Any]:
    stats = http_stats(f"http://127.0.0.1:{port}/_sink/stats")
    # The sink counts by user; the webhook's "token" is the user.
    return {"delivered": stats["delivered"], "duplicates": stats["duplicates"]}


class ApnsPerSend(ApnsChannel):
    """The APNs channel, but a new HTTP/2 connection (TCP + TLS) for every send."""

    async def _post(
        self, url: str, body: bytes, headers: dict[str | bytes, str | bytes]
    ) -> tuple[int, bytes, str | None]:
        async with httpcore.AsyncConnectionPool(
            ssl_context=self._ssl, http1=False, http2=True
        ) as pool:
            response = await pool.request("POST", url, headers=headers, content=body)
            return response.status, response.content, None

    async def start(self) -> None:
        self._ssl = ssl_context(self.ca_pem)  # made once: only the connection is per send
        await super().start()


async def drive(channel: Channel, deliveries: list[Delivery]) -> list[Attempt]:
    it = iter(deliveries)
    out: list[Attempt] = []

    async def lane() -> None:
        for d in it:
            out.append(await channel.send(d))

    await channel.start()
    try:
        await asyncio.gather(*(lane() for _ in range(CONCURRENCY)))
    finally:
        await channel.close()
    return out


def deliveries(mode: Mode, round_no: int, size: int) -> list[Delivery]:
    out = []
    tag = hashlib.sha256(mode.name.encode()).hexdigest()[:6]  # modes sharing a server
    for i in range(size):
        user = f"{tag}-r{round_no}-u{i:07d}"
        key = hashlib.sha256(f"bench:{user}".encode()).hexdigest()
        message = {"title": f"Hi {user}", "body": "Spring sale", "link": f"https://s/{user}"}
        attrs = {"deviceToken": mode.token(user)}
        out.append(Delivery(TASK, 1, "bench-1", user, message, attrs, key))
    return out


def measure(mode: Mode, round_no: int, size: int) -> None:
    batch = deliveries(mode, round_no, size)
    before = mode.stats()
    started_cpu, started = cpu(), time.monotonic()
    results = run_loop(drive(mode.channel(), batch))
    wall, used = time.monotonic() - started, cpu() - started_cpu
    failed = [r for r in results if r.outcome.value != "ok"]
    if failed:
        raise RuntimeError(f"{mode.name}: {len(failed)} sends failed, e.g. {failed[0]}")
    after = mode.stats()
    if after["delivered"] - before["delivered"] != size or after["duplicates"]:
        raise RuntimeError(f"{mode.name}: the server saw {after} after {before}, not {size} once")
    mode.rates.append(size / wall)
    mode.cpu_us.append(used / size * 1e6)
    mode.connections.append(after.get("connections", 0) - before.get("connections", 0))
    print(f"  {mode.name}: {size / wall:,.0f}/s, {used / size * 1e6:.0f} µs CPU per send")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", type=int, default=5_000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    sink_port = free_port()
    pki = Path(tempfile.mkdtemp(prefix="bench-pki-"))
    sink = ServerProcess("tests.support.sink", "--port", str(sink_port))
    fcm = ServerProcess("tests.support.fcm_server")
    apns = ServerProcess("tests.support.apns_server", "--pki-dir", str(pki))
    with sink, fcm, apns:
        f, a = fcm.info, apns.info
        fcm_env = {"PUSHTASK_FCM_SERVICE_ACCOUNT": f["service_account"]}
        apns_env = {"PUSHTASK_APNS_KEY": a["p8"], "PUSHTASK_APNS_CA_BUNDLE": a["ca"]}
        apns_settings = {
            "keySecretRef": {"name": "apns"},  # the spec's; the key itself comes from env
            "keyId": a["key_id"],
            "teamId": a["team_id"],
            "topic": a["topic"],
            "endpoint": a["endpoint"],
        }

        def ctx(settings: dict[str, Any], env: dict[str, str]) -> ChannelContext:
            return ChannelContext(settings, env=env, concurrency=CONCURRENCY)

        def device(user: str) -> str:
            return hashlib.sha256(user.encode()).hexdigest()

        modes = [
            Mode(
                WEBHOOK,
                lambda: WebhookChannel(ctx({"url": f"http://127.0.0.1:{sink_port}/hook"}, {})),
                lambda u: u,
                lambda: sink_stats(sink_port),
            ),
            Mode(
                FCM,
                lambda: FcmChannel(
                    ctx(
                        {"serviceAccountSecretRef": {"name": "fcm"}, "endpoint": f["endpoint"]},
                        fcm_env,
                    )
                ),
                lambda u: f"tok-{u}",
                lambda: http_stats(f"{f['endpoint']}/_stats"),
            ),
            Mode(
                APNS,
                lambda: ApnsChannel(ctx(apns_settings, apns_env)),
                device,
                lambda: apns_stats(a["endpoint"], a["ca"]),
            ),
            Mode(
                APNS_PER_SEND,
                lambda: ApnsPerSend(ctx(apns_settings, apns_env)),
                device,
                lambda: apns_stats(a["endpoint"], a["ca"]),
            ),
        ]
        # Rounds alternate the modes so a drift of the machine's speed hits each alike.
        for round_no in range(args.rounds):
            for mode in modes:
                measure(mode, round_no, args.size)
    base = statistics.median(modes[0].rates)
    print(f"\n{args.size:,} sends per mode x {args.rounds} rounds, {CONCURRENCY} in flight\n")
    print("| mode | sends/s (median) | CPU µs per send | vs webhook | connections per round |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for mode in modes:
        rate = statistics.median(mode.rates)
        conns = "—" if mode.name == WEBHOOK else str(int(statistics.median(mode.connections)))
        print(
            f"| {mode.name} | {rate:,.0f} | {statistics.median(mode.cpu_us):.0f} "
            f"| {rate / base:.2f}x | {conns} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
