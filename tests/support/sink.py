"""A local webhook sink: records every request and answers as programmed.

Each request is recorded with its user, idempotency key, signature (and whether it
verifies against ``secret``), attempt header, arrival time and the status answered.
Answers are programmed per user: a list of responses consumed in order (the last one
repeats), e.g. 503 then 200, a final 400, or 429 with ``Retry-After``.

With a ``secret`` the sink checks requests as a careful receiver does (docs/channels.md).
A request with Standard Webhooks headers (``webhook-id``, ``webhook-timestamp``,
``webhook-signature``) is verified by the ``standardwebhooks`` package exactly as a
receiver calls it, ``Webhook(secret).verify(body, headers)`` (a ``whsec_`` secret as text,
any other as its bytes: the raw key); one without them by the pushtask scheme, the
HMAC-SHA256 of ``<X-PushTask-Timestamp>.<raw body>``. ``secret`` may be a list (receivers
on either side of a key rotation): then a standard request verifies only if it verifies
against each of them (the pushtask scheme, one signature, is checked against the first).
A bad signature is recorded (``signature_ok`` False, counted in
``stats()``) and answered as programmed, so tests can count them; a timestamp missing,
unreadable or more than ``max_age`` seconds away from the sink's clock (0: no check) is
refused with 401 and a body saying why, before the program is consulted: that is what
stops a replay. (The package also refuses a timestamp more than 5 minutes away: such a
request's signature is recorded as not verified.)

In-process (pytest)::

    with SinkThread(secret="s3cret") as sink:        # binds 127.0.0.1 on a free port
        sink.program({"u1": [{"status": 503}, {"status": 200}]})
        ... sink.url ... sink.requests ... sink.stats()

As a process (the operator's e2e tests, the benchmark)::

    python -m tests.support.sink --host 127.0.0.2 --port 8099 --secret s3cret \
        --max-age 300 --record /tmp/sink.jsonl       # --secret twice: a key rotation
    # control API: GET /_sink/stats, GET /_sink/requests, POST /_sink/program,
    #              POST /_sink/reset, GET /_sink/health

Program document (POST /_sink/program, or ``sink.program(...)``)::

    {"users": {"u1": [{"status": 503}, {"status": 200}]},
     "default": [{"status": 200}],             # for users without an entry
     "prefixes": {"bad-": [{"status": 400}]},  # users starting with a prefix
     "then": {"after": 100, "answers": [{"status": 410}]},  # from the 101st answer on
     "delay": 0.0}                              # seconds before answering every request
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import socket
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from aiohttp import web
from standardwebhooks import Webhook, WebhookVerificationError

from tests.support.ownloop import OwnLoop
from tests.support.readyfile import announce

# A receiver's usual replay window (Stripe's and Slack's is 5 minutes): wide enough for
# clock skew between hosts, narrow enough that a captured request soon stops working.
DEFAULT_MAX_AGE = 300.0
STALE_STATUS = 401
STANDARD_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")

Response = dict[str, Any]  # {"status": int, "retryAfter": str|number, "body": str, "delay": s}


@dataclass
class Record:
    t: float  # time.time() at arrival
    user: str | None
    key: str | None  # Idempotency-Key (webhook-id without it)
    signature: str | None  # webhook-signature or X-PushTask-Signature
    signature_ok: bool | None  # None when the sink has no secret
    attempt: int | None
    status: int  # what the sink answered
    timestamp: str | None  # webhook-timestamp or X-PushTask-Timestamp
    path: str
    run: int | None = None
    task: str | None = None
    message: Any = None
    rejected: str | None = None  # why the sink refused it before its program (stale, ...)
    scheme: str | None = None  # "standard" (webhook-* headers) or "pushtask"
    verify_error: str | None = None  # what the standardwebhooks package said, if it refused
    # A test send (`kubectl push test`): the PushTask-Test header, and `"test": true` in
    # the body; True only when both say so.
    test: bool = False
    # The whole JSON body of a request that is not a recipient's (no "user"): the
    # operator's completion notifications (spec.notify).
    notification: Any = None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Sink:
    """The aiohttp application and its recordings (run it with start/stop on a loop)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        secret: str | Sequence[str] | None = None,
        record_file: str | None = None,
        keep_messages: bool = False,
        max_age: float = DEFAULT_MAX_AGE,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        secrets = [secret] if isinstance(secret, str) else list(secret or ())
        self.secrets = [x for x in secrets if x]
        # The pushtask scheme has one signature: checked against the first secret.
        self.secret = self.secrets[0].encode() if self.secrets else None
        # A receiver's verifier per secret: whsec_ text, or a raw secret's bytes.
        self.verifiers = [
            Webhook(x if x.startswith("whsec_") else x.encode()) for x in self.secrets
        ]
        self.max_age = max_age
        self.keep_messages = keep_messages
        self.requests: list[Record] = []
        self._program: dict[str, Any] = {"users": {}, "default": [{"status": 200}], "prefixes": {}}
        self._served: Counter[str] = Counter()  # per user: how many answers given
        self._answered = 0  # programmed answers given, for the program's "then"
        # Line-buffered: a reader of the file sees every request answered so far.
        self._record_fh: IO[str] | None = (
            open(record_file, "a", buffering=1) if record_file else None
        )
        self._runner: web.AppRunner | None = None
        self.app = web.Application(client_max_size=4 * 1024 * 1024)
        self.app.router.add_get("/_sink/health", self._health)
        self.app.router.add_get("/_sink/stats", self._stats)
        self.app.router.add_get("/_sink/requests", self._requests)
        self.app.router.add_post("/_sink/program", self._set_program)
        self.app.router.add_post("/_sink/reset", self._reset)
        self.app.router.add_route("POST", "/{tail:.*}", self._hook)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/hook"

    # -- programming ---------------------------------------------------------------
    def program(self, users: Mapping[str, list[Response]] | None = None, **doc: Any) -> None:
        """Set the answers: ``program({"u1": [...]})`` or ``program(users=..., default=...)``."""
        new = {"users": {}, "default": [{"status": 200}], "prefixes": {}, "delay": 0.0}
        new.update(doc)
        if users is not None:
            new["users"] = dict(users)
        self._program = new

    def reset(self) -> None:
        self.requests.clear()
        self._served.clear()
        self._answered = 0

    def _answer_for(self, user: str | None) -> Response:
        prog = self._program
        seq: list[Response] | None = None
        if user is not None:
            seq = prog["users"].get(user)
            if seq is None:
                for prefix, s in prog.get("prefixes", {}).items():
                    if user.startswith(prefix):
                        seq = s
                        break
        if seq is None:
            seq = prog.get("default") or [{"status": 200}]
        then = prog.get("then")
        self._answered += 1
        if then and self._answered > int(then["after"]):
            # The endpoint changed for everyone (e.g. deleted: 410): counted afresh per user.
            seq = then["answers"]
            user = f"then:{user}"
        n = self._served[user or ""]
        self._served[user or ""] += 1
        return seq[min(n, len(seq) - 1)]

    # -- checks ----------------------------------------------------------------------
    def expected_signature(self, timestamp: str, body: bytes) -> str | None:
        if self.secret is None:
            return None
        payload = timestamp.encode() + b"." + body
        return "sha256=" + hmac.new(self.secret, payload, hashlib.sha256).hexdigest()

    def verify_standard(self, body: bytes, headers: Mapping[str, str]) -> str | None:
        """Why the Standard Webhooks package refuses the request with one of the sink's
        secrets (None: it verifies with every one)."""
        for i, verifier in enumerate(self.verifiers):
            try:
                verifier.verify(body, dict(headers), json_parse=False)
            except WebhookVerificationError as error:
                return f"secret {i}: {error}"
        return None

    def stale(
        self, timestamp: str | None, now: float, header: str = "X-PushTask-Timestamp"
    ) -> str | None:
        """Why ``timestamp`` is refused (None: fresh enough, or the sink does not check)."""
        if self.secret is None or self.max_age <= 0:
            return None
        if not timestamp:
            return f"missing {header}"
        try:
            sent = int(timestamp)
        except ValueError:
            return f"unreadable {header} {timestamp[:40]!r}"
        age = now - sent
        if abs(age) > self.max_age:
            return (
                f"stale {header} {sent}: {age:+.0f}s from the receiver's clock,"
                f" more than {self.max_age:g}s (a replay, or clocks apart)"
            )
        return None

    # -- handlers ------------------------------------------------------------------
    async def _hook(self, request: web.Request) -> web.Response:
        t = time.time()
        body = await request.read()
        user: str | None = None
        run = task = message = notification = None
        marked = False
        with contextlib.suppress(ValueError, AttributeError):
            doc = json.loads(body)
            user = doc.get("user")
            marked = doc.get("test") is True
            notification = None if "user" in doc else doc
            run = doc.get("run")
            task = f"{doc['task']['namespace']}/{doc['task']['name']}"
            message = doc.get("message") if self.keep_messages else None
        standard = any(h in request.headers for h in STANDARD_HEADERS)
        sig_ok: bool | None = None
        verify_error: str | None = None
        if standard:
            sig = request.headers.get("webhook-signature")
            time_header = "webhook-timestamp"
            timestamp = request.headers.get(time_header)
            if self.verifiers:
                verify_error = self.verify_standard(body, request.headers)
                sig_ok = verify_error is None
        else:
            sig = request.headers.get("X-PushTask-Signature")
            time_header = "X-PushTask-Timestamp"
            timestamp = request.headers.get(time_header)
            expected = self.expected_signature(timestamp or "", body)
            if expected is not None:
                sig_ok = sig is not None and hmac.compare_digest(sig, expected)
        rejected = self.stale(timestamp, t, time_header)
        if rejected is not None:
            # Refused before the program: a replay must not consume a programmed answer.
            answer: Response = {"status": STALE_STATUS, "body": rejected}
        else:
            answer = self._answer_for(user)
        delay = float(answer.get("delay", self._program.get("delay", 0.0)) or 0.0)
        status = int(answer.get("status", 200))
        attempt = request.headers.get("X-PushTask-Attempt")
        rec = Record(
            t=t,
            user=user,
            key=request.headers.get("Idempotency-Key") or request.headers.get("webhook-id"),
            signature=sig,
            signature_ok=sig_ok,
            attempt=int(attempt) if attempt and attempt.isdigit() else None,
            status=status,
            timestamp=timestamp,
            path=request.path,
            run=run,
            task=task,
            message=message,
            rejected=rejected,
            scheme="standard" if standard else ("pushtask" if timestamp or sig else None),
            verify_error=verify_error,
            test=marked and request.headers.get("PushTask-Test") == "true",
            notification=notification,
        )
        self.requests.append(rec)
        if self._record_fh is not None:
            self._record_fh.write(json.dumps(asdict(rec)) + "\n")
        if delay > 0:
            await asyncio.sleep(delay)
        headers = {}
        if "retryAfter" in answer:
            headers["Retry-After"] = str(answer["retryAfter"])
        return web.Response(status=status, text=str(answer.get("body", "")), headers=headers)

    async def _health(self, _: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def _stats(self, _: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _requests(self, request: web.Request) -> web.Response:
        since = int(request.query.get("since", "0"))
        return web.json_response([asdict(r) for r in self.requests[since:]])

    async def _set_program(self, request: web.Request) -> web.Response:
        doc = await request.json()
        self.program(**doc)
        return web.json_response({"ok": True})

    async def _reset(self, _: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})

    # -- summaries -----------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        reqs = list(self.requests)
        ok_users = Counter(r.user for r in reqs if 200 <= r.status < 300)
        keys: dict[str | None, set[str | None]] = defaultdict(set)
        for r in reqs:
            keys[r.user].add(r.key)
        return {
            "requests": len(reqs),
            "users": len({r.user for r in reqs}),
            "delivered": sum(ok_users.values()),
            "delivered_users": len(ok_users),
            "duplicates": sum(c - 1 for c in ok_users.values() if c > 1),
            "users_with_several_keys": sum(1 for ks in keys.values() if len(ks) > 1),
            "bad_signatures": sum(1 for r in reqs if r.signature_ok is False),
            "rejected": sum(1 for r in reqs if r.rejected is not None),
            "schemes": dict(Counter(r.scheme for r in reqs if r.scheme is not None)),
            "first": reqs[0].t if reqs else None,
            "last": reqs[-1].t if reqs else None,
        }

    def delivered_counts(self) -> Counter[str | None]:
        return Counter(r.user for r in self.requests if 200 <= r.status < 300)

    def by_user(self) -> dict[str | None, list[Record]]:
        out: dict[str | None, list[Record]] = defaultdict(list)
        for r in self.requests:
            out[r.user].append(r)
        return out

    # -- lifecycle -----------------------------------------------------------------
    async def start(self) -> None:
        # access_log off: at thousands of requests a second logging is the bottleneck.
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=1024, reuse_address=True)
        await site.start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._record_fh is not None:
            self._record_fh.close()
            self._record_fh = None


