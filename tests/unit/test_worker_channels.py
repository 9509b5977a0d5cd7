"""The built-in channels against real local servers: the webhook sink and aiosmtpd."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from devstack.kubelet.server import self_signed
from pushtask.retryafter import parse_retry_after
from pushtask_worker.channels import ChannelContext, Delivery, Outcome, load_channel
from pushtask_worker.channels.smtp import SmtpChannel
from pushtask_worker.channels.webhook import WebhookChannel, classify
from tests.support.sink import SinkThread, free_port


def delivery(user: str = "u1", **kw: Any) -> Delivery:
    base: dict[str, Any] = dict(
        task={"namespace": "ns", "name": "promo", "uid": "abc"},
        run=2,
        run_id="ns.promo.2.abc",
        user=user,
        message={"title": "Hi", "body": "Body", "link": "https://x/y"},
        attrs={},
        idempotency_key="k-" + user.replace("@", "."),
    )
    base.update(kw)
    return Delivery(**base)


def test_entry_points_resolve_builtin_channels() -> None:
    assert load_channel("webhook") is WebhookChannel
    assert load_channel("smtp") is SmtpChannel
    with pytest.raises(LookupError, match="pigeon"):
        load_channel("pigeon")


def test_classify_statuses() -> None:
    assert classify(204).outcome is Outcome.OK
    assert classify(503).outcome is Outcome.RETRY
    assert classify(429, "7").retry_after == 7.0
    assert classify(400).outcome is Outcome.FINAL
    assert classify(404).outcome is Outcome.FINAL
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("soon") is None


def test_webhook_body_headers_and_signature() -> None:
    async def go(url: str) -> list[Any]:
        ch = WebhookChannel(
            ChannelContext(
                {"url": url, "timeoutSeconds": 5}, env={"PUSHTASK_WEBHOOK_SECRET": "s3cret"}
            )
        )
        async with ch:
            return [
                await ch.send(delivery("u1")),
                await ch.send(delivery("bad")),
                await ch.send(delivery("busy")),
            ]

    with SinkThread(secret="s3cret", keep_messages=True) as sink:
        sink.program({"bad": [{"status": 400}], "busy": [{"status": 429, "retryAfter": 3}]})
        ok, bad, busy = asyncio.run(go(sink.url))
        assert ok.outcome is Outcome.OK
        assert bad.outcome is Outcome.FINAL and bad.status == 400
        assert busy.outcome is Outcome.RETRY and busy.retry_after == 3.0
        rec = sink.requests[0]
        assert rec.user == "u1" and rec.key == "k-u1" and rec.signature_ok is True
        assert rec.message == {"title": "Hi", "body": "Body", "link": "https://x/y"}
        assert rec.run == 2 and rec.task == "ns/promo"
        assert sink.stats()["bad_signatures"] == 0


def test_webhook_signature_covers_timestamp_and_exact_body() -> None:
    from pushtask_worker.channels.webhook import encode_body, sign

    body = encode_body(delivery("u9"))
    assert json.loads(body)["user"] == "u9"
    expected = "sha256=" + hmac.new(b"k", b"1767225600." + body, hashlib.sha256).hexdigest()
    assert sign(b"k", "1767225600", body) == expected
    # The timestamp is bound to the body: moving it (a replay made to look fresh) breaks it.
    assert sign(b"k", "1767225601", body) != expected


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def signed_headers(secret: bytes, timestamp: int, body: bytes) -> dict[str, str]:
    from pushtask_worker.channels.webhook import sign

    return {
        "Content-Type": "application/json",
        "X-PushTask-Timestamp": str(timestamp),
        "X-PushTask-Signature": sign(secret, str(timestamp), body),
    }


def test_sink_refuses_a_stale_timestamp_so_a_replay_fails() -> None:
    from pushtask_worker.channels.webhook import encode_body

    body = encode_body(delivery("u1"))
    with SinkThread(secret="s3cret") as sink:
        sink.program({"u1": [{"status": 503}, {"status": 200}]})
        # Captured six minutes ago: correctly signed, but past the 5-minute window.
        old = int(time.time()) - 360
        status, text = post(sink.url, body, signed_headers(b"s3cret", old, body))
        assert status == 401 and "stale X-PushTask-Timestamp" in text
        # Moving the timestamp forward without the secret breaks the signature.
        forged = {**signed_headers(b"s3cret", old, body), "X-PushTask-Timestamp": str(old + 360)}
        assert post(sink.url, body, forged)[0] == 503  # answered, as programmed ...
        assert sink.requests[-1].signature_ok is False  # ... and recorded as forged
        status, _ = post(sink.url, body, {"Content-Type": "application/json"})
        assert status == 401 and sink.requests[-1].rejected == "missing X-PushTask-Timestamp"
        # Refusals did not consume the program: the next genuine request gets 200.
        fresh = int(time.time())
        assert post(sink.url, body, signed_headers(b"s3cret", fresh, body))[0] == 200
        assert sink.requests[-1].signature_ok is True and sink.requests[-1].rejected is None
        stats = sink.stats()
        assert stats["rejected"] == 2 and stats["bad_signatures"] == 2
        assert stats["delivered"] == 1
    # Without a secret the sink checks nothing (plain recorder, e.g. the benchmark).
    with SinkThread() as plain:
        assert post(plain.url, body, {"Content-Type": "application/json"})[0] == 200


def docs_verify() -> Callable[..., str]:
    """The verification snippet of docs/channels.md, as a reader would paste it."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "channels.md").read_text()
    (code,) = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "def verify" in b]
    scope: dict[str, Any] = {}
    exec(compile(code, "docs/channels.md", "exec"), scope)
    verify: Callable[..., str] = scope["verify"]
    return verify


