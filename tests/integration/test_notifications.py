"""Completion notifications (spec.notify) on a real MongoDB-wire server and a real HTTP
receiver: the reconcile records the phase change in the store's outbox, the sender
delivers it in the background, retried after a 500, signed per Standard Webhooks (the
sink verifies with the `standardwebhooks` package), never sent twice, also not by a
restarted or a second sender."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import time
import uuid
from collections.abc import Iterator, Mapping
from datetime import timedelta
from email import message_from_bytes
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from pymongo import MongoClient

from pushtask.leases import QUEUED
from pushtask.records import Result
from pushtask.store import GAVE_UP, SENT, Store
from pushtask_operator.notifier import Notifier
from pushtask_operator.settings import OperatorSettings
from tests.integration.test_operator_handlers import Cluster, read_audience, run, task_spec
from tests.support.ledger_steps import deliver, record
from tests.support.sink import SinkThread, free_port

pytestmark = pytest.mark.integration

SECRET = "whsec_" + base64.b64encode(b"completion notifications key 32b").decode()


@pytest.fixture
def db_name(mongo_uri: str) -> Iterator[str]:
    name = f"nt_{uuid.uuid4().hex[:12]}"
    yield name
    MongoClient(mongo_uri).drop_database(name)


class Secrets:
    """The Secrets of the task's namespace, as the API server would answer."""

    def __init__(self, values: Mapping[tuple[str, str], str]) -> None:
        self.values = dict(values)

    async def secret_value(self, namespace: str, name: str, key: str) -> str | None:
        return self.values.get((name, key))


class Events:
    def __init__(self) -> None:
        self.posted: list[tuple[str, str, str, str]] = []

    async def __call__(
        self, involved: Mapping[str, Any], kind: str, type: str, reason: str, message: str
    ) -> None:
        assert involved["apiVersion"] == "pushtask.dev/v1alpha1" and kind == "PushTask"
        self.posted.append((involved["name"], type, reason, message))

    def reasons(self) -> list[str]:
        return [r for _, _, r, _ in self.posted]


def notifier(store: Store, events: Events, owner: str) -> Notifier:
    return Notifier(store, Secrets({("ops-hook", "hmac"): SECRET}), events, owner=owner)


async def come_due(store: Store) -> None:
    """Time passes: every queued notification's back-off is over."""
    await store.db["notifications"].update_many(
        {"state": QUEUED}, {"$set": {"nextAt": store.now() - timedelta(seconds=1)}}
    )


async def refuse_all(store: Store, run_id: str, owner: str) -> None:
    """Every recipient fails for good, with the receiver's answer as its error."""
    while got := await store.claim_chunk(run_id, owner, 30):
        doc, lease = got
        todo = range(int(doc["hi"]), int(doc["size"]))
        errors = ("HTTP 400 Bad Request", "HTTP 404 Not Found", "HTTP 400 Bad Request")
        results = [Result(p, "failed", errors[p % 3]) for p in todo]
        await record(store, lease, {}, results=results, hi=int(doc["size"]), end="done")
    await store.advance(run_id)


async def finish(
    c: Cluster, store: Store, name: str, users: int, *, refused: bool = False, **spec: Any
) -> dict[str, Any]:
    """Reconcile a task through a whole run (workers simulated on the store) to its end."""
    c.apply(name, **task_spec([f"u{i}" for i in range(users)], **spec))
    run_id = (await c.tick(name))["runId"]
    await read_audience(store, run_id, "w1")
    if refused:
        await refuse_all(store, run_id, "w1")
    else:
        await deliver(store, run_id, "w1")
    return await c.tick(name)


