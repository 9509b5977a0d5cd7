"""APNs channel: Apple's provider API over HTTP/2, token-based (.p8) authentication.

Settings (``message.apns``): ``keyId``, ``teamId``, ``topic``, ``pushType`` (``alert``),
``priority`` (10), ``expirationSeconds``, ``collapseId``, ``environment``
(``production`` → api.push.apple.com, ``sandbox`` → api.sandbox.push.apple.com),
``endpoint`` (an override), ``tokenAttribute`` (``deviceToken``), ``timeoutSeconds``.
Secrets through the environment: ``PUSHTASK_APNS_KEY`` (the .p8 key, PEM) and
``PUSHTASK_APNS_CA_BUNDLE`` (optional PEM CA certificates to trust).

One HTTP/2 connection per worker carries every send as its own stream (httpcore, httpx's
transport, with h2 and ``max_connections=1``; used without httpx's request and response
models, which cost a third of the CPU per send, measured): APNs asks providers to keep
connections open and multiplex rather than connect per notification. The provider token
is an ES256 JWT ``{iss: teamId, iat}`` with ``kid`` = keyId, shared by every send and
renewed after 50 minutes (APNs refuses a token older than an hour and one renewed more
often than every 20 minutes); ``ExpiredProviderToken`` renews it once. ``apns-id`` is a
UUID derived from the idempotency key, so a resend after a lost worker carries the id of
the first send.

Reasons: ``BadDeviceToken``, ``DeviceTokenNotForTopic``, ``Unregistered`` (410),
``PayloadTooLarge`` and the other 4xx → final with the reason; ``TooManyRequests`` (429),
``TooManyProviderTokenUpdates``, 500 and 503 → retried (Retry-After honoured when given).
"""

from __future__ import annotations

import json
import time
from typing import Any, ClassVar

import httpcore
import jwt
import orjson

from pushtask.models import Apns
from pushtask.retryafter import parse_retry_after
from pushtask_worker.channels.base import Attempt, Channel, ChannelContext, Delivery, Outcome
from pushtask_worker.channels.credentials import (
    Token,
    TokenCache,
    device_token,
    notification_id,
    ssl_context,
)

# A test send (Delivery.test): `"test"` in the payload's custom keys, beside idempotencyKey.
TEST_FIELD = "test"

ENDPOINTS = {
    "production": "https://api.push.apple.com",
    "sandbox": "https://api.sandbox.push.apple.com",
}
# APNs refuses a provider token older than 60 minutes and one replaced within 20: renew
# in between, with room on both sides for clock skew.
TOKEN_RENEW_SECONDS = 50 * 60
MAX_PAYLOAD = 4096  # bytes, every push type but voip (5 KiB)
MAX_VOIP_PAYLOAD = 5120

FINAL_REASONS = {
    "BadDeviceToken": "device token is malformed, or belongs to the other environment "
    "(sandbox or production)",
    "Unregistered": "device token no longer active for the topic (the app was uninstalled "
    "or the user turned notifications off): remove it from the audience",
    "ExpiredToken": "device token has expired: remove it from the audience",
    "DeviceTokenNotForTopic": "device token does not belong to the topic (bundle id)",
    "PayloadTooLarge": "the notification is larger than APNs accepts",
    "InvalidProviderToken": "the key id, team id or .p8 key is refused",
    "MissingProviderToken": "no provider token was sent",
    "TopicDisallowed": "the key may not send to this topic",
    "BadTopic": "the apns-topic is invalid",
    "InvalidPushType": "the apns-push-type is invalid",
}
RETRY_REASONS = {
    "TooManyRequests",
    "TooManyProviderTokenUpdates",
    "InternalServerError",
    "ServiceUnavailable",
    "Shutdown",
}


def provider_token(key_pem: str, key_id: str, team_id: str, now: float) -> str:
    """The ES256 JWT APNs takes as ``authorization: bearer <token>``."""
    return jwt.encode(
        {"iss": team_id, "iat": int(now)}, key_pem, algorithm="ES256", headers={"kid": key_id}
    )


def reason_of(body: bytes) -> str:
    try:
        doc = json.loads(body)
    except ValueError:
        return ""
    return str(doc.get("reason") or "") if isinstance(doc, dict) else ""


def classify(status: int, body: bytes, retry_after: str | None = None) -> Attempt:
    """An APNs answer as an attempt (ExpiredProviderToken is handled before: a new token)."""
    if status == 200:
        return Attempt.ok(status)
    reason = reason_of(body) or f"HTTP {status}"
    detail = f"{reason}: {FINAL_REASONS[reason]}" if reason in FINAL_REASONS else reason
    if reason in RETRY_REASONS or status == 429 or status >= 500:
        return Attempt(Outcome.RETRY, detail[:300], parse_retry_after(retry_after), status)
    return Attempt(Outcome.FINAL, detail[:300], None, status)


