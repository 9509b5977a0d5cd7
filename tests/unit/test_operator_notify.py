"""Completion notifications: which phase changes are reported (notify.py, pure), what they
say, the back-off, the signing, and the e-mail through a real local SMTP server."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from standardwebhooks import Webhook

from pushtask.models import Counts, PushTaskSpec
from pushtask.signing import signing_key, standard_headers
from pushtask.states import DesiredState, Facts, Phase, Transition, transition
from pushtask_operator import notify
from pushtask_operator.notifier import Notifier, classify_http, describe_target, shown_url
from tests.support.sink import free_port

NOW = datetime(2026, 12, 7, 22, 0, tzinfo=UTC)
TASK = {"namespace": "shop", "name": "sale", "uid": "u-1"}
HOOK = "https://ops.example/hooks/pushtask"


def spec(*notify_entries: dict[str, Any], smtp: bool = True) -> PushTaskSpec:
    message: dict[str, Any] = {
        "webhook": {"url": "https://sink.example/hook"},
        "template": {"body": "Hi {{ user }}"},
    }
    if smtp:
        message["smtp"] = {"host": "mail.example", "from": "pushtask@example.com"}
    return PushTaskSpec.model_validate(
        {
            "audience": {"sources": [{"kind": "inline", "users": ["u1"]}]},
            "message": message,
            "notify": list(notify_entries),
        }
    )


def hook(**extra: Any) -> dict[str, Any]:
    return {"webhook": {"url": HOOK}, **extra}


# Transitions as the state machine makes them, from a run under way.
FINISHED = transition(Phase.STARTED, DesiredState.STARTED, Facts(finished=True))
FAILED = transition(Phase.STARTED, DesiredState.STARTED, Facts(failure="failure budget spent"))
STOPPED = transition(Phase.STARTED, DesiredState.STOPPED, Facts())
PAUSED_BY_PERSON = transition(Phase.STARTED, DesiredState.PAUSED, Facts())
PAUSED_DEGRADED = transition(Phase.STARTED, DesiredState.STARTED, Facts(degraded="tier low"))
RESUMED = transition(Phase.PAUSED, DesiredState.STARTED, Facts())
REBOOT = transition(Phase.STARTED, DesiredState.STARTED, Facts(worker_lost=True))


def test_the_state_machine_gives_the_transitions_these_tests_use() -> None:
    assert (FINISHED.phase, FAILED.phase, STOPPED.phase) == (
        Phase.FINISHED,
        Phase.FAILED,
        Phase.STOPPED,
    )
    assert PAUSED_BY_PERSON.reason == notify.PAUSED_BY_PERSON
    assert PAUSED_DEGRADED.phase is Phase.PAUSED and PAUSED_DEGRADED.reason == "Degraded"


@pytest.mark.parametrize(
    ("before", "t", "expected"),
    [
        (Phase.STARTED, FINISHED, True),
        (Phase.STARTED, FAILED, True),
        (Phase.STARTED, STOPPED, True),
        (Phase.PAUSED, transition(Phase.PAUSED, DesiredState.STOPPED, Facts()), True),
        (Phase.REBOOT, transition(Phase.REBOOT, DesiredState.STARTED, Facts(finished=True)), True),
        (Phase.STARTED, PAUSED_DEGRADED, True),  # a pause nobody asked for
        (Phase.STARTED, PAUSED_BY_PERSON, False),  # the person who asked knows
        (Phase.PAUSED, RESUMED, False),  # Started is not reported
        (Phase.STARTED, REBOOT, False),
        (Phase.PAUSED, Transition(Phase.PAUSED, "Degraded", "still"), False),  # no change
        # Not a run's phase change: first sight, Ready, a run already over.
        (None, FINISHED, False),
        (Phase.READY, transition(Phase.READY, DesiredState.STOPPED, Facts()), False),
        (Phase.READY, Transition(Phase.FAILED, "InvalidSpec", "bad template"), False),
        (Phase.FINISHED, Transition(Phase.STOPPED, "StoppedByUser", "no more firings"), False),
    ],
)
def test_which_phase_changes_are_reported(
    before: Phase | None, t: Transition, expected: bool
) -> None:
    every = ["Finished", "Failed", "Paused", "Stopped"]
    assert notify.reported(before, t, every) is expected


def test_the_phase_filter_of_each_entry() -> None:
    s = spec(hook(phases=["Failed"]), {"email": {"to": ["ops@example.com"]}})
    assert [n.email is not None for n in notify.wanted(s, Phase.STARTED, FINISHED)] == [True]
    assert len(notify.wanted(s, Phase.STARTED, FAILED)) == 2
    assert notify.wanted(s, Phase.STARTED, PAUSED_BY_PERSON) == []
    assert notify.wanted(spec(), Phase.STARTED, FINISHED) == []


def test_the_default_phases_are_all_four() -> None:
    (entry,) = spec(hook()).notify
    assert entry.phases == ["Finished", "Failed", "Paused", "Stopped"]


def summary(**counts: int) -> notify.RunSummary:
    samples = [("u1", "HTTP 400 Bad Request")] * 3 + [("u2", "HTTP 404 Not Found")] * 2
    samples += [("u3", "timeout after 10s")]
    return notify.RunSummary(
        Counts(**counts),
        started_at=NOW - timedelta(minutes=5),
        finished_at=NOW,
        failure_samples=samples,
    )


def change(run: int, run_id: str, t: Transition, at: datetime = NOW) -> notify.PhaseChange:
    """A run's change from Started (the phase every test here leaves)."""
    return notify.PhaseChange(TASK, run, run_id, Phase.STARTED, t, at)