def test_docs_verification_snippet_accepts_the_channel_and_refuses_replays() -> None:
    from pushtask_worker.channels.webhook import encode_body

    async def go(url: str) -> None:
        ctx = ChannelContext(
            {"url": url, "signature": "pushtask"}, env={"PUSHTASK_WEBHOOK_SECRET": "s3cret"}
        )
        async with WebhookChannel(ctx) as ch:
            assert (await ch.send(delivery("u7"))).outcome is Outcome.OK

    with SinkThread(secret="s3cret") as sink:
        asyncio.run(go(sink.url))
        (rec,) = sink.requests
    assert rec.timestamp is not None and rec.signature is not None
    headers = {"X-PushTask-Timestamp": rec.timestamp, "X-PushTask-Signature": rec.signature}
    body = encode_body(delivery("u7"))  # deterministic: the bytes the channel sent
    verify = docs_verify()
    assert verify(b"s3cret", headers, body) == ""
    assert verify(b"s3cret", headers, body, now=int(rec.timestamp) + 301) == "stale timestamp"
    assert verify(b"s3cret", headers, body.replace(b"u7", b"u8")) == "bad signature"
    assert verify(b"other", headers, body) == "bad signature"
    moved = {**headers, "X-PushTask-Timestamp": str(int(rec.timestamp) + 1)}
    assert verify(b"s3cret", moved, body) == "bad signature"
    assert verify(b"s3cret", {**headers, "X-PushTask-Signature": "sha256=é"}, body) != ""
    assert verify(b"s3cret", {}, body) == "bad signature"


def test_sink_max_age_is_configurable() -> None:
    from pushtask_worker.channels.webhook import encode_body

    body = encode_body(delivery("u1"))
    ten_ago = int(time.time()) - 10
    with SinkThread(secret="k", max_age=5) as strict:
        assert post(strict.url, body, signed_headers(b"k", ten_ago, body))[0] == 401
    with SinkThread(secret="k", max_age=0) as lax:
        assert post(lax.url, body, signed_headers(b"k", ten_ago, body))[0] == 200


