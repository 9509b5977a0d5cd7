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
    many = [f"u{i}" for i in range(testsend.MAX_RECIPIENTS + 1)]
    with pytest.raises(ValueError, match="a test goes to at most 20"):
        testsend.recipients_from(many, None)


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
    assert testsend.TestSend.decode(request.encode()) == request


# -- the people's side: the pod, the command line ------------------------------------------

HOOKED: dict[str, Any] = {
    **spec("Hi {{ user }}"),
    "run": 2,
    "workers": 3,
}
HOOKED["message"]["webhook"]["secretRef"] = {"name": "hook", "key": "hmac"}


def task_object(spec_doc: dict[str, Any]) -> dict[str, Any]:
    meta = {**TASK, "resourceVersion": "7"}
    return {"apiVersion": "pushtask.dev/v1alpha1", "kind": "PushTask", "metadata": meta,
            "spec": spec_doc, "status": {"phase": "Finished", "counts": {"sent": 10}}}  # fmt: skip


def worker_deployment() -> dict[str, Any]:
    from pushtask_operator.deployment import build_worker_deployment
    from tests.unit.test_operator_deployment import SETTINGS

    return build_worker_deployment(TASK, HOOKED, "shop.promo.2.8d6f7a52", SETTINGS, replicas=0)


def test_the_pod_is_made_like_the_workers_without_the_store() -> None:
    from pushtask_client.testsend import build_pod, request_for

    deployment = worker_deployment()
    recipients = [testsend.Recipient("a", {"name": "Ann"})]
    request = request_for(task_object(HOOKED), recipients, "ab12cd34ef")
    pod = build_pod(deployment, request)
    template = deployment["spec"]["template"]
    assert pod["metadata"]["name"] == "promo-worker-test-ab12cd34ef"
    assert pod["metadata"]["namespace"] == "shop"
    assert pod["metadata"]["labels"] == {
        "app.kubernetes.io/name": "pushtask-test-send",
        "pushtask.dev/task": "promo",
        "pushtask.dev/test-send": "true",
    }
    assert pod["metadata"]["ownerReferences"] == [
        {"apiVersion": "pushtask.dev/v1alpha1", "kind": "PushTask", "name": "promo",
         "uid": TASK["uid"]}
    ]  # fmt: skip
    spec_ = pod["spec"]
    assert spec_["restartPolicy"] == "Never"
    assert spec_["activeDeadlineSeconds"] == testsend.DEADLINE_SECONDS
    for same in ("serviceAccountName", "automountServiceAccountToken", "securityContext",
                 "volumes", "enableServiceLinks"):  # fmt: skip
        assert spec_[same] == template["spec"][same], same
    (container,) = spec_["containers"]
    worker = template["spec"]["containers"][0]
    assert container["image"] == worker["image"]
    assert container["securityContext"] == worker["securityContext"]
    assert container["command"] == ["pushtask-worker", "test-send"]
    assert "ports" not in container
    env = {e["name"]: e for e in container["env"]}
    # The channel's Secret as the workers get it; no store, no run.
    assert env["PUSHTASK_WEBHOOK_SECRET"] == {
        "name": "PUSHTASK_WEBHOOK_SECRET",
        "valueFrom": {"secretKeyRef": {"name": "hook", "key": "hmac"}},
    }
    assert not {"PUSHTASK_MONGO_URI", "PUSHTASK_RUN_ID", "POD_IP"} & set(env)
    sent = testsend.TestSend.decode(env[testsend.ENV]["value"])
    assert sent.recipients == recipients and sent.nonce == "ab12cd34ef"
    assert sent.task == {k: TASK[k] for k in ("namespace", "name", "uid")}
    # The task's message as it is now; its audience (maybe a million) is not carried.
    assert sent.spec["message"] == HOOKED["message"]
    assert sent.spec["audience"] == {"sources": [{"kind": "inline", "users": ["a"]}]}
    # The Deployment itself is not changed by building the pod.
    assert deployment == worker_deployment()


