"""The pure parts of the FCM and APNs channels: error mapping, JWT headers and claims,
the shared token cache and its renewal windows, request building."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import jwt
import pytest

from pushtask_worker.channels import ChannelContext, Delivery, Outcome, apns, fcm, load_channel
from pushtask_worker.channels.credentials import Token, TokenCache, notification_id
from tests.support.apns_server import ApnsKey
from tests.support.fcm_server import FcmServer, ServiceAccountKey

KEY = "9f" * 32  # an idempotency key: sha256 hex
# What the spec requires beside the settings a test varies (the channels read the
# Secrets themselves from the environment).
FCM: dict[str, Any] = {"serviceAccountSecretRef": {"name": "fcm"}}
APNS: dict[str, Any] = {
    "keySecretRef": {"name": "apns"},
    "keyId": "KEY1234567",
    "teamId": "TEAM123456",
    "topic": "t",
}


def fcm_error(status: int, rpc: str, code: str | None = None, message: str = "m") -> bytes:
    return json.dumps(FcmServer.error(status, rpc, message, code)).encode()


@pytest.mark.parametrize(
    ("status", "body", "outcome", "starts"),
    [
        (200, b'{"name": "projects/p/messages/1"}', Outcome.OK, ""),
        (404, fcm_error(404, "NOT_FOUND", "UNREGISTERED"), Outcome.FINAL, "UNREGISTERED: device"),
        (400, fcm_error(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT"), Outcome.FINAL,
         "INVALID_ARGUMENT: malformed device token"),
        (403, fcm_error(403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH"), Outcome.FINAL,
         "SENDER_ID_MISMATCH"),
        (401, fcm_error(401, "UNAUTHENTICATED", "THIRD_PARTY_AUTH_ERROR"), Outcome.FINAL,
         "THIRD_PARTY_AUTH_ERROR"),
        (429, fcm_error(429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED"), Outcome.RETRY,
         "QUOTA_EXCEEDED"),
        (503, fcm_error(503, "UNAVAILABLE", "UNAVAILABLE"), Outcome.RETRY, "UNAVAILABLE"),
        (500, fcm_error(500, "INTERNAL", "INTERNAL"), Outcome.RETRY, "INTERNAL"),
        (502, b"<html>bad gateway</html>", Outcome.RETRY, "HTTP 502"),
        (403, fcm_error(403, "PERMISSION_DENIED"), Outcome.FINAL, "PERMISSION_DENIED: m"),
    ],
)  # fmt: skip
def test_fcm_error_mapping(status: int, body: bytes, outcome: Outcome, starts: str) -> None:
    attempt = fcm.classify(status, body, "7")
    assert attempt.outcome is outcome and attempt.detail.startswith(starts)
    if outcome is Outcome.RETRY:
        assert attempt.retry_after == 7.0


def test_fcm_401_renews_the_token_unless_it_is_about_apns_credentials() -> None:
    assert fcm.needs_new_token(401, fcm_error(401, "UNAUTHENTICATED"))
    assert fcm.needs_new_token(401, b"")
    assert not fcm.needs_new_token(401, fcm_error(401, "UNAUTHENTICATED", "THIRD_PARTY_AUTH_ERROR"))
    assert not fcm.needs_new_token(403, fcm_error(403, "PERMISSION_DENIED"))


def test_fcm_assertion_is_an_rs256_jwt_google_accepts() -> None:
    key = ServiceAccountKey.make("proj-1")
    account = fcm.ServiceAccount.from_json(key.json("https://oauth2.example/token"))
    token = fcm.assertion(account, account.token_uri, 1_700_000_000)
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "RS256", "typ": "JWT", "kid": key.private_key_id}
    claims = jwt.decode(
        token,
        key.public_pem,
        algorithms=["RS256"],
        audience="https://oauth2.example/token",
        options={"verify_exp": False, "verify_iat": False},
    )
    assert claims == {
        "iss": key.client_email,
        "scope": "https://www.googleapis.com/auth/firebase.messaging",
        "aud": "https://oauth2.example/token",
        "iat": 1_700_000_000,
        "exp": 1_700_003_600,
    }


def test_service_account_problems_are_named() -> None:
    with pytest.raises(ValueError, match="does not parse"):
        fcm.ServiceAccount.from_json("{")
    with pytest.raises(ValueError, match="lacks client_email, private_key"):
        fcm.ServiceAccount.from_json("{}")
    account = fcm.ServiceAccount.from_json('{"client_email": "a", "private_key": "k"}')
    assert account.token_uri == "https://oauth2.googleapis.com/token"


def test_access_tokens_are_renewed_before_they_expire() -> None:
    assert fcm.renew_at(1000, 3600) == 1000 + 3300  # five minutes early
    assert fcm.renew_at(1000, 10) == 1005  # a short-lived token: at half its life


def test_fcm_message_carries_notification_data_and_the_idempotency_key() -> None:
    ch = fcm.FcmChannel(
        ChannelContext(
            {**FCM, "projectId": "p-123", "androidPriority": "high", "ttlSeconds": 60}, env={}
        )
    )
    d = Delivery(
        {}, 1, "r", "u1", {"title": "T", "body": "B", "link": "L", "extra": {"n": 3}}, {}, KEY
    )
    assert json.loads(ch.body(d, "tok")) == {
        "message": {
            "token": "tok",
            "notification": {"title": "T", "body": "B"},
            "data": {"n": "3", "link": "L", "idempotencyKey": KEY},
            "android": {"priority": "high", "ttl": "60s"},
        }
    }
    assert ch.url == "https://fcm.googleapis.com/v1/projects/p-123/messages:send"


@pytest.mark.parametrize(
    ("status", "reason", "outcome", "starts"),
    [
        (200, "", Outcome.OK, ""),
        (400, "BadDeviceToken", Outcome.FINAL, "BadDeviceToken: device token is malformed"),
        (410, "Unregistered", Outcome.FINAL, "Unregistered: device token no longer active"),
        (400, "DeviceTokenNotForTopic", Outcome.FINAL, "DeviceTokenNotForTopic"),
        (413, "PayloadTooLarge", Outcome.FINAL, "PayloadTooLarge"),
        (403, "InvalidProviderToken", Outcome.FINAL, "InvalidProviderToken"),
        (429, "TooManyRequests", Outcome.RETRY, "TooManyRequests"),
        (429, "TooManyProviderTokenUpdates", Outcome.RETRY, "TooManyProviderTokenUpdates"),
        (500, "InternalServerError", Outcome.RETRY, "InternalServerError"),
        (503, "ServiceUnavailable", Outcome.RETRY, "ServiceUnavailable"),
        (503, "Shutdown", Outcome.RETRY, "Shutdown"),
        (400, "BadCollapseId", Outcome.FINAL, "BadCollapseId"),
    ],
)
def test_apns_reason_mapping(status: int, reason: str, outcome: Outcome, starts: str) -> None:
    body = json.dumps({"reason": reason}).encode() if reason else b""
    attempt = apns.classify(status, body, "3")
    assert attempt.outcome is outcome and attempt.detail.startswith(starts)
    assert attempt.status == status


def test_apns_provider_token_is_an_es256_jwt_apns_accepts() -> None:
    key = ApnsKey.make("KEY1234567", "TEAM123456")
    token = apns.provider_token(key.p8, key.key_id, key.team_id, 1_700_000_000)
    assert jwt.get_unverified_header(token) == {"alg": "ES256", "typ": "JWT", "kid": "KEY1234567"}
    claims = jwt.decode(token, key.public_pem, algorithms=["ES256"], options={"verify_iat": False})
    assert claims == {"iss": "TEAM123456", "iat": 1_700_000_000}
    # Inside APNs' window: not renewed within 20 minutes, nor used past 60.
    assert 20 * 60 < apns.TOKEN_RENEW_SECONDS < 60 * 60


def apns_channel(**settings: Any) -> apns.ApnsChannel:
    key = ApnsKey.make("KEY1234567", "TEAM123456")
    base = {**APNS, "keyId": key.key_id, "teamId": key.team_id, "topic": "com.example.app"}
    return apns.ApnsChannel(ChannelContext({**base, **settings}, env={"PUSHTASK_APNS_KEY": key.p8}))


def test_apns_headers_and_payload() -> None:
    d = Delivery({}, 1, "r", "u1", {"title": "T", "body": "B", "link": "L"}, {}, KEY)
    ch = apns_channel(collapseId="sale", expirationSeconds=0, priority=5)
    h = ch.headers(d, "jwt")
    assert h == {
        "user-agent": "pushtask-worker",
        "authorization": "bearer jwt",
        "apns-topic": "com.example.app",
        "apns-push-type": "alert",
        "apns-priority": "5",
        "apns-id": notification_id(KEY),
        "apns-expiration": "0",
        "apns-collapse-id": "sale",
    }
    assert json.loads(ch.payload(d)) == {
        "link": "L",
        "idempotencyKey": KEY,
        "aps": {"alert": {"title": "T", "body": "B"}},
    }
    background = apns_channel(pushType="background", priority=5)
    assert json.loads(background.payload(d))["aps"] == {"content-available": 1}
    assert ch.endpoint == "https://api.push.apple.com"
    assert apns_channel(environment="sandbox").endpoint == "https://api.sandbox.push.apple.com"


def test_apns_problems_are_final_with_the_reason() -> None:
    ch = apns.ApnsChannel(ChannelContext(APNS, env={}))
    d = Delivery({}, 1, "r", "u1", {"body": "B"}, {"deviceToken": "ab"}, KEY)
    attempt = asyncio.run(ch.send(d))
    assert attempt.outcome is Outcome.FINAL and "PUSHTASK_APNS_KEY" in attempt.detail
    bad = apns.ApnsChannel(ChannelContext(APNS, env={"PUSHTASK_APNS_KEY": "not a key"}))
    assert bad.problem is not None and bad.problem.startswith("the .p8 key does not load")


def test_apns_id_is_a_uuid_derived_from_the_idempotency_key() -> None:
    first = notification_id(KEY)
    assert first == notification_id(KEY) != notification_id("ab" * 32)
    assert uuid.UUID(first).version == 4 and first.replace("-", "")[:12] == KEY[:12]
    assert uuid.UUID(notification_id("not hex"))  # any key still makes a UUID


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_token_cache_shares_one_token_and_renews_on_time() -> None:
    clock = Clock()
    made: list[str] = []

    async def make() -> Token:
        await asyncio.sleep(0.01)  # concurrent callers wait on the first one
        made.append(f"t{len(made)}")
        return Token(made[-1], clock.now + 100)

    async def go() -> None:
        cache = TokenCache(make, clock)
        assert set(await asyncio.gather(*(cache.get() for _ in range(20)))) == {"t0"}
        clock.now = 99.9
        assert await cache.get() == "t0"
        clock.now = 100
        assert await cache.get() == "t1"
        # 20 sends refused with t1 make one new token; a late refusal of t1 keeps t2.
        assert set(await asyncio.gather(*(cache.renew("t1") for _ in range(20)))) == {"t2"}
        assert await cache.renew("t1") == "t2"
        assert cache.made == 3

    asyncio.run(go())


def test_both_channels_are_entry_points() -> None:
    assert load_channel("fcm") is fcm.FcmChannel
    assert load_channel("apns") is apns.ApnsChannel