def test_one_document_per_target_with_the_counts_and_top_failure_reasons() -> None:
    s = spec(
        hook(webhook={"url": HOOK, "secretRef": {"name": "ops-hook", "key": "signing"}}),
        {"email": {"to": ["ops@example.com", "lead@example.com"]}},
        hook(phases=["Paused"]),
    )
    c = {"audience": 10, "sent": 4, "failed": 6}
    docs = notify.notifications(change(3, "run-3", FAILED), s, summary(**c))
    assert len(docs) == 2  # the third entry asks for Paused only
    hook_doc, mail_doc = docs
    body = hook_doc["payload"]
    assert body == mail_doc["payload"]
    assert body["type"] == "pushtask.run.failed"
    assert body["task"] == {"namespace": "shop", "name": "sale"}
    assert (body["run"], body["runId"], body["phase"], body["previousPhase"]) == (
        3,
        "run-3",
        "Failed",
        "Started",
    )
    assert body["reason"] == "RunFailed" and body["message"] == "failure budget spent"
    assert body["counts"] == {
        "audience": 10,
        "pending": 0,
        "sent": 4,
        "failed": 6,
        "skipped": 0,
        "unknown": 0,
        "excluded": 0,
        "duplicates": 0,
    }
    assert body["topFailureReasons"] == [
        {"reason": "HTTP 400 Bad Request", "sampled": 3},
        {"reason": "HTTP 404 Not Found", "sampled": 2},
        {"reason": "timeout after 10s", "sampled": 1},
    ]
    assert body["failureSampleSize"] == 6
    assert body["startedAt"] == "2026-12-07T21:55:00Z" and body["finishedAt"] == body["at"]
    json.dumps(body)  # plain JSON
    # Targets are frozen with the notification; a Secret only by its reference.
    assert hook_doc["target"]["webhook"]["secretRef"] == {"name": "ops-hook", "key": "signing"}
    assert s.message.smtp is not None
    assert mail_doc["target"]["email"] == {
        "to": ["ops@example.com", "lead@example.com"],
        "smtp": s.message.smtp.model_dump(by_alias=True, mode="json", exclude_none=True),
    }
    assert hook_doc["task"] == TASK and hook_doc["run"] == "run-3" and hook_doc["phase"] == "Failed"
    assert hook_doc["created"] == hook_doc["nextAt"] == NOW


def test_ids_are_one_per_run_phase_and_target() -> None:
    s = spec(hook(), {"email": {"to": ["ops@example.com"]}})

    def ids(run_id: str, t: Transition, now: datetime = NOW) -> list[str]:
        docs = notify.notifications(change(1, run_id, t, now), s, summary())
        return [d["_id"] for d in docs]

    first = ids("run-1", FINISHED)
    assert len(set(first)) == 2
    # The same change recorded again later (a reconcile repeated): the same ids.
    assert ids("run-1", FINISHED, NOW + timedelta(seconds=30)) == first
    assert set(ids("run-1", FAILED)).isdisjoint(first)
    assert set(ids("run-2", FINISHED)).isdisjoint(first)
    assert all(i.startswith("run-1.finished.") for i in first)


def test_top_reasons_keep_the_most_frequent_few() -> None:
    samples = [(f"u{i}", f"error {i % 5}") for i in range(50)] + [("x", "error 4")]
    assert [r["reason"] for r in notify.top_reasons(samples)] == ["error 4", "error 0", "error 1"]
    assert notify.top_reasons([]) == []