def test_the_pod_takes_the_secrets_of_the_spec_as_it_is_now() -> None:
    """A run froze its spec (and its Deployment's Secret env); the message edited since
    names another key: the test uses that one, as the next run would."""
    from pushtask_client.testsend import build_pod, request_for

    now = json.loads(json.dumps(HOOKED))
    now["message"]["webhook"]["secretRef"] = {"name": "hook-2026", "key": "current"}
    pod = build_pod(worker_deployment(), request_for(task_object(now), [], "n"))
    refs = [
        (e["name"], e["valueFrom"]["secretKeyRef"])
        for e in pod["spec"]["containers"][0]["env"]
        if "secretKeyRef" in (e.get("valueFrom") or {})
    ]
    assert refs == [("PUSHTASK_WEBHOOK_SECRET", {"name": "hook-2026", "key": "current"})]


def test_a_pod_that_cannot_run_says_why() -> None:
    from pushtask_client.testsend import pod_failure

    waiting = {"state": {"waiting": {"reason": "CreateContainerConfigError",
                                     "message": 'secret "hook" not found'}}}  # fmt: skip
    assert pod_failure({"status": {"containerStatuses": [waiting]}}) == (
        'CreateContainerConfigError: secret "hook" not found'
    )
    pending = {"state": {"waiting": {"reason": "ContainerCreating"}}}
    assert pod_failure({"status": {"containerStatuses": [pending]}}) is None
    assert pod_failure({"status": {"phase": "Pending"}}) is None


class RecordingCluster:
    """The Cluster calls a test send makes, recorded; the pod "runs" nothing."""

    def __init__(self, task: dict[str, Any]) -> None:
        self.task = task
        self.calls: list[str] = []

    def get(self, ns: str, name: str) -> dict[str, Any]:
        self.calls.append(f"get {ns}/{name}")
        return self.task

    def worker_deployment(self, ns: str, name: str) -> dict[str, Any] | None:
        self.calls.append("deployment")
        return None

    def ask_test_template(self, ns: str, name: str, nonce: str) -> None:
        self.calls.append(f"ask {ns}/{name}")
        self.nonce = nonce

    def test_template(self, ns: str, name: str) -> dict[str, Any] | None:
        self.calls.append("template")
        return None  # the operator does not answer

    def create_pod(self, ns: str, pod: dict[str, Any]) -> str:
        raise AssertionError("no pod may be made")