def test_webhook_timeout_and_refused_connection_are_transient() -> None:
    async def go(url: str, seconds: float) -> Outcome:
        async with WebhookChannel(ChannelContext({"url": url, "timeoutSeconds": seconds})) as ch:
            return (await ch.send(delivery())).outcome

    with SinkThread() as sink:
        sink.program(default=[{"status": 200, "delay": 2}])
        assert asyncio.run(go(sink.url, 0.2)) is Outcome.RETRY
    assert asyncio.run(go(f"http://127.0.0.1:{free_port()}/hook", 1)) is Outcome.RETRY


class Recorder:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.sessions = 0

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        self.sessions += 1
        session.host_name = hostname
        return responses

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if address.startswith("reject"):
            return "550 no such user"
        if address.startswith("later"):
            return "451 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 Message accepted"


def test_smtp_reuses_one_connection_and_classifies_codes() -> None:
    rec = Recorder()
    port = free_port()
    ctl = Controller(rec, hostname="127.0.0.1", port=port)
    ctl.start()
    try:

        async def go() -> list[Any]:
            ch = SmtpChannel(
                ChannelContext(
                    {"host": "127.0.0.1", "port": port, "starttls": False, "from": "p@x.test"}
                )
            )
            async with ch:
                out = [await ch.send(delivery(f"u{i}@x.test")) for i in range(5)]
                out.append(await ch.send(delivery("u", attrs={"email": "reject@x.test"})))
                out.append(await ch.send(delivery("later@x.test")))
                out.append(await ch.send(delivery("no-address")))
                return out

        results = asyncio.run(go())
    finally:
        ctl.stop()
    assert [r.outcome for r in results[:5]] == [Outcome.OK] * 5
    assert results[5].outcome is Outcome.FINAL and results[5].status == 550
    assert results[6].outcome is Outcome.RETRY and results[6].status == 451
    assert results[7].outcome is Outcome.FINAL
    assert rec.sessions == 1  # one connection for every message
    assert len(rec.messages) == 5
    mail = message_from_bytes(rec.messages[0][2])
    assert mail["Subject"] == "Hi"
    assert mail["Message-ID"] == "<k-u0.x.test@pushtask>"
    assert "https://x/y" in mail.get_payload()


def server_tls(tmp_path: Path) -> ssl.SSLContext:
    """A server TLS context for 127.0.0.1 with a throwaway self-signed certificate."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    self_signed(cert, key, "127.0.0.1", "smtp")  # the devstack kubelet's own helper
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


def test_smtp_starttls_and_login(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default settings: STARTTLS before anything else, then AUTH with the credentials
    the operator maps from the Secret into the environment."""
    rec = Recorder()
    port = free_port()
    logins: list[tuple[bytes, bytes]] = []

    def authenticator(
        server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        logins.append((data.login, data.password))
        return AuthResult(success=data.password == b"s3cret")

    ctl = Controller(
        rec,
        hostname="127.0.0.1",
        port=port,
        tls_context=server_tls(tmp_path),
        require_starttls=True,  # MAIL before STARTTLS is refused
        authenticator=authenticator,
        auth_required=True,
    )
    ctl.start()
    monkeypatch.setenv("PUSHTASK_SMTP_USERNAME", "mailer")
    monkeypatch.setenv("PUSHTASK_SMTP_PASSWORD", "s3cret")
    monkeypatch.setenv("PUSHTASK_SMTP_CA_BUNDLE", (tmp_path / "cert.pem").read_text())
    try:

        async def go() -> list[Any]:
            # The server's self-signed certificate is trusted as a caSecretRef would be.
            settings = {"host": "127.0.0.1", "port": port, "from": "p@x.test"}
            ch = SmtpChannel(ChannelContext(settings))
            assert ch.starttls  # the default
            async with ch:
                return [await ch.send(delivery(f"u{i}@x.test")) for i in range(3)]

        results = asyncio.run(go())
    finally:
        ctl.stop()
    assert [r.outcome for r in results] == [Outcome.OK] * 3, results
    assert logins == [(b"mailer", b"s3cret")]  # one login, one connection
    assert len(rec.messages) == 3