def test_back_off_doubles_is_capped_and_gives_up_after_an_hour() -> None:
    delays = [notify.retry_delay(n) for n in range(1, 9)]
    assert delays == [10, 20, 40, 80, 160, 320, 600, 600]
    created = now = NOW
    attempts = 1  # the first, at the phase change
    while (at := notify.next_attempt(created, attempts, now)) is not None:
        attempts += 1
        now = at
    assert attempts == 11  # then 10 s, 20 s, ... 600 s apart: about an hour of trying
    assert timedelta(minutes=50) < now - created <= notify.GIVE_UP_AFTER


def test_email_text_says_what_the_json_says() -> None:
    s = spec({"email": {"to": ["ops@example.com"]}})
    c = {"audience": 10, "sent": 4, "failed": 6}
    (doc,) = notify.notifications(change(3, "run-3", FAILED), s, summary(**c))
    subject, text = notify.email_text(doc["payload"])
    assert subject == "PushTask shop/sale run 3: Failed"
    for fact in (
        "Started -> Failed",
        "RunFailed: failure budget spent",
        "audience 10, sent 4, failed 6, skipped 0, unknown 0, pending 0",
        "3 x HTTP 400 Bad Request",
        "of 6 sampled failures",
        "2026-12-07T21:55:00Z",
    ):
        assert fact in text, (fact, text)


def test_headers_verify_with_the_standard_webhooks_package() -> None:
    secret = "whsec_" + base64.b64encode(b"notifications signing key 32 by").decode()
    body = b'{"phase":"Finished"}'
    ts = str(int(datetime.now(UTC).timestamp()))
    headers = standard_headers([signing_key(secret)], "run-1.finished.abc", ts, body)
    assert headers["webhook-id"] == "run-1.finished.abc"
    Webhook(secret).verify(body, headers)  # raises if it does not verify
    assert "webhook-signature" not in standard_headers([], "id", ts, body)


def test_http_answers_are_classified_like_the_webhook_channel() -> None:
    assert classify_http(204).ok
    assert not classify_http(500).final and not classify_http(429).final
    assert not classify_http(408).final
    assert classify_http(400).final and classify_http(404).final and classify_http(410).final


def test_targets_are_named_without_credentials() -> None:
    assert shown_url("https://user:pw@ops.example/h?token=x") == "https://ops.example/h"
    assert describe_target({"webhook": {"url": "https://a:b@h.example/x?t=1"}}) == (
        "webhook https://h.example/x"
    )
    assert describe_target({"email": {"to": ["a@x.test", "b@x.test"]}}) == (
        "e-mail to a@x.test, b@x.test"
    )


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if address.startswith("gone"):
            return "550 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 Message accepted"


class NoSecrets:
    async def secret_value(self, namespace: str, name: str, key: str) -> str | None:
        return None


async def _no_events(*_: Any) -> None:
    return None


def test_email_goes_through_the_tasks_smtp_settings_to_a_real_server() -> None:
    box, port = Mailbox(), free_port()
    ctl = Controller(box, hostname="127.0.0.1", port=port)
    ctl.start()
    try:
        smtp = {"host": "127.0.0.1", "port": port, "starttls": False, "from": "pt@x.test"}
        s = PushTaskSpec.model_validate(
            {
                "audience": {"sources": [{"kind": "inline", "users": ["u1"]}]},
                "message": {"channel": "smtp", "smtp": smtp, "template": {"body": "Hi"}},
                "notify": [
                    {"email": {"to": ["ops@x.test", "lead@x.test"]}},
                    {"email": {"to": ["gone@x.test"]}},
                ],
            }
        )
        docs = notify.notifications(change(1, "run-1", FINISHED), s, summary(sent=9, audience=9))
        # The sender's e-mail step alone (the outbox is the integration tests').
        sender = Notifier(None, NoSecrets(), _no_events)  # type: ignore[arg-type]
        ok, refused = asyncio.run(_both(sender, docs))
    finally:
        ctl.stop()
    assert ok.ok and not refused.ok and refused.final and "550" in refused.detail
    ((mail_from, rcpts, content),) = box.messages
    assert mail_from == "pt@x.test" and rcpts == ["ops@x.test", "lead@x.test"]
    mail = message_from_bytes(content)
    assert mail["Subject"] == "PushTask shop/sale run 1: Finished"
    assert mail["Message-ID"] == f"<{docs[0]['_id']}@pushtask>"
    assert "sent 9" in mail.get_payload()


async def _both(sender: Notifier, docs: list[dict[str, Any]]) -> Any:
    return await sender._email(docs[0]), await sender._email(docs[1])