def test_a_finished_run_is_reported_once_after_a_500_and_never_again(
    mongo_uri: str, db_name: str
) -> None:
    async def scenario(sink: SinkThread) -> None:
        store = Store.connect(mongo_uri, db_name)
        await store.ensure_indexes()
        c = Cluster(store, OperatorSettings(lease_seconds=10))
        notify = [
            {"webhook": {"url": f"{sink.url}/ops", "secretRef": {"name": "ops-hook"}}},
            {"webhook": {"url": f"{sink.url}/failures"}, "phases": ["Failed"]},
        ]
        # The outbox holds the notification before the status shows Finished (a crash in
        # between records it again; never the other way round, which would lose it).
        patch_status = c.kube.patch_status
        queued_at_patch: list[int] = []

        async def watched(namespace: str, name: str, patch: dict[str, Any]) -> None:
            if patch.get("phase") == "Finished":
                queued = await store.db["notifications"].count_documents({"phase": "Finished"})
                queued_at_patch.append(queued)
            await patch_status(namespace, name, patch)

        c.kube.patch_status = watched  # type: ignore[method-assign,assignment]
        status = await finish(c, store, "sale", 300, notify=notify)
        assert queued_at_patch == [1]
        assert status["phase"] == "Finished"
        # Recorded, not sent: the reconcile never waits on a receiver.
        assert sink.requests == []
        (doc,) = await store.notifications(status["runId"])
        assert doc["state"] == QUEUED and doc["phase"] == "Finished"
        # The same phase change recorded again (a reconcile repeated after its status
        # patch failed) is the same notification: nothing new.
        again = {k: v for k, v in doc.items() if k not in ("state", "attempts", "claimUntil")}
        assert await store.record_notifications([again]) == 0
        assert len(await store.notifications(status["runId"])) == 1

        events = Events()
        sender = notifier(store, events, "op-1")
        assert await sender.drain() == 1  # answered 500: tried again later
        (doc,) = await store.notifications(status["runId"])
        assert doc["state"] == QUEUED and doc["attempts"] == 1
        assert doc["lastError"] == "HTTP 500"
        assert 5 < (doc["nextAt"] - store.now()).total_seconds() <= 10
        assert await sender.drain() == 0  # not due yet

        await come_due(store)
        assert await sender.drain() == 1  # 200
        (doc,) = await store.notifications(status["runId"])
        assert doc["state"] == SENT and doc["attempts"] == 2
        assert events.reasons() == ["NotificationSent"]
        assert "Finished of run 1 reported to webhook" in events.posted[0][3]

        # A restarted operator (a new sender) and a due time long past: nothing is resent.
        await come_due(store)
        assert await notifier(store, events, "op-2").drain() == 0
        await sender.close()
        await store.close()

    with SinkThread(secret=SECRET) as sink:
        sink.program(default=[{"status": 500}, {"status": 200}])
        run(scenario(sink))
        requests = list(sink.requests)
    assert [(r.path, r.status) for r in requests] == [("/hook/ops", 500), ("/hook/ops", 200)]
    assert all(r.scheme == "standard" and r.signature_ok for r in requests), requests
    first, second = requests
    assert first.key == second.key  # webhook-id: the same on every attempt
    body = second.notification
    assert body["phase"] == "Finished" and body["type"] == "pushtask.run.finished"
    assert body["task"]["name"] == "sale" and body["run"] == 1
    assert body["counts"]["sent"] == 300 and body["counts"]["audience"] == 300
    assert body["counts"]["failed"] == body["counts"]["pending"] == 0
    assert body["topFailureReasons"] == []


def test_a_failed_run_carries_its_top_failure_reasons(mongo_uri: str, db_name: str) -> None:
    async def scenario(sink: SinkThread) -> None:
        store = Store.connect(mongo_uri, db_name)
        await store.ensure_indexes()
        c = Cluster(store, OperatorSettings(lease_seconds=10))
        notify = [{"webhook": {"url": f"{sink.url}/ops"}, "phases": ["Failed"]}]
        status = await finish(c, store, "refused", 200, notify=notify, refused=True)
        assert status["phase"] == "Failed", status
        assert await notifier(store, Events(), "op-1").drain() == 1
        await store.close()

    with SinkThread() as sink:
        run(scenario(sink))
        (request,) = sink.requests
    body = request.notification
    assert body["phase"] == "Failed" and body["reason"] == "RunFailed"
    assert "failure budget spent" in body["message"]
    assert body["counts"]["failed"] == 200
    # The sample's most frequent errors first (two in three refused with 400).
    top = body["topFailureReasons"]
    assert [r["reason"] for r in top] == ["HTTP 400 Bad Request", "HTTP 404 Not Found"]
    assert body["failureSampleSize"] == sum(r["sampled"] for r in top) > 0


def test_two_senders_at_once_send_each_notification_once(mongo_uri: str, db_name: str) -> None:
    """Two operator processes (a rolling update): the claim lets one of them send it."""

    async def scenario(sink: SinkThread) -> None:
        store = Store.connect(mongo_uri, db_name)
        await store.ensure_indexes()
        c = Cluster(store, OperatorSettings(lease_seconds=10))
        hooks = [{"webhook": {"url": f"{sink.url}/n{i}"}} for i in range(6)]
        await finish(c, store, "pair", 50, notify=hooks)
        events = Events()
        a, b = notifier(store, events, "op-a"), notifier(store, events, "op-b")
        tried = await asyncio.gather(a.drain(), b.drain())
        assert sum(tried) == 6
        assert events.reasons() == ["NotificationSent"] * 6
        await a.close()
        await b.close()
        await store.close()

    with SinkThread() as sink:
        sink.program(default=[{"status": 200, "delay": 0.2}])
        run(scenario(sink))
        paths = sorted(r.path for r in sink.requests)
    assert paths == [f"/hook/n{i}" for i in range(6)]  # sink.url ends in /hook


