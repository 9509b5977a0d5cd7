"""The operator's one policy for Kubernetes API errors, class by class.

Pure: each case is the `ApiException` (status, headers, Status body) or transport error
the `kubernetes` client raises, run through `api_error_policy`; the handler helpers that
act on the result are driven with a recorder of the calls they make.
"""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any, cast

import kopf
import pytest
import urllib3
from kubernetes.client import V1Secret
from kubernetes.client.exceptions import ApiException

from pushtask.store import Store
from pushtask_operator import handlers
from pushtask_operator import kube as kube_module
from pushtask_operator.kube import (
    MAX_DELAY,
    DeploymentRejected,
    Kube,
    KubeApiError,
    api_error_policy,
    retry_after,
)
from pushtask_operator.reconcile import ApiProblem, make_condition, with_api_problem
from pushtask_operator.settings import OperatorSettings

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def api_error(
    status: int,
    reason: str = "",
    *,
    message: str | None = None,
    status_reason: str | None = None,
    headers: dict[str, str] | None = None,
    details: dict[str, Any] | None = None,
    body: str | None = None,
) -> ApiException:
    """What the client raises: status line, headers and the metav1.Status body."""
    exc = ApiException(status=status, reason=reason)
    if body is None and (message is not None or status_reason is not None or details):
        doc: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "status": "Failure"}
        doc.update(code=status, message=message, reason=status_reason, details=details or {})
        body = json.dumps(doc)
    exc.body = body
    exc.headers = headers
    return exc


def temporary(exc: BaseException, what: str = "read Deployment ns/x") -> kopf.TemporaryError:
    mapped = api_error_policy(exc, what)
    assert isinstance(mapped, kopf.TemporaryError), mapped
    return mapped


# -- passing trouble: kopf.TemporaryError with a delay -----------------------------------


def test_conflict_is_retried_soon() -> None:
    err = temporary(api_error(409, "Conflict", message="the object has been modified"))
    assert err.delay == 1.0
    assert "read Deployment ns/x" in str(err) and "the object has been modified" in str(err)


def test_throttling_honours_retry_after_header_then_status_details() -> None:
    assert temporary(api_error(429, "Too Many Requests", headers={"Retry-After": "7"})).delay == 7
    # Header names are case-insensitive (urllib3 hands over an HTTPHeaderDict or a dict).
    assert temporary(api_error(429, headers={"retry-after": "2"})).delay == 2
    details = {"retryAfterSeconds": 3}
    assert temporary(api_error(429, message="slow down", details=details)).delay == 3
    assert temporary(api_error(429, "Too Many Requests")).delay == 5  # said nothing


def test_server_errors_are_retried_with_retry_after_as_a_date() -> None:
    for code in (500, 502, 503, 504):
        assert temporary(api_error(code, "Server Error")).delay == 10
    later = format_datetime(datetime.fromtimestamp(1_800_000_030, UTC), usegmt=True)
    exc = api_error(503, "Service Unavailable", headers={"Retry-After": later})
    assert retry_after(exc, now=1_800_000_000) == 30


def test_retry_after_is_bounded() -> None:
    # A header must neither freeze a task's status for a day nor make a busy loop.
    assert temporary(api_error(429, headers={"Retry-After": "86400"})).delay == MAX_DELAY
    assert temporary(api_error(503, headers={"Retry-After": "0"})).delay == 1
    assert retry_after(api_error(429, headers={"Retry-After": "soon"})) is None


# Made, never connected: what the exceptions name as where it happened.
POOL = urllib3.HTTPSConnectionPool("127.0.0.1", 6443)
CONNECTION = urllib3.connection.HTTPSConnection("127.0.0.1", 6443)


@pytest.mark.parametrize(
    "exc",
    [
        urllib3.exceptions.MaxRetryError(
            POOL, "/apis", urllib3.exceptions.NewConnectionError(CONNECTION, "refused")
        ),
        urllib3.exceptions.ReadTimeoutError(POOL, "/apis", "read timed out"),
        urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError()),
        ConnectionRefusedError(111, "Connection refused"),
        TimeoutError("timed out"),
        ApiException(status=0, reason="SSLError\nEOF occurred in violation of protocol"),
    ],
    ids=["refused", "read-timeout", "reset", "os-refused", "timeout", "tls"],
)
def test_unreachable_api_server_is_retried(exc: BaseException) -> None:
    err = temporary(exc, "patch status of PushTask ns/sale")
    assert err.delay == 5 and "patch status of PushTask ns/sale" in str(err)
    if isinstance(exc, urllib3.exceptions.MaxRetryError):
        assert "NewConnectionError" in str(err) and "Max retries" not in str(err)


