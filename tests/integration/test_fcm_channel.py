"""The FCM channel against the local FCM (tests/support/fcm_server.py) over real sockets:
the signed assertion, the shared access token, its renewal on 401, and the error mapping."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from pushtask_worker.channels import ChannelContext, Delivery, Outcome
from pushtask_worker.channels.fcm import FcmChannel
from tests.support.fcm_server import FcmServerThread, ServiceAccountKey

pytestmark = pytest.mark.integration

ACCOUNT = ServiceAccountKey.make("pushtask-test")


# What the spec requires beside the settings a test varies: the channel reads the Secret
# itself from the environment (PUSHTASK_FCM_SERVICE_ACCOUNT).
SPEC: dict[str, Any] = {"serviceAccountSecretRef": {"name": "fcm"}}


@pytest.fixture
def fcm() -> Iterator[FcmServerThread]:
    with FcmServerThread(ACCOUNT) as server:
        yield server


def channel(
    server: FcmServerThread, account: ServiceAccountKey = ACCOUNT, **settings: Any
) -> FcmChannel:
    env = {"PUSHTASK_FCM_SERVICE_ACCOUNT": account.json(server.token_uri)}
    return FcmChannel(
        ChannelContext({**SPEC, "endpoint": server.endpoint, **settings}, env=env, concurrency=64)
    )


def delivery(token: str | None, user: str = "u1", **message: Any) -> Delivery:
    return Delivery(
        task={"namespace": "ns", "name": "t", "uid": "uid"},
        run=1,
        run_id="r",
        user=user,
        message={"title": "Hi", "body": "Sale", "link": "https://x/", **message},
        attrs={"deviceToken": token} if token else {},
        idempotency_key=f"{abs(hash(user)):064x}"[:64],
    )


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_sends_share_one_access_token_and_carry_the_message(fcm: FcmServerThread) -> None:
    async def go() -> list[Any]:
        async with channel(fcm, androidPriority="high") as ch:
            return await asyncio.gather(
                *(ch.send(delivery(f"tok-{i}", f"u{i}", extra={"n": "1"})) for i in range(50))
            )

    results = run(go())
    assert {r.outcome for r in results} == {Outcome.OK}
    assert fcm.token_requests == 1 and not fcm.bad_assertions
    assert len(fcm.delivered) == 50
    d = next(d for d in fcm.delivered if d.token == "tok-7")
    assert d.message["notification"] == {"title": "Hi", "body": "Sale"}
    assert d.message["data"]["link"] == "https://x/" and d.message["data"]["n"] == "1"
    assert d.key == delivery("tok-7", "u7").idempotency_key
    assert d.message["android"] == {"priority": "high"}


def test_error_mapping(fcm: FcmServerThread) -> None:
    async def go() -> dict[str, Any]:
        async with channel(fcm) as ch:
            out = {}
            for token in ("unreg-1", "invalid-1", "throttle-1", "unavail-1"):
                out[token] = await ch.send(delivery(token))
            out["throttle-again"] = await ch.send(delivery("throttle-1"))
            out["none"] = await ch.send(delivery(None))
            return out

    r = run(go())
    assert r["unreg-1"].outcome is Outcome.FINAL and r["unreg-1"].status == 404
    assert r["unreg-1"].detail.startswith("UNREGISTERED: device token no longer valid")
    assert r["invalid-1"].outcome is Outcome.FINAL
    assert r["invalid-1"].detail.startswith("INVALID_ARGUMENT: malformed device token")
    assert r["throttle-1"].outcome is Outcome.RETRY and r["throttle-1"].retry_after == 1.0
    assert r["throttle-1"].detail.startswith("QUOTA_EXCEEDED")
    assert r["unavail-1"].outcome is Outcome.RETRY and r["unavail-1"].status == 503
    assert r["throttle-again"].outcome is Outcome.OK
    assert r["none"].outcome is Outcome.FINAL and "deviceToken" in r["none"].detail


def test_a_401_renews_the_token_once_for_all_sends(fcm: FcmServerThread) -> None:
    async def go() -> list[Any]:
        async with channel(fcm) as ch:
            assert (await ch.send(delivery("tok-0"))).outcome is Outcome.OK
            fcm.revoke_tokens()  # the server forgets every token it gave out
            return await asyncio.gather(
                *(ch.send(delivery(f"tok-{i}", f"u{i}")) for i in range(30))
            )

    results = run(go())
    assert {r.outcome for r in results} == {Outcome.OK}
    assert fcm.token_requests == 2  # one renewal, shared by the 30 sends that saw a 401
    assert fcm.unauthenticated == 30


def test_an_access_token_is_renewed_before_it_expires(fcm: FcmServerThread) -> None:
    fcm.expires_in = 2  # renewed after half its life

    async def go() -> None:
        async with channel(fcm) as ch:
            assert (await ch.send(delivery("tok-1"))).outcome is Outcome.OK
            assert (await ch.send(delivery("tok-2"))).outcome is Outcome.OK
            assert fcm.token_requests == 1
            await asyncio.sleep(1.2)
            assert (await ch.send(delivery("tok-3"))).outcome is Outcome.OK

    run(go())
    assert fcm.token_requests == 2 and fcm.unauthenticated == 0


def test_a_key_the_token_endpoint_refuses_is_final(fcm: FcmServerThread) -> None:
    stranger = ServiceAccountKey.make("pushtask-test")  # same e-mail, another key

    async def go() -> Any:
        async with channel(fcm, stranger) as ch:
            return await ch.send(delivery("tok-1"))

    result = run(go())
    assert result.outcome is Outcome.FINAL
    assert result.detail.startswith("token endpoint: HTTP 400 invalid_grant")
    assert fcm.bad_assertions and not fcm.delivered


def test_a_missing_service_account_is_a_final_failure_with_the_reason() -> None:
    ch = FcmChannel(ChannelContext({**SPEC, "projectId": "p-1234"}, env={}))
    result = run(ch.send(delivery("tok-1")))
    assert result.outcome is Outcome.FINAL and "PUSHTASK_FCM_SERVICE_ACCOUNT" in result.detail


def test_project_id_from_the_spec_overrides_the_account(fcm: FcmServerThread) -> None:
    async def go() -> Any:
        async with channel(fcm, projectId="another-project") as ch:
            return await ch.send(delivery("tok-1"))

    result = run(go())
    assert result.outcome is Outcome.FINAL and result.status == 403
    assert result.detail.startswith("SENDER_ID_MISMATCH")