def test_a_refusal_or_an_hour_of_failures_gives_up_with_a_warning(
    mongo_uri: str, db_name: str
) -> None:
    async def scenario(bad: SinkThread, down: SinkThread) -> None:
        store = Store.connect(mongo_uri, db_name)
        await store.ensure_indexes()
        c = Cluster(store, OperatorSettings(lease_seconds=10))
        notify = [
            {"webhook": {"url": f"{bad.url}/bad"}},
            {"webhook": {"url": f"{down.url}/down"}},
            {"webhook": {"url": f"{down.url}/unsigned", "secretRef": {"name": "missing"}}},
        ]
        status = await finish(c, store, "gone", 20, notify=notify)
        events = Events()
        sender = notifier(store, events, "op-1")
        assert await sender.drain() == 3
        docs = {
            d["target"]["webhook"]["url"].rsplit("/", 1)[1]: d
            for d in await store.notifications(status["runId"])
        }
        assert docs["bad"]["state"] == GAVE_UP and docs["bad"]["lastError"] == "HTTP 400"
        assert docs["down"]["state"] == QUEUED and docs["down"]["lastError"] == "HTTP 503"
        # A Secret that is not there (yet) is waited for like a receiver that is down.
        assert docs["unsigned"]["state"] == QUEUED
        assert 'Secret "missing" has no key "hmac"' in docs["unsigned"]["lastError"]
        # An hour after the phase change, the next failure is the last.
        await store.db["notifications"].update_many(
            {"state": QUEUED}, {"$set": {"created": store.now() - timedelta(minutes=60)}}
        )
        await come_due(store)
        assert await sender.drain() == 2
        states = {d["state"] for d in await store.notifications(status["runId"])}
        assert states == {GAVE_UP}
        assert events.reasons() == ["NotificationFailed"] * 3
        assert any("(refused): HTTP 400" in m for *_, m in events.posted)
        assert sum("given up after 2 attempts" in m for *_, m in events.posted) == 2
        await sender.close()
        await store.close()

    with SinkThread() as bad, SinkThread() as down:
        bad.program(default=[{"status": 400}])
        down.program(default=[{"status": 503}])
        run(scenario(bad, down))
        assert len(bad.requests) == 1 and len(down.requests) == 2


def test_the_background_loop_sends_when_nudged(mongo_uri: str, db_name: str) -> None:
    """main.py's wiring: the reconcile nudges the running sender, which sends at once."""

    async def scenario(sink: SinkThread) -> float:
        store = Store.connect(mongo_uri, db_name)
        await store.ensure_indexes()
        c = Cluster(store, OperatorSettings(lease_seconds=10))
        sender = notifier(store, Events(), "op-1")
        c.rt.wake_notifier = sender.wake
        loop = asyncio.create_task(sender.run())
        await asyncio.sleep(0.5)  # the loop's first look found nothing: it sleeps 30 s
        await finish(c, store, "nudged", 20, notify=[{"webhook": {"url": f"{sink.url}/ops"}}])
        t0 = time.monotonic()
        for _ in range(200):  # at most 10 s
            if sink.requests:
                break
            await asyncio.sleep(0.05)
        waited = time.monotonic() - t0
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        await store.close()
        return waited

    with SinkThread() as sink:
        waited = run(scenario(sink))
        assert len(sink.requests) == 1
    assert waited < 5