# -- 422 on the worker Deployment: Degraded, not retried ---------------------------------

INVALID = (
    'Deployment.apps "sale-worker" is invalid: spec.template.spec.containers[0].resources'
    '.requests: Invalid value: "2": must be less than or equal to cpu limit of 1'
)


def test_invalid_worker_deployment_degrades_the_task() -> None:
    exc = api_error(422, "Unprocessable Entity", message=INVALID, status_reason="Invalid")
    mapped = api_error_policy(exc, "apply Deployment shop/sale-worker", workload=True)
    assert isinstance(mapped, DeploymentRejected)
    problem = mapped.problem
    assert problem.degraded and problem.reason == "DeploymentRejected"
    assert problem.message.startswith("apply Deployment shop/sale-worker: HTTP 422 Invalid:")
    assert INVALID in problem.message


def test_invalid_elsewhere_is_an_ordinary_api_error() -> None:
    exc = api_error(422, "Unprocessable Entity", message="status.phase: Unsupported value")
    mapped = api_error_policy(exc, "patch status of PushTask shop/sale")
    assert type(mapped) is KubeApiError and not mapped.problem.degraded
    assert mapped.problem.reason == "ApiUnprocessableEntity"


# -- everything else: a condition and an Event with the API's message ---------------------


@pytest.mark.parametrize(
    ("code", "phrase", "status_reason", "reason"),
    [
        (403, "Forbidden", "Forbidden", "ApiForbidden"),
        (401, "Unauthorized", "Unauthorized", "ApiUnauthorized"),
        (400, "Bad Request", "BadRequest", "ApiBadRequest"),
        (404, "Not Found", "NotFound", "ApiNotFound"),  # on a write: the object is gone
        (413, "Request Entity Too Large", None, "ApiRequestEntityTooLarge"),
    ],
)
def test_other_client_errors_carry_the_api_message(
    code: int, phrase: str, status_reason: str | None, reason: str
) -> None:
    message = f'secrets "crm" is {phrase.lower()} for this test'
    exc = api_error(code, phrase, message=message, status_reason=status_reason)
    mapped = api_error_policy(exc, "read Secret shop/crm")
    assert type(mapped) is KubeApiError and mapped.status == code
    assert mapped.problem == ApiProblem(
        reason, f"read Secret shop/crm: HTTP {code} {reason[3:]}: {message}"
    )


def test_an_error_without_a_status_body_uses_the_reason_phrase() -> None:
    mapped = api_error_policy(api_error(403, "Forbidden", body="<html>proxy</html>"), "read x")
    assert isinstance(mapped, KubeApiError)
    assert mapped.problem.message == "read x: HTTP 403 Forbidden: Forbidden"


def test_what_is_not_an_api_error_is_left_alone() -> None:
    assert api_error_policy(ValueError("a bug"), "read x") is None
    assert api_error_policy(KeyError("metadata"), "read x") is None


# -- the client wrapper ----------------------------------------------------------------


def test_every_call_goes_through_the_policy() -> None:
    kube = Kube()

    def refuse(*_: Any) -> None:
        raise api_error(403, "Forbidden", message="no", status_reason="Forbidden")

    def bug(*_: Any) -> None:
        raise ValueError("a bug")

    with pytest.raises(KubeApiError) as caught:
        asyncio.run(kube._call("read Secret ns/s", refuse))
    assert isinstance(caught.value.__cause__, ApiException)  # the original stays attached
    with pytest.raises(DeploymentRejected):
        exc = api_error(422, "Unprocessable Entity", message=INVALID)
        asyncio.run(kube._call("apply", lambda: (_ for _ in ()).throw(exc), workload=True))
    with pytest.raises(ValueError, match="a bug"):
        asyncio.run(kube._call("read", bug))


def test_a_read_of_something_missing_is_none() -> None:
    def missing(*_: Any, **__: Any) -> None:
        raise api_error(404, "Not Found", message='secrets "s" not found')

    assert Kube()._get(missing, "s", "ns") is None


