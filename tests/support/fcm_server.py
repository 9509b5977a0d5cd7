"""A local FCM: Google's OAuth2 token endpoint and the FCM HTTP v1 send API, as they answer.

The token endpoint takes a JWT bearer assertion (RFC 7523), verifies its RS256 signature
with the service account's public key and its claims (iss, aud, scope, iat/exp, kid) and
issues an access token that expires after ``expires_in`` seconds. The send endpoint
refuses a missing, unknown, expired or revoked access token with 401 UNAUTHENTICATED, and
answers per device token as FCM documents its errors (``google.rpc.Status`` with an
``FcmError`` detail), by the token's prefix:

    unreg-...     404 NOT_FOUND / UNREGISTERED
    invalid-...   400 INVALID_ARGUMENT / INVALID_ARGUMENT
    throttle-...  429 RESOURCE_EXHAUSTED / QUOTA_EXCEEDED with Retry-After the first time,
                  then 200
    unavail-...   503 UNAVAILABLE the first time, then 200
    anything else 200 {"name": "projects/<p>/messages/<id>"}

In-process (pytest, the bench)::

    account = ServiceAccountKey.make("my-proj")
    with FcmServerThread(account) as fcm:
        fcm.token_uri, fcm.endpoint, account.json(fcm.token_uri), fcm.delivered ...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.keys import pem_pair
from tests.support.ownloop import OwnLoop
from tests.support.readyfile import announce
from tests.support.sink import free_port

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"


@dataclass(frozen=True)
class ServiceAccountKey:
    """A service account as Google's console hands it out: a fresh RSA key pair."""

    project_id: str
    client_email: str
    private_key_id: str
    private_pem: str
    public_pem: str

    @classmethod
    def make(cls, project_id: str = "pushtask-test") -> ServiceAccountKey:
        private, public = pem_pair(rsa.generate_private_key(public_exponent=65537, key_size=2048))
        return cls(
            project_id,
            f"pushtask@{project_id}.iam.gserviceaccount.com",
            secrets.token_hex(20),
            private,
            public,
        )

    def json(self, token_uri: str) -> str:
        """The JSON key file (the content of the Secret's service-account.json)."""
        return json.dumps(
            {
                "type": "service_account",
                "project_id": self.project_id,
                "private_key_id": self.private_key_id,
                "private_key": self.private_pem,
                "client_email": self.client_email,
                "client_id": "1234567890",
                "auth_uri": "https://accounts.google.com/o/oauth2/auth",
                "token_uri": token_uri,
            }
        )


@dataclass
class Delivered:
    token: str
    key: str | None  # data.idempotencyKey
    message: dict[str, Any]
    t: float


