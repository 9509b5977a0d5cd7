"""Worker processes deliver a 2,000-recipient run through FCM and through APNs, each
against its local server speaking the real protocol (tests/support/fcm_server.py,
apns_server.py): good tokens delivered exactly once, unregistered ones final with the
reason, throttled ones retried after Retry-After and delivered, and a credential the
server stops accepting mid-run (401 / ExpiredProviderToken) renewed without a failure.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pushtask.models import PushTaskSpec
from pushtask.records import RecipientState
from pushtask.store import Store
from tests.support.apns_server import ApnsKey, ApnsServerThread, local_pki
from tests.support.fcm_server import FcmServerThread, ServiceAccountKey
from tests.support.workers import WorkerProcs, create_run, spec_for, totals

pytestmark = pytest.mark.integration

AUDIENCE = 2_000
UNREGISTERED = range(0, AUDIENCE, 20)  # 100 tokens the server no longer knows
THROTTLED = range(7, AUDIENCE, 20)  # 100 tokens answered 429 + Retry-After the first time
WORKERS = 2


def kind(i: int) -> str:
    return "unreg" if i in UNREGISTERED else "throttle" if i in THROTTLED else "tok"


def mobile_spec(users: list[dict[str, Any]], message: dict[str, Any]) -> dict[str, Any]:
    spec = spec_for(
        users,
        url="http://unused.invalid/",
        shards=8,
        workers=WORKERS,
        max_attempts=3,
        backoff={"initialSeconds": 0.2, "maxSeconds": 2},
        secret=False,
    )
    spec["message"] = message
    return PushTaskSpec.model_validate(spec).model_dump(
        by_alias=True, mode="json", exclude_none=True
    )


def recipient(uri: str, run_id: str, user: str) -> RecipientState | None:
    async def go() -> RecipientState | None:
        store = Store.connect(uri)
        try:
            return await store.recipient(run_id, user)
        finally:
            await store.close()

    return asyncio.run(go())


def when(condition: Callable[[], bool], action: Callable[[], None]) -> threading.Thread:
    """Run `action` once `condition` holds (polled): a server changing its mind mid-run."""

    def watch() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not condition():
            time.sleep(0.01)
        action()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_fcm_run_of_2000(uri: str, tmp_path: Path) -> None:
    account = ServiceAccountKey.make("pushtask-test")
    tokens = {f"u{i:05d}": f"{kind(i)}-{i:05d}" for i in range(AUDIENCE)}
    users = [{"id": u, "deviceToken": t} for u, t in tokens.items()]
    with FcmServerThread(account) as fcm:
        message = {
            "channel": "fcm",
            "fcm": {
                "serviceAccountSecretRef": {"name": "fcm"},
                "endpoint": fcm.endpoint,
                "timeoutSeconds": 5,
            },
            "template": {"title": "Hi {{ user }}", "body": "Sale", "link": "https://s/{{ user }}"},
        }
        run_id, _ = create_run(uri, mobile_spec(users, message))
        env = {"PUSHTASK_FCM_SERVICE_ACCOUNT": account.json(fcm.token_uri)}
        revoked = when(lambda: len(fcm.delivered) >= 600, fcm.revoke_tokens)
        with WorkerProcs(uri, run_id, tmp_path, env=env) as workers:
            workers.start_many(WORKERS)
            assert set(workers.wait(300).values()) == {0}, workers.logs()
        revoked.join(5)
        delivered = fcm.delivered_counts()
        good = {t for t in tokens.values() if not t.startswith("unreg-")}
        assert set(delivered) == good and max(delivered.values()) == 1  # exactly once
        assert {fcm.attempts[t] for t in tokens.values() if t.startswith("throttle-")} == {2}
        assert {fcm.attempts[t] for t in tokens.values() if t.startswith("unreg-")} == {1}
        assert fcm.answers[429] == len(THROTTLED) and fcm.answers[404] == len(UNREGISTERED)
        # One access token per worker, then one renewal each after the revocation.
        assert fcm.unauthenticated > 0 and not fcm.bad_assertions
        assert WORKERS < fcm.token_requests <= 2 * WORKERS
        keys = {d.key for d in fcm.delivered}
        assert len(keys) == len(good) and None not in keys
        first = fcm.delivered[0].message
        assert first["notification"]["title"].startswith("Hi u")
    t = totals(uri, run_id)
    assert (t.sent, t.failed, t.unknown) == (AUDIENCE - len(UNREGISTERED), len(UNREGISTERED), 0)
    gone = recipient(uri, run_id, "u00020")
    assert gone is not None and gone.status == "failed" and gone.attempts == 1
    assert gone.error is not None and gone.error.startswith("UNREGISTERED: device token no longer")
    slow = recipient(uri, run_id, "u00027")
    assert slow is not None and slow.status == "sent" and slow.attempts == 2


def test_apns_run_of_2000(uri: str, tmp_path: Path) -> None:
    key = ApnsKey.make("KEY1234567", "TEAM123456")
    tokens = {f"u{i:05d}": hashlib.sha256(f"d{i}".encode()).hexdigest() for i in range(AUDIENCE)}
    users = [{"id": u, "deviceToken": t} for u, t in tokens.items()]
    by_index = list(tokens.values())
    pki = local_pki(tmp_path / "pki")
    with ApnsServerThread({key.key_id: key}, "dev.pushtask.app", pki) as apns:
        apns.unregistered.update(by_index[i] for i in UNREGISTERED)
        apns.throttled.update(by_index[i] for i in THROTTLED)
        message = {
            "channel": "apns",
            "apns": {
                "keySecretRef": {"name": "apns"},
                "caSecretRef": {"name": "apns"},
                "keyId": key.key_id,
                "teamId": key.team_id,
                "topic": "dev.pushtask.app",
                "endpoint": apns.endpoint,
                "timeoutSeconds": 5,
            },
            "template": {"title": "Hi {{ user }}", "body": "Sale"},
        }
        run_id, _ = create_run(uri, mobile_spec(users, message))
        env = {"PUSHTASK_APNS_KEY": key.p8, "PUSHTASK_APNS_CA_BUNDLE": apns.ca_pem}
        expired = when(lambda: len(apns.delivered) >= 600, apns.expire_tokens)
        with WorkerProcs(uri, run_id, tmp_path / "logs", env=env) as workers:
            workers.start_many(WORKERS)
            assert set(workers.wait(300).values()) == {0}, workers.logs()
        expired.join(5)
        delivered = apns.delivered_counts()
        good = set(by_index) - {by_index[i] for i in UNREGISTERED}
        assert set(delivered) == good and max(delivered.values()) == 1  # exactly once
        assert {apns.attempts[by_index[i]] for i in THROTTLED} == {2}
        assert {apns.attempts[by_index[i]] for i in UNREGISTERED} == {1}
        assert apns.answers["TooManyRequests"] == len(THROTTLED)
        assert apns.answers["Unregistered"] == len(UNREGISTERED)
        # HTTP/2 only, and one connection per worker process carrying every stream.
        assert set(apns.http_versions) == {"2"}
        assert len(apns.connections) == WORKERS, apns.connections
        assert apns.answers["ExpiredProviderToken"] > 0
        assert WORKERS < len(apns.provider_tokens) <= 2 * WORKERS
        assert len({d.apns_id for d in apns.delivered}) == len(good)
    t = totals(uri, run_id)
    assert (t.sent, t.failed, t.unknown) == (AUDIENCE - len(UNREGISTERED), len(UNREGISTERED), 0)
    gone = recipient(uri, run_id, "u00020")
    assert gone is not None and gone.status == "failed" and gone.attempts == 1
    assert gone.error is not None and gone.error.startswith("Unregistered: device token no longer")
    slow = recipient(uri, run_id, "u00027")
    assert slow is not None and slow.status == "sent" and slow.attempts == 2