class ApnsChannel(Channel):
    name: ClassVar[str] = "apns"

    def __init__(self, ctx: ChannelContext) -> None:
        super().__init__(ctx)
        s = ctx.settings_as(Apns)
        self.key_id = s.key_id
        self.team_id = s.team_id
        self.topic = s.topic
        self.push_type: str = s.push_type
        self.priority: int = s.priority
        self.expiration = s.expiration_seconds
        self.collapse_id = s.collapse_id
        self.endpoint = str(s.endpoint or ENDPOINTS[s.environment]).rstrip("/")
        self.token_attribute = s.token_attribute
        self.timeout = s.timeout_seconds
        self.max_payload = MAX_VOIP_PAYLOAD if self.push_type == "voip" else MAX_PAYLOAD
        self.ca_pem = ctx.secret("APNS_CA_BUNDLE")
        self.key_pem = ctx.secret("APNS_KEY") or ""
        # A bad credential fails each recipient with the reason (the error budget then
        # fails the run) instead of crashing the worker into a restart loop.
        self.problem: str | None = None
        if not self.key_pem:
            self.problem = "no .p8 key (env PUSHTASK_APNS_KEY is empty)"
        elif not (self.key_id and self.team_id and self.topic):
            self.problem = "keyId, teamId and topic are required"
        else:
            try:
                provider_token(self.key_pem, self.key_id, self.team_id, time.time())
            except (ValueError, TypeError, jwt.PyJWTError) as error:
                self.problem = f"the .p8 key does not load: {error}"
        self.tokens = TokenCache(self._new_token)
        self._pool: httpcore.AsyncConnectionPool | None = None
        self._timeouts = {k: self.timeout for k in ("connect", "read", "write", "pool")}

    async def _new_token(self) -> Token:
        now = time.time()
        return Token(
            provider_token(self.key_pem, self.key_id, self.team_id, now),
            now + TOKEN_RENEW_SECONDS,
        )

    async def start(self) -> None:
        # One connection, many streams: APNs (and the server's SETTINGS) bound the streams
        # in flight; requests beyond that wait in the pool for a free stream. HTTP/2 only
        # (ALPN h2): APNs speaks nothing else.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context(self.ca_pem),
            max_connections=1,
            max_keepalive_connections=1,
            http1=False,
            http2=True,
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
            self._pool = None

    def payload(self, delivery: Delivery) -> bytes:
        m = delivery.message
        aps: dict[str, Any]
        if self.push_type == "background":
            aps = {"content-available": 1}
        else:
            alert = {k: str(m[k]) for k in ("title", "body") if m.get(k)}
            aps = {"alert": alert}
        extra = m.get("extra")
        doc: dict[str, Any] = dict(extra) if isinstance(extra, dict) else {}
        if m.get("link"):
            doc["link"] = m["link"]
        doc["idempotencyKey"] = delivery.idempotency_key
        if delivery.test:
            doc[TEST_FIELD] = True
        doc["aps"] = aps
        return orjson.dumps(doc)

    def headers(self, delivery: Delivery, token: str) -> dict[str | bytes, str | bytes]:
        headers: dict[str | bytes, str | bytes] = {
            "user-agent": "pushtask-worker",
            "authorization": f"bearer {token}",
            "apns-topic": self.topic,
            "apns-push-type": self.push_type,
            "apns-priority": str(self.priority),
            "apns-id": notification_id(delivery.idempotency_key),
        }
        if self.expiration is not None:
            at = int(time.time()) + self.expiration if self.expiration > 0 else 0
            headers["apns-expiration"] = str(at)
        if self.collapse_id:
            headers["apns-collapse-id"] = self.collapse_id
        return headers

    async def send(self, delivery: Delivery) -> Attempt:
        if self.problem is not None:
            return Attempt(Outcome.FINAL, f"apns: {self.problem}"[:300])
        device = device_token(delivery.attrs, self.token_attribute)
        if device is None:
            return Attempt(Outcome.FINAL, f"no device token (attribute {self.token_attribute!r})")
        body = self.payload(delivery)
        if len(body) > self.max_payload:
            detail = f"PayloadTooLarge: {len(body)} bytes, more than {self.max_payload}"
            return Attempt(Outcome.FINAL, detail)
        if self._pool is None:
            await self.start()
        url = f"{self.endpoint}/3/device/{device}"
        try:
            token = await self.tokens.get()
            status, answer, retry_after = await self._post(url, body, self.headers(delivery, token))
            if status == 403 and reason_of(answer) == "ExpiredProviderToken":
                token = await self.tokens.renew(token)
                status, answer, retry_after = await self._post(
                    url, body, self.headers(delivery, token)
                )
        except httpcore.TimeoutException:
            return Attempt(Outcome.RETRY, f"timeout after {self.timeout:g}s")
        except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol) as e:
            # A dropped connection or a GOAWAY: the pool opens a new one for the next send.
            return Attempt(Outcome.RETRY, f"{type(e).__name__}: {e}"[:300])
        if status == 403 and reason_of(answer) == "ExpiredProviderToken":
            return Attempt(Outcome.RETRY, "ExpiredProviderToken: refused a fresh token", None, 403)
        return classify(status, answer, retry_after)

    async def _post(
        self, url: str, body: bytes, headers: dict[str | bytes, str | bytes]
    ) -> tuple[int, bytes, str | None]:
        """(status, body, Retry-After) of one POST on the shared connection."""
        assert self._pool is not None
        response = await self._pool.request(
            "POST", url, headers=headers, content=body, extensions={"timeout": self._timeouts}
        )
        retry_after = next(
            (v.decode("latin-1") for k, v in response.headers if k.lower() == b"retry-after"),
            None,
        )
        return response.status, response.content, retry_after