def test_a_secret_value_is_read_decoded_through_the_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The notification sender's one read of a Secret's value (notifier.py)."""
    stored = V1Secret(data={"hmac": base64.b64encode(b"whsec_abc\n").decode()})

    class CoreV1:
        def __init__(self, _: Any) -> None:
            pass

        def read_namespaced_secret(self, name: str, namespace: str, **_: Any) -> V1Secret:
            if name == "ops-hook":
                return stored
            if name == "private":
                raise api_error(403, "Forbidden", message="no", status_reason="Forbidden")
            raise api_error(404, "Not Found", message=f'secrets "{name}" not found')

    monkeypatch.setattr(kube_module.client, "CoreV1Api", CoreV1)
    kube = Kube()
    monkeypatch.setattr(kube, "api", lambda: None)
    assert asyncio.run(kube.secret_value("shop", "ops-hook", "hmac")) == "whsec_abc\n"
    assert asyncio.run(kube.secret_value("shop", "ops-hook", "other")) is None
    assert asyncio.run(kube.secret_value("shop", "gone", "hmac")) is None
    with pytest.raises(KubeApiError, match="read Secret shop/private"):
        asyncio.run(kube.secret_value("shop", "private", "hmac"))


# -- showing a problem: conditions (pure) and the handler's helpers -----------------------


def conditions() -> list[dict[str, Any]]:
    kw: dict[str, Any] = {"generation": 3, "now": NOW, "previous": []}
    return [
        make_condition("Ready", True, "RunStarted", "sending", **kw),
        make_condition("SpecValid", True, "Valid", "ok", **kw),
        make_condition("Degraded", False, "AsExpected", "", **kw),
    ]


def test_a_refused_deployment_shows_degraded_and_not_ready() -> None:
    problem = ApiProblem("DeploymentRejected", "apply Deployment ...: invalid", degraded=True)
    shown = {c["type"]: c for c in with_api_problem(conditions(), problem, generation=3, now=NOW)}
    assert shown["Degraded"]["status"] == "True"
    assert shown["Degraded"]["reason"] == "DeploymentRejected"
    assert shown["Ready"]["status"] == "False" and shown["Ready"]["message"] == problem.message
    assert shown["SpecValid"] == conditions()[1]  # untouched
    # Retrying will not change the answer: stalled for kstatus, Flux and Argo CD.
    assert shown["Stalled"]["status"] == "True" and shown["Reconciling"]["status"] == "False"
    assert shown["Stalled"]["reason"] == "DeploymentRejected"


def test_another_api_problem_shows_on_ready_only() -> None:
    problem = ApiProblem("ApiForbidden", "read Secret ns/s: HTTP 403 Forbidden: no")
    later = datetime(2026, 12, 2, 12, 5, tzinfo=UTC)
    once = with_api_problem(conditions(), problem, generation=3, now=NOW)
    again = with_api_problem(once, problem, generation=3, now=later)
    assert once == again  # nothing to patch on the next tick: the time of the flip stays
    shown = {c["type"]: c for c in once}
    assert shown["Ready"]["reason"] == "ApiForbidden" and shown["Degraded"]["status"] == "False"
    assert [c["type"] for c in once] == ["Ready", "SpecValid", "Degraded", "Reconciling", "Stalled"]
    alone = with_api_problem([], problem, generation=1, now=NOW)
    assert [c["type"] for c in alone] == ["Ready", "Reconciling", "Stalled"]


def test_a_problem_retried_until_it_goes_is_reconciling_not_stalled() -> None:
    waiting = ApiProblem("LedgerNotDeleted", "deleting: MongoDB unreachable", retried=True)
    shown = {c["type"]: c for c in with_api_problem(conditions(), waiting, generation=3, now=NOW)}
    assert shown["Ready"]["status"] == "False" and shown["Ready"]["reason"] == "LedgerNotDeleted"
    assert shown["Reconciling"]["status"] == "True" and shown["Stalled"]["status"] == "False"


class Calls:
    """Records what the helpers ask of the API; `fail` is what the next apply raises,
    `refuse` what every Secret read raises."""

    def __init__(self, fail: Exception | None = None, refuse: Exception | None = None) -> None:
        self.fail = fail
        self.refuse = refuse
        self.applied = 0
        self.patches: list[dict[str, Any]] = []

    async def secret_keys(self, namespace: str, name: str) -> set[str] | None:
        if self.refuse is not None:
            raise self.refuse
        return None

    async def read_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        return None  # read beside the validation (the reconcile gathers side by side)

    async def apply_deployment(self, body: Any) -> None:
        self.applied += 1
        if self.fail is not None:
            raise self.fail

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.patches.append(status)


def runtime(calls: Calls, events: list[tuple[str, str, str]]) -> handlers.Runtime:
    return handlers.Runtime(
        settings=OperatorSettings(),
        store=cast(Store, None),  # the helpers under test never reach the store
        kube=cast(Kube, calls),
        events=lambda body, type_, reason, message: events.append((type_, reason, message)),
    )


def test_a_refused_deployment_is_not_sent_again_until_it_changes() -> None:
    exc = api_error(422, "Unprocessable Entity", message=INVALID, status_reason="Invalid")
    mapped = api_error_policy(exc, "apply Deployment shop/sale-worker", workload=True)
    assert isinstance(mapped, DeploymentRejected)
    calls, state = Calls(fail=mapped), handlers.TaskState()
    rt = runtime(calls, [])

    async def ticks() -> list[ApiProblem | None]:
        out = []
        for key in [("h1", 3)] * 5 + [("h1", 0)] + [("h2", 0)]:
            if key == ("h2", 0):
                calls.fail = None  # the chart's values were fixed: a new template
            out.append(await handlers._apply_worker_deployment(rt, state, {}, key))
        return out

    results = asyncio.run(ticks())
    assert results[:6] == [mapped.problem] * 6 and results[6] is None
    assert calls.applied == 3  # once for h1 at 3 replicas, once at 0, once for h2
    assert state.rejected is None


def test_an_api_problem_is_shown_once() -> None:
    calls, events = Calls(), list[tuple[str, str, str]]()
    rt, state = runtime(calls, events), handlers.TaskState()
    body = {
        "metadata": {"name": "sale", "namespace": "shop", "generation": 3},
        "status": {"phase": "Started", "conditions": conditions()},
    }
    problem = ApiProblem("ApiForbidden", "read Secret shop/s: HTTP 403 Forbidden: no")

    async def ticks() -> None:
        for _ in range(3):
            await handlers._show_api_problem(rt, body, state, problem)

    asyncio.run(ticks())
    assert events == [("Warning", "ApiForbidden", problem.message)]
    (patch,) = calls.patches  # the conditions are written once, then already shown
    ready = next(c for c in patch["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["message"] == problem.message


def test_a_refusal_is_shown_when_the_next_tick_sees_it_again() -> None:
    """A just-started API server answers 403 until its RBAC caches are filled: one refusal
    alone is looked at again, not shown; the same refusal twice in a row is."""
    forbidden = api_error(
        403,
        "Forbidden",
        status_reason="Forbidden",
        message='secrets "pushtask-mongodb" is forbidden',
    )
    refused = api_error_policy(forbidden, "read Secret shop/pushtask-mongodb")
    assert isinstance(refused, KubeApiError)
    calls, events = Calls(refuse=refused), list[tuple[str, str, str]]()
    rt, memo = runtime(calls, events), kopf.Memo()
    body = {
        "metadata": {
            "name": "sale",
            "namespace": "shop",
            "uid": "0123456789abcdef",
            "generation": 1,
            "creationTimestamp": "2026-12-02T12:00:00Z",
        },
        "spec": {
            "audience": {"sources": [{"kind": "inline", "users": ["u1"]}]},
            "message": {
                "channel": "webhook",
                "webhook": {"url": "http://hook"},
                "template": {"body": "hi"},
            },
        },
        "status": {},
    }

    async def tick() -> None:
        assert await handlers.reconcile(rt, body, memo) is None

    asyncio.run(tick())
    assert events == [] and calls.patches == []  # seen once: looked at again, not shown
    asyncio.run(tick())
    assert events == [("Warning", "ApiForbidden", refused.problem.message)]
    (patch,) = calls.patches
    ready = next(c for c in patch["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and "is forbidden" in ready["message"]
    asyncio.run(tick())
    assert len(events) == 1 and len(calls.patches) == 1  # shown once, not per tick
