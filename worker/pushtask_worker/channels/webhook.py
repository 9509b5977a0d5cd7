"""Webhook channel: one JSON POST per recipient over one pooled aiohttp session.

Body: ``{"task": {namespace, name}, "run": n, "user": id, "message": {...}}``; a test
send (``kubectl push test``) adds ``"test": true`` and the header ``PushTask-Test: true``.
Signed per Standard Webhooks (standardwebhooks.com) by default: ``webhook-id`` (the
idempotency key: the same on every attempt and every worker, so a receiver can drop
repeats), ``webhook-timestamp`` (unix seconds of the attempt) and, with a secret,
``webhook-signature: v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">``, one per
secret during a key rotation, separated by a space; any Standard Webhooks library
verifies it. ``signature: pushtask`` keeps the earlier scheme: ``X-PushTask-Timestamp``
and ``X-PushTask-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">``. Both
schemes also send ``Idempotency-Key`` and ``X-PushTask-Attempt`` (docs/channels.md).
2xx → delivered; 429, 5xx, timeouts and connection errors → retried (Retry-After is
passed up to the worker's back-off, which caps it); 410 → the endpoint is gone and the
run stops (Outcome.GONE); any other status → a final failure.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import ClassVar
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import orjson

from pushtask.models import Webhook
from pushtask.retryafter import parse_retry_after
from pushtask.signing import (  # re-exported: the channel's scheme, shared with notifications
    ID_HEADER,
    SECRET_PREFIX,
    STANDARD_SIGNATURE_HEADER,
    STANDARD_TIMESTAMP_HEADER,
    signing_key,
    standard_headers,
    standard_signature,
)
from pushtask_worker.channels.base import Attempt, Channel, ChannelContext, Delivery, Outcome

__all__ = [
    "ID_HEADER",
    "SECRET_PREFIX",
    "SIGNATURE_HEADER",
    "STANDARD_SIGNATURE_HEADER",
    "STANDARD_TIMESTAMP_HEADER",
    "TIMESTAMP_HEADER",
    "WebhookChannel",
    "classify",
    "encode_body",
    "sign",
    "signed_payload",
    "signing_key",
    "standard_signature",
]

# signature: pushtask (the earlier scheme)
SIGNATURE_HEADER = "X-PushTask-Signature"
TIMESTAMP_HEADER = "X-PushTask-Timestamp"
# A test send (Delivery.test): this header and `"test": true` in the body.
TEST_HEADER = "PushTask-Test"


def signed_payload(timestamp: str, body: bytes) -> bytes:
    """What the pushtask signature covers: the timestamp header's exact text, a dot, the
    raw body."""
    return timestamp.encode("ascii") + b"." + body


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The pushtask scheme's X-PushTask-Signature (the secret's bytes are the key)."""
    digest = hmac.new(secret, signed_payload(timestamp, body), hashlib.sha256).hexdigest()
    return "sha256=" + digest


def encode_body(delivery: Delivery) -> bytes:
    task = {k: delivery.task.get(k) for k in ("namespace", "name")}
    payload = {
        "task": task,
        "run": delivery.run,
        "user": delivery.user,
        "message": delivery.message,
    }
    if delivery.test:  # only then: a real send's body stays as receivers know it
        payload["test"] = True
    # orjson: compact UTF-8 like json.dumps(separators=(",", ":"), ensure_ascii=False), at a
    # fraction of the CPU (measured on the worker's hot path).
    return orjson.dumps(payload, default=str)


class WebhookChannel(Channel):
    name: ClassVar[str] = "webhook"

    def __init__(self, ctx: ChannelContext) -> None:
        super().__init__(ctx)
        s = ctx.settings_as(Webhook)
        self.url: str = str(s.url)
        self.timeout = s.timeout_seconds
        self.scheme: str = s.signature
        secret = ctx.secret("WEBHOOK_SECRET")
        self.secret: bytes | None = secret.encode() if secret else None
        # The standard scheme's keys: the current secret's, then the previous one's while
        # a rotation is under way (the models allow a previous key only with this scheme).
        self.keys: list[bytes] = []
        if self.scheme == "standard":
            ref = s.secret_ref
            named = (
                (secret, ref.key if ref else "hmac"),
                (ctx.secret("WEBHOOK_SECRET_PREVIOUS"), ref.previous_key if ref else None),
            )
            for value, key in named:
                if not value:
                    continue
                try:
                    self.keys.append(signing_key(value))
                except ValueError as error:  # the value itself never goes into a message
                    where = f"Secret {ref.name!r} key {key!r}" if ref else "the secret"
                    raise ValueError(f"spec.message.webhook.secretRef: {where}: {error}") from None
        self.headers: dict[str, str] = dict(s.headers)
        # The endpoint as a 410's reason names it: no user:password, no query (a token).
        parts = urlsplit(self.url)
        self.shown_url = urlunsplit(
            (parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", "")
        )
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
        # A fresh timestamp per attempt: a retry after a long back-off is not stale.
        timestamp = str(int(time.time()))
        key = delivery.idempotency_key
        headers = {
            **self.headers,
            "Idempotency-Key": key,
            "X-PushTask-Attempt": str(delivery.attempt),
        }
        if delivery.test:
            headers[TEST_HEADER] = "true"
        if self.scheme == "standard":
            headers.update(standard_headers(self.keys, key, timestamp, body))
        else:
            headers[TIMESTAMP_HEADER] = timestamp
            if self.secret is not None:
                headers[SIGNATURE_HEADER] = sign(self.secret, timestamp, body)
        try:
            async with self._session.post(self.url, data=body, headers=headers) as resp:
                await resp.read()  # drain so the connection goes back to the pool
                return classify(
                    resp.status, resp.headers.get("Retry-After"), resp.reason, self.shown_url
                )
        except TimeoutError:
            return Attempt(Outcome.RETRY, f"timeout after {self.timeout:g}s")
        except aiohttp.ClientError as exc:
            return Attempt(Outcome.RETRY, f"{type(exc).__name__}: {exc}"[:300])


def classify(
    status: int, retry_after: str | None = None, reason: str | None = None, url: str = ""
) -> Attempt:
    detail = f"HTTP {status}" + (f" {reason}" if reason else "")
    if 200 <= status < 300:
        return Attempt.ok(status)
    if status == 429 or status >= 500:
        return Attempt(Outcome.RETRY, detail, parse_retry_after(retry_after), status)
    if status == 410:
        # The receiver says the endpoint no longer exists: retrying, or sending to the
        # rest of the audience, only repeats the same answer.
        gone = (
            f"webhook endpoint {url or '(url)'} answered HTTP 410 Gone: the receiver says it "
            "no longer exists; point spec.message.webhook.url at a live endpoint and start "
            "a new run"
        )
        return Attempt(Outcome.GONE, gone, None, status)
    return Attempt(Outcome.FINAL, detail, None, status)
