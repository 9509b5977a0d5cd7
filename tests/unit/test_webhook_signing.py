"""Standard Webhooks signing of the webhook channel, checked by the `standardwebhooks`
package as a receiver uses it; key rotation; the secret's forms; 410 Gone."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from standardwebhooks import Webhook, WebhookVerificationError

from pushtask.models import PushTaskSpec
from pushtask.models import Webhook as WebhookSettings
from pushtask.templates import compile_message
from pushtask_operator.deployment import secret_key_refs
from pushtask_worker.channels import Attempt, Channel, ChannelContext, Delivery, Outcome
from pushtask_worker.channels.webhook import (
    WebhookChannel,
    classify,
    encode_body,
    signing_key,
    standard_signature,
)
from pushtask_worker.ratelimit import TokenBucket
from pushtask_worker.sending import Sender
from tests.support.sink import Record, SinkThread
from tests.support.workers import spec_for

NEW = "whsec_" + base64.b64encode(b"the new key, thirty-two bytes!!!").decode()
OLD = "whsec_" + base64.b64encode(b"the old key, thirty-two bytes!!!").decode()


def delivery(user: str = "u1", **kw: Any) -> Delivery:
    base: dict[str, Any] = dict(
        task={"namespace": "ns", "name": "promo", "uid": "abc"},
        run=2,
        run_id="ns.promo.2.abc",
        user=user,
        message={"title": "Hi", "body": "Body"},
        attrs={},
        idempotency_key=hashlib.sha256(f"abc:2:{user}".encode()).hexdigest(),
    )
    base.update(kw)
    return Delivery(**base)


def send_all(settings: dict[str, Any], env: dict[str, str], users: list[str]) -> list[Attempt]:
    async def go() -> list[Attempt]:
        async with WebhookChannel(ChannelContext(settings, env=env)) as ch:
            return [await ch.send(delivery(u)) for u in users]

    return asyncio.run(go())


def headers_of(rec: Record) -> dict[str, str]:
    """The three Standard Webhooks headers of a recorded request, as a receiver has them."""
    assert rec.key and rec.timestamp and rec.signature
    return {
        "webhook-id": rec.key,
        "webhook-timestamp": rec.timestamp,
        "webhook-signature": rec.signature,
    }


def test_the_standard_scheme_is_the_default_and_the_package_verifies_it() -> None:
    with SinkThread(secret=NEW) as sink:
        results = send_all({"url": sink.url}, {"PUSHTASK_WEBHOOK_SECRET": NEW}, ["u1", "u2"])
        assert [r.outcome for r in results] == [Outcome.OK, Outcome.OK]
        recs = list(sink.requests)
    assert all(r.scheme == "standard" and r.signature_ok for r in recs)
    rec = recs[0]
    # webhook-id is the idempotency key; the timestamp is the attempt's, in unix seconds.
    assert rec.key == delivery("u1").idempotency_key
    assert abs(int(rec.timestamp or 0) - time.time()) < 5
    assert re.fullmatch(r"v1,[A-Za-z0-9+/]{43}=", rec.signature or "")
    body = encode_body(delivery("u1"))  # deterministic: the bytes the channel sent
    # As a receiver calls it: the whsec_ text, the raw body, the headers.
    assert Webhook(NEW).verify(body, headers_of(rec)) == {
        "task": {"namespace": "ns", "name": "promo"},
        "run": 2,
        "user": "u1",
        "message": {"title": "Hi", "body": "Body"},
    }
    with pytest.raises(WebhookVerificationError):
        Webhook(OLD).verify(body, headers_of(rec))
    with pytest.raises(WebhookVerificationError):  # the body is bound to the signature
        Webhook(NEW).verify(body.replace(b"u1", b"u3"), headers_of(rec))
    with pytest.raises(WebhookVerificationError):  # so is the id
        Webhook(NEW).verify(body, {**headers_of(rec), "webhook-id": recs[1].key or ""})


def test_signature_is_hmac_sha256_of_id_timestamp_and_body_under_the_decoded_key() -> None:
    key = b"0123456789abcdef0123456789abcdef"
    body = b'{"user":"u1"}'
    expected = base64.b64encode(
        hmac.new(key, b"msg_1.1767225600." + body, hashlib.sha256).digest()
    ).decode()
    assert standard_signature([key], "msg_1", "1767225600", body) == "v1," + expected
    whsec = "whsec_" + base64.b64encode(key).decode()
    assert signing_key(whsec) == key
    assert signing_key(whsec + "\n") == key  # a Secret made with --from-file
    assert signing_key(whsec.rstrip("=")) == key  # unpadded base64, as the libraries read it
    # Any other value is a raw key: its own bytes, as the pushtask scheme always used it.
    assert signing_key("s3cret") == b"s3cret"
    # The package agrees (a raw key is given to it as bytes).
    stamp = 1767225600
    lib = Webhook(whsec).sign("msg_1", _utc(stamp), body)
    assert lib == standard_signature([signing_key(whsec)], "msg_1", str(stamp), body)
    raw = Webhook(b"s3cret").sign("msg_1", _utc(stamp), body)
    assert raw == standard_signature([signing_key("s3cret")], "msg_1", str(stamp), body)


def _utc(seconds: int) -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(seconds, UTC)


@pytest.mark.parametrize("value", ["whsec_", "whsec_not base64!", "whsec_@@@@"])
def test_a_malformed_whsec_secret_is_refused_naming_the_secret_not_its_value(
    value: str,
) -> None:
    settings = {"url": "http://127.0.0.1:9/hook", "secretRef": {"name": "push", "key": "hmac"}}
    with pytest.raises(ValueError, match=r"Secret 'push' key 'hmac'.*whsec_") as caught:
        WebhookChannel(ChannelContext(settings, env={"PUSHTASK_WEBHOOK_SECRET": value}))
    if secret := value.removeprefix("whsec_"):
        assert secret not in str(caught.value)


def test_a_raw_secret_signs_with_its_bytes_under_both_schemes() -> None:
    with SinkThread(secret="s3cret") as sink:
        env = {"PUSHTASK_WEBHOOK_SECRET": "s3cret"}
        send_all({"url": sink.url}, env, ["u1"])
        send_all({"url": sink.url, "signature": "pushtask"}, env, ["u2"])
        standard, legacy = sink.requests
    assert standard.scheme == "standard" and standard.signature_ok is True
    body = encode_body(delivery("u1"))
    Webhook(b"s3cret").verify(body, headers_of(standard))
    # signature: pushtask keeps the earlier headers (and sends no webhook-* header).
    assert legacy.scheme == "pushtask" and legacy.signature_ok is True
    assert (legacy.signature or "").startswith("sha256=")


def test_key_rotation_sends_two_signatures_each_verifies_on_its_own() -> None:
    env = {"PUSHTASK_WEBHOOK_SECRET": NEW, "PUSHTASK_WEBHOOK_SECRET_PREVIOUS": OLD}
    ref = {"name": "push", "key": "next", "previousKey": "current"}
    # The sink holds both secrets: each request must verify against each.
    with SinkThread(secret=[OLD, NEW]) as sink:
        results = send_all({"url": sink.url, "secretRef": ref}, env, ["u1", "u2", "u3"])
        assert all(r.outcome is Outcome.OK for r in results)
        recs = list(sink.requests)
        assert sink.stats()["bad_signatures"] == 0
    for rec in recs:
        assert rec.signature_ok is True and rec.verify_error is None
        first, second = (rec.signature or "").split(" ")
        assert first.startswith("v1,") and second.startswith("v1,") and first != second
    body = encode_body(delivery("u1"))
    # A receiver not moved yet, and one already moved, each with the package alone.
    Webhook(OLD).verify(body, headers_of(recs[0]))
    Webhook(NEW).verify(body, headers_of(recs[0]))
    other = "whsec_" + base64.b64encode(b"x" * 32).decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(body, headers_of(recs[0]))
    # A sink holding a secret the sender does not sign with sees every request as bad.
    with SinkThread(secret=[NEW, other]) as strict:
        send_all({"url": strict.url, "secretRef": ref}, env, ["u1"])
        (rec,) = strict.requests
        assert rec.signature_ok is False and "secret 1" in (rec.verify_error or "")
        assert strict.stats()["bad_signatures"] == 1


def test_rotation_settings_reach_the_workers_and_need_the_standard_scheme() -> None:
    spec = {
        "message": {
            "channel": "webhook",
            "webhook": {
                "url": "http://x",
                "secretRef": {"name": "push", "key": "next", "previousKey": "current"},
            },
        }
    }
    refs = [(r.env, r.secret, r.key, r.field) for r in secret_key_refs(spec)]
    assert refs == [
        ("PUSHTASK_WEBHOOK_SECRET", "push", "next", "spec.message.webhook.secretRef"),
        (
            "PUSHTASK_WEBHOOK_SECRET_PREVIOUS",
            "push",
            "current",
            "spec.message.webhook.secretRef.previousKey",
        ),
    ]
    assert WebhookSettings.model_validate({"url": "http://x"}).signature == "standard"
    with pytest.raises(ValidationError, match="needs signature: standard"):
        WebhookSettings.model_validate(
            {
                "url": "http://x",
                "signature": "pushtask",
                "secretRef": {"name": "push", "previousKey": "old"},
            }
        )
    with pytest.raises(ValidationError, match="another key"):
        WebhookSettings.model_validate(
            {"url": "http://x", "secretRef": {"name": "push", "key": "a", "previousKey": "a"}}
        )


def test_without_a_secret_the_standard_headers_go_unsigned() -> None:
    with SinkThread() as sink:
        send_all({"url": sink.url}, {}, ["u1"])
        (rec,) = sink.requests
    assert rec.scheme == "standard" and rec.signature is None and rec.signature_ok is None
    assert rec.key == delivery("u1").idempotency_key and rec.timestamp


def docs_receiver() -> tuple[Callable[[str], Any], Callable[..., Any]]:
    """The Standard Webhooks receiver snippet of docs/channels.md, as a reader pastes it."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "channels.md").read_text()
    (code,) = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "def accept" in b]
    scope: dict[str, Any] = {}
    exec(compile(code, "docs/channels.md", "exec"), scope)
    return scope["receiver"], scope["accept"]


