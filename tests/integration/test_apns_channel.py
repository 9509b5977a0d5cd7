"""The APNs channel against the local APNs (tests/support/apns_server.py): HTTP/2 over TLS
with a devstack-made certificate, ES256 provider tokens checked like APNs checks them."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pushtask_worker.channels import ChannelContext, Delivery, Outcome
from pushtask_worker.channels.apns import ApnsChannel
from pushtask_worker.channels.credentials import notification_id
from tests.support.apns_server import ApnsKey, ApnsServerThread, local_pki

pytestmark = pytest.mark.integration

KEY = ApnsKey.make("KEY1234567", "TEAM123456")
TOPIC = "dev.pushtask.app"


@pytest.fixture(scope="module")
def pki_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pki")


@pytest.fixture
def apns(pki_root: Path) -> Iterator[ApnsServerThread]:
    with ApnsServerThread({KEY.key_id: KEY}, TOPIC, local_pki(pki_root)) as server:
        yield server


def device(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def channel(server: ApnsServerThread, key: ApnsKey = KEY, **settings: Any) -> ApnsChannel:
    env = {"PUSHTASK_APNS_KEY": key.p8, "PUSHTASK_APNS_CA_BUNDLE": server.ca_pem}
    base = {
        "keySecretRef": {"name": "apns"},
        "keyId": key.key_id,
        "teamId": key.team_id,
        "topic": TOPIC,
        "endpoint": server.endpoint,
    }
    return ApnsChannel(ChannelContext({**base, **settings}, env=env, concurrency=64))


def delivery(token: str | None, user: str = "u1", **message: Any) -> Delivery:
    return Delivery(
        task={"namespace": "ns", "name": "t", "uid": "uid"},
        run=1,
        run_id="r",
        user=user,
        message={"title": "Hi", "body": "Sale", "link": "https://x/", **message},
        attrs={"deviceToken": token} if token else {},
        idempotency_key=hashlib.sha256(user.encode()).hexdigest(),
    )


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_many_sends_multiplex_one_http2_connection(apns: ApnsServerThread) -> None:
    async def go() -> list[Any]:
        async with channel(apns, collapseId="sale", expirationSeconds=3600) as ch:
            return await asyncio.gather(
                *(ch.send(delivery(device(f"u{i}"), f"u{i}")) for i in range(200))
            )

    results = run(go())
    assert {r.outcome for r in results} == {Outcome.OK}, results[:3]
    assert len(apns.delivered) == 200 and apns.http_versions == {"2": 200}
    assert len(apns.connections) == 1  # one connection, 200 streams
    assert apns.max_in_flight > 1
    assert len(apns.provider_tokens) == 1  # one provider token for every send
    d = next(d for d in apns.delivered if d.token == device("u7"))
    assert d.apns_id == notification_id(delivery(None, "u7").idempotency_key)
    assert d.headers["apns-topic"] == TOPIC and d.headers["apns-push-type"] == "alert"
    assert d.headers["apns-priority"] == "10" and d.headers["apns-collapse-id"] == "sale"
    assert int(d.headers["apns-expiration"]) > 0
    assert d.payload["aps"] == {"alert": {"title": "Hi", "body": "Sale"}}
    assert d.payload["link"] == "https://x/"


def test_reasons(apns: ApnsServerThread) -> None:
    gone, busy = device("gone"), device("busy")
    apns.unregistered.add(gone)
    apns.throttled.add(busy)

    async def go() -> dict[str, Any]:
        async with channel(apns) as ch:
            return {
                "bad": await ch.send(delivery("not-a-token")),
                "gone": await ch.send(delivery(gone)),
                "busy": await ch.send(delivery(busy)),
                "busy-again": await ch.send(delivery(busy)),
                "none": await ch.send(delivery(None)),
                "big": await ch.send(delivery(device("x"), extra={"blob": "x" * 5000})),
            }

    r = run(go())
    assert r["bad"].outcome is Outcome.FINAL and r["bad"].detail.startswith("BadDeviceToken:")
    assert r["gone"].outcome is Outcome.FINAL and r["gone"].status == 410
    assert r["gone"].detail.startswith("Unregistered: device token no longer active")
    assert r["busy"].outcome is Outcome.RETRY and r["busy"].status == 429
    assert r["busy"].detail == "TooManyRequests" and r["busy"].retry_after == 1.0
    assert r["busy-again"].outcome is Outcome.OK
    assert r["none"].outcome is Outcome.FINAL and "deviceToken" in r["none"].detail
    assert r["big"].outcome is Outcome.FINAL and r["big"].detail.startswith("PayloadTooLarge")


def test_an_expired_provider_token_is_renewed_once(apns: ApnsServerThread) -> None:
    async def go() -> list[Any]:
        async with channel(apns) as ch:
            assert (await ch.send(delivery(device("a"), "a"))).outcome is Outcome.OK
            apns.expire_tokens()
            return await asyncio.gather(
                *(ch.send(delivery(device(f"u{i}"), f"u{i}")) for i in range(20))
            )

    results = run(go())
    assert {r.outcome for r in results} == {Outcome.OK}
    assert len(apns.provider_tokens) == 2  # one renewal for the 20 sends that were refused
    assert apns.answers["ExpiredProviderToken"] == 20


def test_a_key_apns_does_not_know_is_final(apns: ApnsServerThread) -> None:
    stranger = ApnsKey.make(KEY.key_id, KEY.team_id)  # same ids, another key

    async def go() -> Any:
        async with channel(apns, stranger) as ch:
            return await ch.send(delivery(device("a")))

    result = run(go())
    assert result.outcome is Outcome.FINAL and result.detail.startswith("InvalidProviderToken")


def test_background_pushes(apns: ApnsServerThread) -> None:
    async def go() -> Any:
        async with channel(apns, pushType="background", priority=5) as ch:
            return await ch.send(delivery(device("a")))

    assert run(go()).outcome is Outcome.OK
    d = apns.delivered[0]
    assert d.payload["aps"] == {"content-available": 1}
    assert d.headers["apns-push-type"] == "background" and d.headers["apns-priority"] == "5"


def test_the_test_ca_must_be_trusted(apns: ApnsServerThread) -> None:
    ch = ApnsChannel(
        ChannelContext(
            {
                "keySecretRef": {"name": "apns"},
                "keyId": KEY.key_id,
                "teamId": KEY.team_id,
                "topic": TOPIC,
                "endpoint": apns.endpoint,
            },
            env={"PUSHTASK_APNS_KEY": KEY.p8},
        )
    )

    async def go() -> Any:
        async with ch:
            return await ch.send(delivery(device("a")))

    result = run(go())
    assert result.outcome is Outcome.RETRY and "CERTIFICATE_VERIFY_FAILED" in result.detail
    assert not apns.delivered
