"""Webhook channel: one JSON POST per recipient over one pooled aiohttp session.

Body: ``{"task": {namespace, name}, "run": n, "user": id, "message": {...}}``.
Headers: ``Idempotency-Key`` (the same on every attempt and every worker, so a receiver
can drop repeats), ``X-PushTask-Signature: sha256=<hex HMAC-SHA256 of the body>`` when a
secret is configured, ``X-PushTask-Timestamp`` (unix seconds of the attempt) and
``X-PushTask-Attempt``.
2xx → delivered; 429, 5xx, timeouts and connection errors → retried (Retry-After is
passed up to the worker's back-off); any other status → a final failure.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from email.utils import parsedate_to_datetime
from typing import ClassVar

import aiohttp

from pushtask_worker.channels.base import Attempt, Channel, ChannelContext, Delivery, Outcome

SIGNATURE_HEADER = "X-PushTask-Signature"


def sign(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as delta-seconds or an HTTP date → seconds from now (None if absent/bad)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def encode_body(delivery: Delivery) -> bytes:
    task = {k: delivery.task.get(k) for k in ("namespace", "name")}
    payload = {
        "task": task,
        "run": delivery.run,
        "user": delivery.user,
        "message": delivery.message,
    }
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, default=str).encode()


class WebhookChannel(Channel):
    name: ClassVar[str] = "webhook"

    def __init__(self, ctx: ChannelContext) -> None:
        super().__init__(ctx)
        s = ctx.settings
        self.url: str = str(s["url"])
        self.timeout = float(s.get("timeoutSeconds") or s.get("timeout") or 10.0)
        secret = ctx.secret("WEBHOOK_SECRET") or s.get("secret")
        self.secret: bytes | None = secret.encode() if secret else None
        self.headers: dict[str, str] = {str(k): str(v) for k, v in (s.get("headers") or {}).items()}
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        # One session, one connection pool sized to the worker's send concurrency: TCP and
        # TLS set-up are paid once per connection, not once per recipient.
        connector = aiohttp.TCPConnector(
            limit=self.max_concurrency, limit_per_host=self.max_concurrency, keepalive_timeout=30
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            headers={"Content-Type": "application/json", "User-Agent": "pushtask-worker"},
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, delivery: Delivery) -> Attempt:
        if self._session is None:
            await self.start()
        assert self._session is not None
        body = encode_body(delivery)
        headers = {
            **self.headers,
            "Idempotency-Key": delivery.idempotency_key,
            "X-PushTask-Timestamp": str(int(time.time())),
            "X-PushTask-Attempt": str(delivery.attempt),
        }
        if self.secret is not None:
            headers[SIGNATURE_HEADER] = sign(self.secret, body)
        try:
            async with self._session.post(self.url, data=body, headers=headers) as resp:
                await resp.read()  # drain so the connection goes back to the pool
                return classify(resp.status, resp.headers.get("Retry-After"), resp.reason)
        except TimeoutError:
            return Attempt(Outcome.RETRY, f"timeout after {self.timeout:g}s")
        except aiohttp.ClientError as exc:
            return Attempt(Outcome.RETRY, f"{type(exc).__name__}: {exc}"[:300])


def classify(status: int, retry_after: str | None = None, reason: str | None = None) -> Attempt:
    detail = f"HTTP {status}" + (f" {reason}" if reason else "")
    if 200 <= status < 300:
        return Attempt.ok(status)
    if status == 429 or status >= 500:
        return Attempt(Outcome.RETRY, detail, parse_retry_after(retry_after), status)
    return Attempt(Outcome.FINAL, detail, None, status)