def test_cli_reports_template_errors_as_validate_does_and_makes_no_pod(
    capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    from pushtask_client.cli import cmd_test

    broken = spec("{{ user }} {{ code }}")
    cluster: Any = RecordingCluster(task_object(broken))
    attrs = tmp_path / "attrs.yaml"
    attrs.write_text("- {id: a, name: Ann, code: X1}\n- {id: b, name: Bo}\n")
    assert cmd_test(cluster, "shop", "promo", "a,b", str(attrs)) == 2
    assert capsys.readouterr().err.splitlines() == [
        "pushtask/promo: spec.message.template field 'body', line 1: 'code' is undefined (user b)"
    ]
    assert cluster.calls == ["get shop/promo"]


class AnsweringCluster(RecordingCluster):
    """The operator answers a request for the pod template, after one stale answer (the
    PodTemplate of an earlier test, another nonce)."""

    def __init__(self, task: dict[str, Any], answer: dict[str, Any]) -> None:
        super().__init__(task)
        self.answer = answer
        self.reads = 0

    def test_template(self, ns: str, name: str) -> dict[str, Any] | None:
        self.calls.append("template")
        self.reads += 1
        nonce = "earlier" if self.reads == 1 else self.nonce
        return {"metadata": {"annotations": {testsend.TEMPLATE_ANSWERS: nonce}},
                "template": self.answer}  # fmt: skip


def test_a_task_that_never_ran_is_tested_from_the_operators_template() -> None:
    """No worker Deployment yet: the tool asks the operator (an annotation with a fresh
    nonce) and waits for the PodTemplate answering that nonce, not an earlier one."""
    from pushtask_client.testsend import template_from_operator

    answer = worker_deployment()["spec"]["template"]
    cluster: Any = AnsweringCluster(task_object(HOOKED), answer)
    slept: list[float] = []
    got = template_from_operator(cluster, "shop", "promo", "n1", sleep=slept.append)
    assert got == {"spec": {"template": answer}}
    assert cluster.nonce == "n1" and cluster.calls == ["ask shop/promo", "template", "template"]
    assert slept == [0.5]


def test_a_task_that_never_ran_and_no_operator_to_answer_says_so() -> None:
    from pushtask_client.cli import CliError, cmd_test
    from pushtask_client.taskapi import ClusterError
    from pushtask_client.testsend import template_from_operator

    plain = spec("{{ user }}")
    plain["message"]["template"]["title"] = "Hi"
    cluster: Any = RecordingCluster(task_object(plain))
    with pytest.raises(ClusterError, match=r"operator did not answer .* within 0s: is it running"):
        template_from_operator(cluster, "shop", "promo", "n2", wait_seconds=0.0)
    assert cluster.calls == ["ask shop/promo", "template"]
    with pytest.raises(CliError, match="names no user"):
        cmd_test(cluster, "shop", "promo", ",", None)


def test_cli_parses_the_test_command() -> None:
    from pushtask_client.cli import completions, parser, resolve_flags

    args = parser().parse_args(["test", "promo", "--to", "a,b", "--attrs", "f.json", "-n", "shop"])
    assert (args.command, args.name, args.to, args.attrs) == ("test", "promo", "a,b", "f.json")
    assert resolve_flags("test", vars(args)).namespace == "shop"
    with pytest.raises(SystemExit):
        parser().parse_args(["test", "promo"])  # --to is required
    with pytest.raises(ValueError, match="-o json: test has no output formats"):
        resolve_flags("test", {"output": "json"})
    names = lambda: ["promo"]  # noqa: E731
    assert completions(["te"], names, list) == ["test"]
    assert completions(["test", ""], names, list) == ["promo"]
    assert completions(["test", "promo", "--"], names, list)[-2:] == ["--to", "--attrs"]
    assert completions(["test", "promo", "--to", ""], names, list) == []


def test_outcome_table() -> None:
    from pushtask_client.cli import format_table
    from pushtask_client.testsend import TestSendReport, outcome_rows

    report = TestSendReport("p", [testsend.Outcome("a", "sent", 1, 200),
                                  testsend.Outcome("b", "failed", 3, 503, "gave up")])  # fmt: skip
    assert not report.delivered
    assert format_table(outcome_rows(report)).splitlines() == [
        "USER   RESULT   ATTEMPTS   STATUS   DETAIL",
        "a      sent     1          200      -",
        "b      failed   3          503      gave up",
    ]


# -- the console's "Send a test" ----------------------------------------------------------


def test_console_form_and_its_errors(tmp_path: Any) -> None:
    """Over a real socket: the token is required, the form's errors come back by field, a
    message that does not render comes back as the validation errors do (422, each
    line), and no pod is made for either."""
    import asyncio

    from aiohttp.test_utils import TestClient, TestServer

    from pushtask_console.app import Console, make_app
    from pushtask_console.auth import Auth
    from pushtask_console.views import parse_test_form

    assert parse_test_form(" a, b ,", '{"name": "Ann"}') == (["a", "b"], {"name": "Ann"})
    assert parse_test_form(["a"], "") == (["a"], None)
    broken = spec("{{ user }} {{ code }}")
    cluster: Any = RecordingCluster(task_object(broken))
    console = Console(cluster=cluster, auth=Auth("the-token"), namespaces=["shop"])
    path = "/api/tasks/shop/promo/test"
    auth = {"Authorization": "Bearer the-token"}

    async def run() -> None:
        async with TestClient(TestServer(make_app(console), host="127.0.0.1")) as client:
            got = await client.post(path, json={"to": "a"})
            assert got.status == 401
            got = await client.post(path, json={"to": " ", "attrs": "{"}, headers=auth)
            assert got.status == 400
            assert [f["field"] for f in (await got.json())["fields"]] == ["to", "attrs"]
            got = await client.post(path, json={"to": "a", "attrs": '{"name": "A"}'}, headers=auth)
            assert got.status == 422
            answer = await got.json()
            assert answer["error"] == "pushtask/promo: the message does not render; nothing sent"
            assert [f["message"] for f in answer["fields"]] == [
                "spec.message.template field 'body', line 1: 'code' is undefined (user a)"
            ]
            got = await client.post("/api/tasks/other/promo/test", json={"to": "a"}, headers=auth)
            assert got.status == 404

    asyncio.run(run())
    assert cluster.calls == ["get shop/promo"]