def test_a_pause_by_a_degraded_tier_is_reported_a_pause_by_a_person_is_not(
    mongo_uri: str, db_name: str
) -> None:
    async def scenario() -> list[dict[str, Any]]:
        store = Store.connect(mongo_uri, db_name)
        await store.ensure_indexes()
        c = Cluster(store, OperatorSettings(lease_seconds=10))
        notify = [{"webhook": {"url": "http://ops.example/hook"}}]
        c.apply("peak", **task_spec([f"u{i}" for i in range(50)], notify=notify))
        run_id = (await c.tick("peak"))["runId"]
        normal = c.rt.settings
        c.rt.settings = dataclasses.replace(normal, degraded_tiers={"normal": "graceful"})
        status = await c.tick("peak")
        assert (status["phase"], status["reason"]) == ("Paused", "Degraded")
        c.rt.settings = normal
        assert (await c.tick("peak"))["phase"] == "Started"
        c.patch("peak", state="Paused")
        status = await c.tick("peak")
        assert (status["phase"], status["reason"]) == ("Paused", "PausedByUser")
        c.patch("peak", state="Stopped")
        assert (await c.tick("peak"))["phase"] == "Stopped"
        docs = await store.notifications(run_id)
        await store.close()
        return docs

    docs = run(scenario())
    assert [(d["phase"], d["payload"]["reason"]) for d in docs] == [
        ("Paused", "Degraded"),
        ("Stopped", "StoppedByUser"),
    ]
    assert docs[1]["payload"]["previousPhase"] == "Paused"


class Mailbox:
    """A real SMTP server's handler: says 451 (try later) to the first message."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.refused = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if not self.refused:
            self.refused += 1
            return "451 try again later"
        self.messages.append(envelope.content)
        return "250 Message accepted"


def test_an_email_is_retried_after_a_451_and_sent_once(mongo_uri: str, db_name: str) -> None:
    box, port = Mailbox(), free_port()
    ctl = Controller(box, hostname="127.0.0.1", port=port)
    ctl.start()

    async def scenario() -> list[str]:
        store = Store.connect(mongo_uri, db_name)
        await store.ensure_indexes()
        c = Cluster(store, OperatorSettings(lease_seconds=10))
        smtp = {"host": "127.0.0.1", "port": port, "starttls": False, "from": "pt@x.test"}
        message = {"smtp": smtp, **task_spec([])["message"]}  # e-mail needs message.smtp
        notify = [{"email": {"to": ["ops@x.test"]}}]
        status = await finish(c, store, "mailed", 30, notify=notify, message=message)
        assert status["phase"] == "Finished"
        events = Events()
        sender = notifier(store, events, "op-1")
        assert await sender.drain() == 1  # 451: later
        await come_due(store)
        assert await sender.drain() == 1
        await come_due(store)
        assert await notifier(store, events, "op-2").drain() == 0
        (doc,) = await store.notifications(status["runId"])
        assert doc["state"] == SENT and doc["attempts"] == 2
        await store.close()
        return [f"<{doc['_id']}@pushtask>", *events.reasons()]

    try:
        message_id, *reasons = run(scenario())
    finally:
        ctl.stop()
    assert reasons == ["NotificationSent"]
    (raw,) = box.messages
    mail = message_from_bytes(raw)
    assert mail["Subject"] == "PushTask shop/mailed run 1: Finished"
    assert mail["Message-ID"] == message_id and mail["To"] == "ops@x.test"
    assert "sent 30" in mail.get_payload()


def test_a_dead_senders_claim_is_taken_over_once_it_runs_out(mongo_uri: str, db_name: str) -> None:
    async def scenario() -> None:
        store = Store.connect(mongo_uri, db_name)
        await store.ensure_indexes()
        await store.sync_clock()
        now = store.now()
        doc = {"_id": "r1.finished.abc", "run": "r1", "phase": "Finished", "created": now}
        assert await store.record_notifications([{**doc, "nextAt": now}]) == 1
        dead = await store.claim_notification("op-dead", ttl=360)
        assert dead is not None and dead["_id"] == doc["_id"]
        assert await store.claim_notification("op-new", ttl=360) is None  # claimed
        # Time passes: the dead sender's claim runs out; another sender takes it over.
        await store.db["notifications"].update_one(
            {"_id": doc["_id"]}, {"$set": {"claimUntil": store.now() - timedelta(seconds=1)}}
        )
        taken = await store.claim_notification("op-new", ttl=360)
        assert taken is not None and taken["_id"] == doc["_id"]
        assert await store.notification_done(taken, SENT)
        # The first holder was only slow: its outcome no longer counts.
        assert not await store.notification_done(dead, SENT)
        assert not await store.notification_retry(dead, store.now(), "HTTP 500")
        (after,) = await store.notifications("r1")
        assert (after["state"], after["attempts"]) == (SENT, 1)
        # Deleted with the run, claims included.
        await store.delete_run("r1")
        assert await store.notifications("r1") == []
        assert await store.db["notification_claims"].count_documents({"run": "r1"}) == 0
        await store.close()

    run(scenario())
