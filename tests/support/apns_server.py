"""A local APNs: Apple's provider API over HTTP/2 and TLS (hypercorn, h2 only), checking
what APNs checks and answering its documented reasons.

Each request must come over HTTP/2 (ALPN h2; the TLS certificate is made by devstack's
CA) as ``POST /3/device/<token>`` with ``authorization: bearer <JWT>``: the JWT's header
names a known ``kid`` and ES256, its signature verifies with that key's public key, its
``iss`` is the key's team and its ``iat`` is under an hour old (else 403
``InvalidProviderToken`` / ``ExpiredProviderToken``). ``apns-topic`` must be the app's,
``apns-push-type``, ``apns-priority``, ``apns-id`` (a UUID), ``apns-expiration`` and
``apns-collapse-id`` well formed, the payload a JSON object with ``aps`` of at most 4 KiB.

Device tokens: not 64 hex digits → 400 ``BadDeviceToken``; in ``unregistered`` → 410
``Unregistered`` with a timestamp; in ``throttled`` → 429 ``TooManyRequests`` (with
Retry-After) the first time, then 200; everything else 200 with ``apns-id``.
``expire_tokens()`` makes the provider tokens seen so far answer ``ExpiredProviderToken``.

    key = ApnsKey.make()
    with ApnsServerThread({key.key_id: key}, topic="com.example.app", pki=pki) as apns:
        apns.endpoint, apns.delivered, apns.connections ...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from hypercorn.asyncio import serve
from hypercorn.config import Config

from devstack.pki import Pki, ensure_pki
from tests.support.keys import pem_pair
from tests.support.ownloop import OwnLoop
from tests.support.readyfile import announce
from tests.support.sink import free_port

PUSH_TYPES = {
    "alert",
    "background",
    "voip",
    "complication",
    "fileprovider",
    "mdm",
    "location",
    "liveactivity",
    "pushtotalk",
    "widgets",
    "controls",
}
DEVICE_TOKEN = re.compile(r"^[0-9a-fA-F]{64}$")
UUID_FORMAT = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class ApnsKey:
    """An APNs auth key as the developer account hands it out: a P-256 key in a .p8."""

    key_id: str
    team_id: str
    p8: str  # PEM, PKCS#8 ("-----BEGIN PRIVATE KEY-----"), what the .p8 file holds
    public_pem: str

    @classmethod
    def make(cls, key_id: str = "ABC123DEFG", team_id: str = "TEAM123456") -> ApnsKey:
        p8, public = pem_pair(ec.generate_private_key(ec.SECP256R1()))
        return cls(key_id, team_id, p8, public)


@dataclass
class Delivered:
    token: str
    apns_id: str
    headers: dict[str, str]
    payload: dict[str, Any]
    t: float


@dataclass
class ApnsServer:
    keys: dict[str, ApnsKey]
    topic: str
    pki: Pki
    host: str = "127.0.0.1"
    port: int = 0
    retry_after: str | None = "1"
    max_streams: int = 1000  # APNs' own SETTINGS_MAX_CONCURRENT_STREAMS is in this range
    unregistered: set[str] = field(default_factory=set)
    throttled: set[str] = field(default_factory=set)
    delivered: list[Delivered] = field(default_factory=list)
    attempts: Counter[str] = field(default_factory=Counter)  # per device token
    answers: Counter[str] = field(default_factory=Counter)  # per reason ("" for 200)
    connections: set[tuple[str, int]] = field(default_factory=set)
    http_versions: Counter[str] = field(default_factory=Counter)
    provider_tokens: set[str] = field(default_factory=set)  # distinct tokens seen
    max_in_flight: int = 0

    def __post_init__(self) -> None:
        self.port = self.port or free_port(self.host)
        self._expired: set[str] = set()
        self._in_flight = 0
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def endpoint(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def ca_pem(self) -> str:
        return self.pki.ca_cert.read_text()

    def expire_tokens(self) -> None:
        """The provider tokens seen so far are answered ExpiredProviderToken from now on."""
        self._expired |= self.provider_tokens

    def delivered_counts(self) -> Counter[str]:
        return Counter(d.token for d in self.delivered)

    def stats(self) -> dict[str, Any]:
        counts = self.delivered_counts()
        return {
            "delivered": len(self.delivered),
            "delivered_tokens": len(counts),
            "duplicates": sum(n - 1 for n in counts.values() if n > 1),
            "connections": len(self.connections),
            "http_versions": dict(self.http_versions),
            "provider_tokens": len(self.provider_tokens),
            "max_in_flight": self.max_in_flight,
        }

    # -- checks --------------------------------------------------------------------
    def check_token(self, authorization: str | None) -> str | None:
        """The reason APNs refuses this provider token (None: good)."""
        if not authorization or not authorization.lower().startswith("bearer "):
            return "MissingProviderToken"
        token = authorization[7:].strip()
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return "InvalidProviderToken"
        key = self.keys.get(str(header.get("kid")))
        if key is None or header.get("alg") != "ES256":
            return "InvalidProviderToken"
        try:
            claims = jwt.decode(
                token,
                key.public_pem,
                algorithms=["ES256"],
                issuer=key.team_id,
                options={"require": ["iss", "iat"], "verify_iat": False},
            )
        except jwt.PyJWTError:
            return "InvalidProviderToken"
        self.provider_tokens.add(token)
        if token in self._expired or time.time() - int(claims["iat"]) > 3600:
            return "ExpiredProviderToken"
        return None

    def check_headers(self, h: dict[str, str]) -> str | None:
        if h.get("apns-topic") is None:
            return "MissingTopic"
        if h["apns-topic"] != self.topic:
            return "DeviceTokenNotForTopic"
        push_type = h.get("apns-push-type", "alert")
        if push_type not in PUSH_TYPES:
            return "InvalidPushType"
        priority = h.get("apns-priority", "10")
        if priority not in {"1", "5", "10"} or (push_type == "background" and priority == "10"):
            return "BadPriority"
        if "apns-id" in h and not UUID_FORMAT.match(h["apns-id"]):
            return "BadMessageId"
        if "apns-expiration" in h and not h["apns-expiration"].isdigit():
            return "BadExpirationDate"
        if len(h.get("apns-collapse-id", "").encode()) > 64:
            return "BadCollapseId"
        return None

    # -- the ASGI app --------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                event = await receive()
                if event["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif event["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        # Streams open at once: from a request's headers until its answer is sent.
        self._in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            await self._serve(scope, receive, send)
        finally:
            self._in_flight -= 1

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            event = await receive()
            body += event.get("body", b"")
            if not event.get("more_body"):
                break
        if scope["method"] == "GET" and scope["path"] == "/_stats":  # the bench's counters
            counters = json.dumps(self.stats()).encode()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": counters})
            return
        status, reason, headers = self.answer(scope, body)
        self.answers[reason] += 1
        out = json.dumps({"reason": reason}).encode() if reason else b""
        if status == 410:
            out = json.dumps({"reason": reason, "timestamp": int(time.time() * 1000)}).encode()
        raw = [(k.encode(), v.encode()) for k, v in headers.items()]
        if out:
            raw.append((b"content-type", b"application/json"))
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": out})

    def answer(self, scope: Scope, body: bytes) -> tuple[int, str, dict[str, str]]:
        """(status, reason, headers) of one request."""
        self.http_versions[str(scope.get("http_version"))] += 1
        client = scope.get("client")
        if client:
            self.connections.add((str(client[0]), int(client[1])))
        if scope.get("http_version") != "2":
            return 505, "BadRequest", {}  # APNs speaks HTTP/2 only
        if scope["method"] != "POST":
            return 405, "MethodNotAllowed", {}
        path = str(scope["path"])
        if not path.startswith("/3/device/"):
            return 404, "BadPath", {}
        device = path.removeprefix("/3/device/")
        h = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        apns_id = h.get("apns-id") or str(uuid.uuid4())
        refused = self.check_token(h.get("authorization"))
        if refused is not None:
            return 403, refused, {"apns-id": apns_id}
        bad = self.check_headers(h)
        if bad is not None:
            return 400, bad, {"apns-id": apns_id}
        limit = 5120 if h.get("apns-push-type") == "voip" else 4096
        if len(body) > limit:
            return 413, "PayloadTooLarge", {"apns-id": apns_id}
        try:
            payload = json.loads(body)
        except ValueError:
            return 400, "PayloadEmpty", {"apns-id": apns_id}
        if not isinstance(payload, dict) or not isinstance(payload.get("aps"), dict):
            return 400, "PayloadEmpty", {"apns-id": apns_id}
        if not DEVICE_TOKEN.match(device):
            return 400, "BadDeviceToken", {"apns-id": apns_id}
        self.attempts[device] += 1
        if device in self.unregistered:
            return 410, "Unregistered", {"apns-id": apns_id}
        if device in self.throttled and self.attempts[device] == 1:
            extra = {"retry-after": self.retry_after} if self.retry_after else {}
            return 429, "TooManyRequests", {"apns-id": apns_id, **extra}
        self.delivered.append(Delivered(device, apns_id, h, payload, time.time()))
        return 200, "", {"apns-id": apns_id, "apns-unique-id": str(uuid.uuid4())}

    # -- lifecycle -----------------------------------------------------------------
    def config(self) -> Config:
        config = Config()
        config.bind = [f"{self.host}:{self.port}"]
        config.certfile = str(self.pki.serving_cert)
        config.keyfile = str(self.pki.serving_key)
        config.alpn_protocols = ["h2"]  # HTTP/2 only, as APNs
        config.h2_max_concurrent_streams = self.max_streams
        config.keep_alive_timeout = 3600  # APNs keeps idle connections for a long time
        # and does not close one after a number of requests (hypercorn's default: 1,000,
        # with streams still in flight, which the client must then retry).
        config.keep_alive_max_requests = 2**31
        config.accesslog = None
        config.errorlog = None
        return config

    async def start(self) -> None:
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(
            serve(self, self.config(), shutdown_trigger=self._stop.wait)  # type: ignore[arg-type]
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                _, writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return
        raise RuntimeError("the local APNs server did not start")

    async def stop(self) -> None:
        if self._stop is not None and self._task is not None:
            self._stop.set()
            await asyncio.wait_for(self._task, 10)
            self._task = None


class ApnsServerThread(OwnLoop, ApnsServer):
    """An ApnsServer on its own event loop in a daemon thread, for synchronous tests."""

    thread_name = "apns"
    start_timeout = 15.0  # TLS and HTTP/2 set-up


def main(argv: list[str] | None = None) -> int:
    """As a process (the bench): a new .p8 key; the endpoint, the CA, the key and its ids go
    to --ready-file once listening. GET /_stats (over HTTP/2) gives the counters."""
    p = argparse.ArgumentParser(description="a local APNs: HTTP/2 over TLS")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--topic", default="dev.pushtask.bench")
    p.add_argument("--pki-dir", required=True, help="where devstack's CA and certificate go")
    p.add_argument("--ready-file", required=True)
    args = p.parse_args(argv)
    key = ApnsKey.make()
    server = ApnsServer({key.key_id: key}, args.topic, local_pki(Path(args.pki_dir)))
    server.host, server.port = args.host, args.port or free_port(args.host)

    async def serve() -> None:
        await server.start()
        ready = {
            "endpoint": server.endpoint,
            "ca": server.ca_pem,
            "p8": key.p8,
            "key_id": key.key_id,
            "team_id": key.team_id,
            "topic": args.topic,
        }
        await asyncio.to_thread(announce, args.ready_file, json.dumps(ready))
        try:
            await asyncio.Event().wait()
        finally:
            await server.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
    return 0


def local_pki(root: Path) -> Pki:
    """devstack's CA and a serving certificate for 127.0.0.1 and localhost, under `root`."""
    return ensure_pki(root)


if __name__ == "__main__":
    raise SystemExit(main())
