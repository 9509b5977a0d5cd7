"""Test sends (`kubectl push test`), their pure parts: each built-in channel marks a test
where its receiver sees it and leaves a real send as it was; a test's idempotency key
is never a real one; recipients and attributes; the local render check; the outcome
lines of the pod's log."""

from __future__ import annotations

import json
from dataclasses import replace
from email import message_from_string
from typing import Any

import pytest

from pushtask import testsend
from pushtask.planning import idempotency_key
from pushtask_worker.channels import ChannelContext, Delivery
from pushtask_worker.channels.smtp import SmtpChannel
from pushtask_worker.channels.webhook import TEST_HEADER, encode_body
from tests.unit.test_mobile_channels import FCM, apns_channel
from tests.unit.test_worker_channels import delivery

TASK = {"namespace": "shop", "name": "promo", "uid": "8d6f7a52-2b1e-4c55-9a0e-1f2e3d4c5b6a"}


def test_webhook_body_says_test_only_for_a_test() -> None:
    real = json.loads(encode_body(delivery("u1")))
    assert "test" not in real
    assert json.loads(encode_body(delivery("u1", test=True))) == {**real, "test": True}
    assert TEST_HEADER == "PushTask-Test"  # the header itself: tests/integration


def test_smtp_header_only_for_a_test() -> None:
    ch = SmtpChannel(ChannelContext({"host": "h", "from": "p@x.test"}))
    real = message_from_string(ch.build(delivery("a@x.test"), "a@x.test").as_string())
    test = message_from_string(ch.build(delivery("a@x.test", test=True), "a@x.test").as_string())
    assert real["X-PushTask-Test"] is None
    assert test["X-PushTask-Test"] == "true"


def test_fcm_data_field_only_for_a_test() -> None:
    from pushtask_worker.channels.fcm import FcmChannel

    ch = FcmChannel(ChannelContext({**FCM, "projectId": "p-123"}, env={}))
    d = Delivery({}, 1, "r", "u1", {"title": "T", "body": "B"}, {}, "k")
    assert "test" not in json.loads(ch.body(d, "tok"))["message"]["data"]
    data = json.loads(ch.body(replace(d, test=True), "tok"))["message"]["data"]
    assert data == {"idempotencyKey": "k", "test": "true"}  # FCM data values are strings


def test_apns_custom_key_only_for_a_test() -> None:
    ch = apns_channel()
    d = Delivery({}, 1, "r", "u1", {"title": "T", "body": "B"}, {}, "k")
    assert "test" not in json.loads(ch.payload(d))
    assert json.loads(ch.payload(replace(d, test=True)))["test"] is True


def test_a_test_key_is_never_a_real_key_and_new_for_each_test() -> None:
    real = idempotency_key(TASK["uid"], 1, "u1")
    first, again = testsend.idempotency_key("n1", "u1"), testsend.idempotency_key("n2", "u1")
    assert real not in (first, again) and first != again
    assert first == testsend.idempotency_key("n1", "u1")  # the same on every attempt
    assert len(first) == len(real) == 64


def test_recipients_with_shared_or_own_attributes() -> None:
    assert testsend.recipients_from(["a", " b", "a", ""], None) == [
        testsend.Recipient("a"),
        testsend.Recipient("b"),
    ]
    shared = testsend.recipients_from(["a", "b"], {"name": "Ann"})
    assert [r.attrs for r in shared] == [{"name": "Ann"}, {"name": "Ann"}]
    own = testsend.recipients_from(["a", "b"], [{"id": "b", "email": "b@x.test"}])
    assert own == [testsend.Recipient("a"), testsend.Recipient("b", {"email": "b@x.test"})]
    with pytest.raises(ValueError, match="not in --to: z"):
        testsend.recipients_from(["a"], [{"id": "z"}])
    with pytest.raises(ValueError, match="string `id`"):
        testsend.recipients_from(["a"], [{"name": "x"}])
    with pytest.raises(ValueError, match="must be an object"):
        testsend.recipients_from(["a"], "text")
    with pytest.raises(ValueError, match="names no user"):
        testsend.recipients_from([" "], None)


def spec(body: str, **message: Any) -> dict[str, Any]:
    return {
        "audience": {"sources": [{"kind": "inline", "users": ["x"]}]},
        "message": {
            "channel": "webhook",
            "webhook": {"url": "https://hooks.example/x"},
            "template": {"title": "Hi {{ name }}", "body": body},
            **message,
        },
    }


def test_problems_name_the_field_as_validate_does() -> None:
    ann = testsend.Recipient("a", {"name": "Ann"})
    nobody = testsend.Recipient("b")
    assert testsend.problems(TASK, spec("{{ user }} in run {{ run }}"), [ann]) == []
    assert testsend.problems(TASK, spec("{{ user }}"), [ann, nobody]) == [
        "spec.message.template field 'title', line 1: 'name' is undefined (user b)"
    ]
    assert testsend.problems(TASK, spec("Hello\n{{ user "), [ann]) == [
        "spec.message.template field 'body', line 2: unexpected end of template, expected "
        "'end of print statement'."
    ]
    assert testsend.problems(TASK, {"message": {}}, [ann]) == [
        "spec.audience: Field required",
        "spec.message.template: Field required",
    ]


def test_outcome_lines_are_found_among_the_logs() -> None:
    sent = testsend.Outcome("a", "sent", 1, 200)
    failed = testsend.Outcome("b", "failed", 3, 503, "gave up after 3 attempts: HTTP 503")
    log = "\n".join(
        [
            json.dumps({"level": "info", "msg": "starting", "user": "a", "outcome": "x"}),
            sent.line(),
            "not json {",
            failed.line(),
        ]
    )
    assert testsend.outcomes(log) == [sent, failed]
    assert sent.delivered and not failed.delivered


def test_the_request_survives_its_trip_through_the_environment() -> None:
    request = testsend.TestSend(TASK, spec("x"), [testsend.Recipient("a", {"n": 1})], "n0")
    assert testsend.TestSend.from_json(request.to_json()) == request