@dataclass
class FcmServer:
    account: ServiceAccountKey
    host: str = "127.0.0.1"
    port: int = 0
    expires_in: int = 3600
    retry_after: str = "1"
    delivered: list[Delivered] = field(default_factory=list)
    attempts: Counter[str] = field(default_factory=Counter)  # per device token
    answers: Counter[int] = field(default_factory=Counter)  # per HTTP status
    token_requests: int = 0
    bad_assertions: list[str] = field(default_factory=list)
    unauthenticated: int = 0  # sends refused with 401
    connections: set[tuple[str, int]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.port = self.port or free_port(self.host)
        self._tokens: dict[str, float] = {}  # access token → expiry (time.time())
        self._runner: web.AppRunner | None = None
        self.app = web.Application()
        self.app.router.add_post("/token", self._token)
        self.app.router.add_post("/v1/projects/{project}/messages:send", self._send)
        self.app.router.add_get("/_stats", self._stats)

    @property
    def token_uri(self) -> str:
        return f"http://{self.host}:{self.port}/token"

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def revoke_tokens(self) -> None:
        """Every access token issued so far is refused from now on (401)."""
        self._tokens.clear()

    def delivered_counts(self) -> Counter[str]:
        return Counter(d.token for d in self.delivered)

    def stats(self) -> dict[str, Any]:
        counts = self.delivered_counts()
        return {
            "delivered": len(self.delivered),
            "delivered_tokens": len(counts),
            "duplicates": sum(n - 1 for n in counts.values() if n > 1),
            "connections": len(self.connections),
            "token_requests": self.token_requests,
            "bad_assertions": len(self.bad_assertions),
            "unauthenticated": self.unauthenticated,
        }

    async def _stats(self, _: web.Request) -> web.Response:
        return web.json_response(self.stats())

    # -- the token endpoint ------------------------------------------------------------
    def check_assertion(self, assertion: str) -> str | None:
        """Why Google would refuse `assertion` (None: it is good)."""
        try:
            header = jwt.get_unverified_header(assertion)
            claims = jwt.decode(
                assertion,
                self.account.public_pem,
                algorithms=["RS256"],
                audience=self.token_uri,
                issuer=self.account.client_email,
                options={"require": ["iss", "aud", "iat", "exp", "scope"]},
                leeway=60,
            )
        except jwt.PyJWTError as error:
            return f"{type(error).__name__}: {error}"
        if header.get("kid") != self.account.private_key_id:
            return f"unknown kid {header.get('kid')!r}"
        if SCOPE not in str(claims["scope"]).split():
            return f"scope {claims['scope']!r} lacks {SCOPE}"
        if int(claims["exp"]) - int(claims["iat"]) > 3600:
            return "assertion valid for more than an hour"
        if abs(int(claims["iat"]) - time.time()) > 300:
            return "iat too far from now"
        return None

    async def _token(self, request: web.Request) -> web.Response:
        self.token_requests += 1
        form = await request.post()
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return web.json_response(
                {"error": "unsupported_grant_type", "error_description": "Invalid grant_type"},
                status=400,
            )
        why = self.check_assertion(str(form.get("assertion") or ""))
        if why is not None:
            self.bad_assertions.append(why)
            return web.json_response(
                {"error": "invalid_grant", "error_description": why}, status=400
            )
        access = "ya29." + secrets.token_urlsafe(24)
        self._tokens[access] = time.time() + self.expires_in
        return web.json_response(
            {"access_token": access, "expires_in": self.expires_in, "token_type": "Bearer"}
        )

    # -- the send API ------------------------------------------------------------------
    @staticmethod
    def error(status: int, rpc: str, message: str, code: str | None = None) -> dict[str, Any]:
        details = [{"@type": FCM_ERROR_TYPE, "errorCode": code}] if code else []
        return {"error": {"code": status, "message": message, "status": rpc, "details": details}}

    async def _send(self, request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer:
            self.connections.add((str(peer[0]), int(peer[1])))
        auth = request.headers.get("Authorization", "")
        access = auth.removeprefix("Bearer ")
        expiry = self._tokens.get(access) if auth.startswith("Bearer ") else None
        if expiry is None or expiry < time.time():
            self.unauthenticated += 1
            self.answers[401] += 1
            return web.json_response(
                self.error(
                    401,
                    "UNAUTHENTICATED",
                    "Request had invalid authentication credentials. Expected OAuth 2 access "
                    "token, login cookie or other valid authentication credential.",
                ),
                status=401,
            )
        if request.match_info["project"] != self.account.project_id:
            self.answers[403] += 1
            return web.json_response(
                self.error(403, "PERMISSION_DENIED", "wrong project", "SENDER_ID_MISMATCH"),
                status=403,
            )
        try:
            message = (await request.json())["message"]
            token = str(message["token"])
        except (ValueError, KeyError, TypeError):
            self.answers[400] += 1
            return web.json_response(
                self.error(400, "INVALID_ARGUMENT", "bad message", "INVALID_ARGUMENT"), status=400
            )
        self.attempts[token] += 1
        first = self.attempts[token] == 1
        status, body, headers = 200, None, {}
        if token.startswith("unreg-"):
            status = 404
            body = self.error(404, "NOT_FOUND", "Requested entity was not found.", "UNREGISTERED")
        elif token.startswith("invalid-"):
            status = 400
            body = self.error(
                400,
                "INVALID_ARGUMENT",
                "The registration token is not a valid FCM registration token",
                "INVALID_ARGUMENT",
            )
        elif token.startswith("throttle-") and first:
            status, headers = 429, {"Retry-After": self.retry_after}
            body = self.error(
                429,
                "RESOURCE_EXHAUSTED",
                "Quota exceeded for quota metric 'Send requests'",
                "QUOTA_EXCEEDED",
            )
        elif token.startswith("unavail-") and first:
            status = 503
            body = self.error(503, "UNAVAILABLE", "The service is unavailable.", "UNAVAILABLE")
        self.answers[status] += 1
        if status == 200:
            data = message.get("data") or {}
            self.delivered.append(
                Delivered(token, data.get("idempotencyKey"), message, time.time())
            )
            body = {"name": f"projects/{self.account.project_id}/messages/{len(self.delivered)}"}
        return web.json_response(body, status=status, headers=headers)

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=1024, reuse_address=True)
        await site.start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def main(argv: list[str] | None = None) -> int:
    """As a process (the bench): a new service account; its JSON key file, the endpoint and
    the token URI go to --ready-file once listening. GET /_stats gives the counters."""
    p = argparse.ArgumentParser(description="a local FCM HTTP v1 server and token endpoint")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--project", default="pushtask-bench")
    p.add_argument("--ready-file", required=True)
    args = p.parse_args(argv)
    account = ServiceAccountKey.make(args.project)

    async def serve() -> None:
        server = FcmServer(account, args.host, args.port)
        await server.start()
        ready = {
            "endpoint": server.endpoint,
            "token_uri": server.token_uri,
            "service_account": account.json(server.token_uri),
        }
        await asyncio.to_thread(announce, args.ready_file, json.dumps(ready))
        try:
            await asyncio.Event().wait()
        finally:
            await server.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
    return 0


class FcmServerThread(OwnLoop, FcmServer):
    """An FcmServer on its own event loop in a daemon thread, for synchronous tests."""

    thread_name = "fcm"


if __name__ == "__main__":
    raise SystemExit(main())