def test_docs_receiver_snippet_accepts_the_channel_and_refuses_forgeries() -> None:
    receiver, accept = docs_receiver()
    with SinkThread(secret=NEW) as sink:
        send_all({"url": sink.url}, {"PUSHTASK_WEBHOOK_SECRET": NEW}, ["u1"])
        (rec,) = sink.requests
    body = encode_body(delivery("u1"))
    headers = headers_of(rec)
    assert accept(receiver(NEW), body, headers)["user"] == "u1"
    assert accept(receiver(OLD), body, headers) is None
    assert accept(receiver(NEW), body.replace(b"u1", b"u2"), headers) is None
    stale = {**headers, "webhook-timestamp": str(int(rec.timestamp or 0) - 360)}
    assert accept(receiver(NEW), body, stale) is None  # a replay six minutes later
    # A raw (non-whsec_) Secret value works through the same snippet.
    with SinkThread(secret="s3cret") as sink:
        send_all({"url": sink.url}, {"PUSHTASK_WEBHOOK_SECRET": "s3cret"}, ["u1"])
        (raw,) = sink.requests
    assert accept(receiver("s3cret"), body, headers_of(raw))["user"] == "u1"


def test_410_means_the_endpoint_is_gone_naming_it_without_credentials() -> None:
    gone = classify(410, None, "Gone", "https://push.example.com/hook")
    assert gone.outcome is Outcome.GONE and gone.status == 410
    assert "https://push.example.com/hook" in gone.detail and "410" in gone.detail
    assert classify(404).outcome is Outcome.FINAL  # only 410 says "gone for good"
    with SinkThread() as sink:
        sink.program(default=[{"status": 410}])
        url = sink.url.replace("http://", "http://user:pw@") + "?token=t0p"
        (result,) = send_all({"url": url}, {}, ["u1"])
    assert result.outcome is Outcome.GONE
    assert sink.url in result.detail and "pw" not in result.detail and "t0p" not in result.detail