class SinkThread(OwnLoop, Sink):
    """A Sink on its own event loop in a daemon thread, for synchronous tests."""

    thread_name = "sink"


@contextlib.contextmanager
def running_sink(**kwargs: Any) -> Iterator[SinkThread]:
    with SinkThread(**kwargs) as sink:
        yield sink


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="PushTask test webhook sink")
    p.add_argument("--host", default="127.0.0.1", help="a loopback IP to bind")
    p.add_argument("--port", type=int, default=0, help="0 = a free port (printed)")
    p.add_argument(
        "--secret",
        action="append",
        default=None,
        help="signing secret to verify signatures (twice: both sides of a key rotation)",
    )
    p.add_argument(
        "--max-age",
        type=float,
        default=DEFAULT_MAX_AGE,
        help="with --secret: refuse (401) a timestamp further than this from now; 0 = off",
    )
    p.add_argument("--record", default=None, help="append every request as JSON Lines")
    p.add_argument("--program", default=None, help="a JSON program file (see module doc)")
    p.add_argument("--ready-file", default=None, help="write the URL here once listening")
    args = p.parse_args(argv)

    program = json.loads(Path(args.program).read_text()) if args.program else None

    async def serve() -> None:
        sink = Sink(
            args.host,
            args.port,
            secret=args.secret,
            record_file=args.record,
            max_age=args.max_age,
        )
        if program is not None:
            sink.program(**program)
        await sink.start()
        print(sink.url, flush=True)
        if args.ready_file:
            await asyncio.to_thread(announce, args.ready_file, sink.url)
        try:
            await asyncio.Event().wait()
        finally:
            await sink.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
