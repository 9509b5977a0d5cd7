"""FCM channel: Firebase Cloud Messaging's HTTP v1 API, one request per device token.

Settings (``message.fcm``): ``projectId`` (else the service account's ``project_id``),
``tokenAttribute`` (the row attribute holding the registration token, ``deviceToken``),
``endpoint`` (``https://fcm.googleapis.com``), ``tokenUri`` (else the service account's
``token_uri``), ``androidPriority``, ``ttlSeconds``, ``timeoutSeconds``. Secrets through the
environment: ``PUSHTASK_FCM_SERVICE_ACCOUNT`` (the service-account JSON) and
``PUSHTASK_FCM_CA_BUNDLE`` (optional PEM CA certificates to trust).

Auth: OAuth2 with a JWT bearer assertion (RFC 7523): the worker signs
``{iss: client_email, scope: firebase.messaging, aud: token_uri, iat, exp}`` with the
service account's RSA key (RS256, ``kid`` = ``private_key_id``), exchanges it at the token
endpoint for an access token and shares that token between all its sends until shortly
before it expires. A 401 renews it once.

The request: ``POST {endpoint}/v1/projects/{project}/messages:send`` with
``{"message": {"token", "notification": {title, body}, "data": {link, extra...,
idempotencyKey}}}``; receivers drop repeats by ``data.idempotencyKey``.
Errors (FCM's ``FcmError.errorCode``, else the Google RPC status): ``UNREGISTERED``,
``INVALID_ARGUMENT``, ``SENDER_ID_MISMATCH``, ``THIRD_PARTY_AUTH_ERROR`` → final, the
reason naming the token's problem; ``QUOTA_EXCEEDED``, ``UNAVAILABLE``, ``INTERNAL`` (and
any 429 or 5xx) → retried, honouring ``Retry-After``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import aiohttp
import jwt
import orjson

from pushtask.models import Fcm
from pushtask.retryafter import parse_retry_after
from pushtask_worker.channels.base import Attempt, Channel, ChannelContext, Delivery, Outcome
from pushtask_worker.channels.credentials import (
    Token,
    TokenCache,
    TokenError,
    device_token,
    ssl_context,
    stringify,
)

# A test send (Delivery.test): `"test"` in the data, beside idempotencyKey.
TEST_FIELD = "test"

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
DEFAULT_TOKEN_URI = "https://oauth2.googleapis.com/token"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_SECONDS = 3600  # Google accepts assertions valid for at most an hour
RENEW_MARGIN = 300.0  # renew an access token this long before it expires
FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"

# Final: the token (or the message built for it) is wrong; retrying cannot help.
FINAL_CODES = {
    "UNREGISTERED": "device token no longer valid (the app was uninstalled or the token "
    "expired): remove it from the audience",
    "INVALID_ARGUMENT": "malformed device token or message",
    "SENDER_ID_MISMATCH": "device token belongs to another Firebase project",
    "THIRD_PARTY_AUTH_ERROR": "APNs or web push credentials of the Firebase project refused",
}
RETRY_CODES = {"QUOTA_EXCEEDED", "UNAVAILABLE", "INTERNAL", "RESOURCE_EXHAUSTED"}


@dataclass(frozen=True)
class ServiceAccount:
    """The parts of a Google service-account JSON key file the channel uses."""

    client_email: str
    private_key: str  # PEM
    private_key_id: str | None
    project_id: str | None
    token_uri: str

    @classmethod
    def from_json(cls, text: str) -> ServiceAccount:
        try:
            doc = json.loads(text)
        except ValueError as error:
            raise ValueError(f"the service-account JSON does not parse: {error}") from None
        if not isinstance(doc, dict):
            raise ValueError("the service-account JSON is not an object")
        missing = [k for k in ("client_email", "private_key") if not doc.get(k)]
        if missing:
            raise ValueError(f"the service-account JSON lacks {', '.join(missing)}")
        return cls(
            client_email=str(doc["client_email"]),
            private_key=str(doc["private_key"]),
            private_key_id=str(doc["private_key_id"]) if doc.get("private_key_id") else None,
            project_id=str(doc["project_id"]) if doc.get("project_id") else None,
            token_uri=str(doc.get("token_uri") or DEFAULT_TOKEN_URI),
        )


def assertion(account: ServiceAccount, token_uri: str, now: float) -> str:
    """The signed JWT exchanged for an access token (RS256, RFC 7523)."""
    claims = {
        "iss": account.client_email,
        "scope": SCOPE,
        "aud": token_uri,
        "iat": int(now),
        "exp": int(now) + ASSERTION_SECONDS,
    }
    headers = {"kid": account.private_key_id} if account.private_key_id else None
    return jwt.encode(claims, account.private_key, algorithm="RS256", headers=headers)


def renew_at(now: float, expires_in: float) -> float:
    """When to make the next access token: RENEW_MARGIN before expiry (half its life for
    a token shorter than twice that)."""
    return now + max(expires_in - RENEW_MARGIN, expires_in / 2)


def error_code(body: bytes) -> tuple[str, str]:
    """(code, message) of an FCM error body: FcmError.errorCode when given, else the
    Google RPC status (UNAUTHENTICATED, NOT_FOUND ...); ("", "") when unreadable."""
    try:
        error = json.loads(body).get("error") or {}
    except (ValueError, AttributeError):
        return "", ""
    if not isinstance(error, dict):
        return "", ""
    message = str(error.get("message") or "")
    for detail in error.get("details") or []:
        if isinstance(detail, dict) and detail.get("@type") == FCM_ERROR_TYPE:
            if detail.get("errorCode"):
                return str(detail["errorCode"]), message
    return str(error.get("status") or ""), message


def classify(status: int, body: bytes, retry_after: str | None = None) -> Attempt:
    """An FCM answer as an attempt (401 is handled before: it renews the token)."""
    if 200 <= status < 300:
        return Attempt.ok(status)
    code, message = error_code(body)
    detail = f"{code or 'HTTP ' + str(status)}: {FINAL_CODES.get(code) or message or 'error'}"
    if code in FINAL_CODES and message and code != "UNREGISTERED":
        detail = f"{detail} ({message})"
    detail = detail[:300]
    if code in FINAL_CODES:
        return Attempt(Outcome.FINAL, detail, None, status)
    if code in RETRY_CODES or status == 429 or status >= 500:
        return Attempt(Outcome.RETRY, detail, parse_retry_after(retry_after), status)
    return Attempt(Outcome.FINAL, detail, None, status)


def needs_new_token(status: int, body: bytes) -> bool:
    # THIRD_PARTY_AUTH_ERROR is a 401 about the project's APNs/web push credentials, not ours.
    return status == 401 and error_code(body)[0] != "THIRD_PARTY_AUTH_ERROR"


class FcmChannel(Channel):
    name: ClassVar[str] = "fcm"

    def __init__(self, ctx: ChannelContext) -> None:
        super().__init__(ctx)
        s = ctx.settings_as(Fcm)
        self.token_attribute = s.token_attribute
        self.endpoint = str(s.endpoint).rstrip("/")
        self.timeout = s.timeout_seconds
        self.android: dict[str, Any] = {}
        if s.android_priority:
            self.android["priority"] = s.android_priority
        if s.ttl_seconds is not None:
            self.android["ttl"] = f"{s.ttl_seconds}s"
        self.ca_pem = ctx.secret("FCM_CA_BUNDLE")
        # A bad or missing credential is every recipient's final failure with the reason
        # (the error budget then fails the run), not a worker that crashes and restarts.
        self.problem: str | None = None
        self.account: ServiceAccount | None = None
        raw = ctx.secret("FCM_SERVICE_ACCOUNT")
        if not raw:
            self.problem = "no service account (env PUSHTASK_FCM_SERVICE_ACCOUNT is empty)"
        else:
            try:
                self.account = ServiceAccount.from_json(raw)
            except ValueError as error:
                self.problem = str(error)
        project = s.project_id or (self.account.project_id if self.account else None)
        if project is None and self.problem is None:
            self.problem = "no projectId in the spec nor project_id in the service account"
        self.project = str(project or "")
        self.token_uri = str(
            s.token_uri or (self.account.token_uri if self.account else DEFAULT_TOKEN_URI)
        )
        self.url = f"{self.endpoint}/v1/projects/{self.project}/messages:send"
        self.tokens = TokenCache(self._new_token)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        # One pooled session: connections sized to the send concurrency (FCM's front ends
        # speak HTTP/1.1 keep-alive as well as HTTP/2; aiohttp reuses each connection).
        connector = aiohttp.TCPConnector(
            limit=self.max_concurrency,
            limit_per_host=self.max_concurrency,
            keepalive_timeout=30,
            ssl=ssl_context(self.ca_pem),
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            headers={"User-Agent": "pushtask-worker"},
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _new_token(self) -> Token:
        assert self._session is not None and self.account is not None
        now = time.time()
        form = {"grant_type": GRANT_TYPE, "assertion": assertion(self.account, self.token_uri, now)}
        try:
            async with self._session.post(self.token_uri, data=form) as resp:
                body = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as error:
            raise TokenError(
                f"token endpoint: {type(error).__name__}: {error}", final=False
            ) from error
        if status != 200:
            try:
                doc = json.loads(body)
                why = f"{doc.get('error')}: {doc.get('error_description') or ''}".strip(": ")
            except (ValueError, AttributeError):
                why = body[:200].decode(errors="replace")
            # 400/401/403: the key or the account is refused; retrying will not change that.
            # A 429 or 5xx of the endpoint itself passes.
            final = status in (400, 401, 403)
            raise TokenError(f"token endpoint: HTTP {status} {why}"[:300], final=final)
        try:
            doc = json.loads(body)
            value, expires_in = str(doc["access_token"]), float(doc.get("expires_in", 3600))
        except (ValueError, KeyError, TypeError) as error:
            raise TokenError(f"token endpoint: unreadable answer ({error})", final=False) from None
        return Token(value, renew_at(now, expires_in))

    def body(self, delivery: Delivery, token: str) -> bytes:
        m = delivery.message
        notification = {k: str(m[k]) for k in ("title", "body") if m.get(k)}
        extra = m.get("extra")
        data: dict[str, Any] = dict(extra) if isinstance(extra, dict) else {}
        if m.get("link"):
            data["link"] = m["link"]
        data["idempotencyKey"] = delivery.idempotency_key
        if delivery.test:  # data values are strings in FCM
            data[TEST_FIELD] = "true"
        message: dict[str, Any] = {"token": token, "data": stringify(data)}
        if notification:
            message["notification"] = notification
        if self.android:
            message["android"] = self.android
        return orjson.dumps({"message": message})

    async def send(self, delivery: Delivery) -> Attempt:
        if self.problem is not None:
            return Attempt(Outcome.FINAL, f"fcm: {self.problem}"[:300])
        token = device_token(delivery.attrs, self.token_attribute)
        if token is None:
            return Attempt(Outcome.FINAL, f"no device token (attribute {self.token_attribute!r})")
        if self._session is None:
            await self.start()
        assert self._session is not None
        body = self.body(delivery, token)
        try:
            access = await self.tokens.get()
            status, answer, retry_after = await self._post(body, access)
            if needs_new_token(status, answer):
                access = await self.tokens.renew(access)
                status, answer, retry_after = await self._post(body, access)
                if needs_new_token(status, answer):
                    return Attempt(
                        Outcome.RETRY, "HTTP 401: refused a fresh access token", None, 401
                    )
        except TokenError as error:
            return Attempt(Outcome.FINAL if error.final else Outcome.RETRY, str(error)[:300])
        except TimeoutError:
            return Attempt(Outcome.RETRY, f"timeout after {self.timeout:g}s")
        except aiohttp.ClientError as error:
            return Attempt(Outcome.RETRY, f"{type(error).__name__}: {error}"[:300])
        return classify(status, answer, retry_after)

    async def _post(self, body: bytes, access: str) -> tuple[int, bytes, str | None]:
        assert self._session is not None
        headers = {"Authorization": f"Bearer {access}", "Content-Type": "application/json"}
        async with self._session.post(self.url, data=body, headers=headers) as resp:
            answer = await resp.read()
            return resp.status, answer, resp.headers.get("Retry-After")