class GoneAfter(Channel):
    """Delivers `ok` sends, then answers as a deleted endpoint does."""

    name = "gone-after"

    def __init__(self, ok: int) -> None:
        super().__init__(ChannelContext({}, env={}))
        self.ok = ok
        self.calls = 0

    async def send(self, delivery: Delivery) -> Attempt:
        self.calls += 1
        if self.calls <= self.ok:
            return Attempt.ok(200)
        return Attempt(Outcome.GONE, "endpoint http://x/hook answered HTTP 410 Gone", None, 410)


def test_sender_reports_gone_once_and_sends_nothing_after_it() -> None:
    spec = PushTaskSpec.model_validate(spec_for(["u"], url="http://x/hook", secret=False))
    channel = GoneAfter(ok=2)
    reported: list[str] = []

    async def on_gone(reason: str) -> None:
        reported.append(reason)

    async def go() -> list[Any]:
        sender = Sender(
            {"namespace": "ns", "name": "t", "uid": "u"},
            1,
            "run-1",
            spec,
            compile_message(spec.message.template),
            channel,
            TokenBucket(None),
            on_gone=on_gone,
        )
        return [await sender.send(p, f"u{p}", {}) for p in range(5)]

    results = asyncio.run(go())
    assert [r.status for r in results] == ["sent", "sent", "failed", "handed back", "handed back"]
    assert results[2].error and "410" in results[2].error and results[2].attempts == 1
    # Never retried, never sent again: the later recipients are handed back unsent.
    assert channel.calls == 3 and [r.attempts for r in results[3:]] == [0, 0]
    assert reported == ["endpoint http://x/hook answered HTTP 410 Gone"]
