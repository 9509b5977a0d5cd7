"""A test send, as people ask for it (`kubectl push test`, the console's "Send a test").

The message is rendered here first, for each recipient, with the given attributes: a
template error is reported as `kubectl push validate` reports one, and nothing is made.
Then the send happens inside the cluster, exactly as a worker's would: a one-shot pod
from the task's worker Deployment's pod template (the same image, ServiceAccount,
security context and settings, so the same network; a task that never ran has no
Deployment yet, and the operator answers with the template its first run would get),
with the channel's Secret keys of the spec as it is now mapped into its environment as
the operator maps them, without the store's URI, running `pushtask-worker test-send`.
Its log holds one outcome per recipient; the pod is deleted once read (and owned by the
PushTask, so the garbage collector takes it in any case). Nothing is written to any
run's ledger or counters: neither this module nor the pod opens the store.
"""

from __future__ import annotations

import copy
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pushtask import testsend
from pushtask.models import API_VERSION, KIND
from pushtask.naming import worker_deployment_name
from pushtask.secretrefs import secret_key_refs
from pushtask_client.taskapi import Cluster, ClusterError

APP_LABEL = "app.kubernetes.io/name"
# The workers' settings a test pod must not get: the store's URI and the run's, and what
# only a long-running worker uses (its lease, its metrics endpoint).
WORKER_ONLY_ENV = frozenset(
    {"PUSHTASK_MONGO_URI", "PUSHTASK_RUN_ID", "PUSHTASK_LEASE_SECONDS", "PUSHTASK_METRICS_PORT",
     "POD_IP", "PUSHTASK_STORE_STATS_FILE", testsend.ENV}
)  # fmt: skip
PROBES = ("livenessProbe", "readinessProbe", "startupProbe")
POLL_SECONDS = 0.5
# The pod's own deadline, plus the time to be scheduled and to start.
WAIT_SECONDS = testsend.DEADLINE_SECONDS + 60


class TestSendProblems(Exception):
    """The message does not render for these recipients (or the spec is invalid): nothing
    was sent. `lines` name the field, as `kubectl push validate` does."""

    __test__ = False

    def __init__(self, lines: Sequence[str]) -> None:
        super().__init__("; ".join(lines))
        self.lines = list(lines)


@dataclass(frozen=True)
class TestSendReport:
    __test__ = False

    pod: str
    outcomes: list[testsend.Outcome]

    @property
    def delivered(self) -> bool:
        return bool(self.outcomes) and all(o.delivered for o in self.outcomes)


def pod_name(task_name: str, nonce: str) -> str:
    # Pod names may be 253 characters; the worker Deployment's name is kept under 200.
    return f"{worker_deployment_name(task_name)[:200]}-test-{nonce}"


def request_for(
    task: Mapping[str, Any], recipients: list[testsend.Recipient], nonce: str
) -> testsend.TestSend:
    """What the pod gets: the task's spec as it is now (the message a person is about to
    run), its audience replaced by the test's recipients (an inline list of a million
    users would not fit in an environment variable, and the test does not read it)."""
    meta = task.get("metadata") or {}
    spec = copy.deepcopy(dict(task.get("spec") or {}))
    spec["audience"] = {"sources": [{"kind": "inline", "users": [r.user for r in recipients]}]}
    ref = {k: str(meta.get(k) or "") for k in ("namespace", "name", "uid")}
    return testsend.TestSend(task=ref, spec=spec, recipients=recipients, nonce=nonce)


def build_pod(deployment: Mapping[str, Any], request: testsend.TestSend) -> dict[str, Any]:
    """The one-shot pod of a test send, from the worker Deployment (its API JSON form)."""
    template = copy.deepcopy(dict(deployment["spec"]["template"]))
    spec: dict[str, Any] = template["spec"]
    containers = spec["containers"]
    container = next((c for c in containers if c.get("name") == "worker"), containers[0])
    # The Secret keys of the spec as it is now, mapped as the operator maps them: the
    # template's are those of the spec its run froze, and the message may name others
    # since (a new signing key, say).
    env = [
        e
        for e in container.get("env") or []
        if e.get("name") not in WORKER_ONLY_ENV
        and not (e.get("valueFrom") or {}).get("secretKeyRef")
    ]
    secrets_now = [
        {"name": r.env, "valueFrom": {"secretKeyRef": {"name": r.secret, "key": r.key}}}
        for r in secret_key_refs(request.spec)
    ]
    container.update(
        command=list(testsend.COMMAND),
        env=[*env, *secrets_now, {"name": testsend.ENV, "value": request.encode()}],
    )
    for key in ("args", "ports", *PROBES):
        container.pop(key, None)
    spec.update(
        containers=[container],
        restartPolicy="Never",
        activeDeadlineSeconds=testsend.DEADLINE_SECONDS,
    )
    labels = {
        k: v
        for k, v in (template.get("metadata") or {}).get("labels", {}).items()
        if not k.endswith("/run")  # the run label: a test belongs to no run
    }
    labels.update({APP_LABEL: testsend.APP, testsend.LABEL: "true"})
    task = request.task
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(task["name"], request.nonce),
            "namespace": task["namespace"],
            "labels": labels,
            # Owned by the task: garbage-collected with it, should this tool not delete it.
            # Not a controller reference, and no blockOwnerDeletion (that needs the right
            # to update the task's finalizers, which a person testing may not have).
            "ownerReferences": [
                {"apiVersion": API_VERSION, "kind": KIND, "name": task["name"], "uid": task["uid"]}
            ],
        },
        "spec": spec,
    }


def pod_failure(pod: Mapping[str, Any]) -> str | None:
    """Why a pod that has not ended will not run (an image it cannot pull, a Secret that
    is not there), None while it may yet."""
    status = pod.get("status") or {}
    for c in status.get("containerStatuses") or []:
        waiting = (c.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in (
            "ErrImagePull", "ImagePullBackOff", "CreateContainerConfigError", "InvalidImageName",
        ):  # fmt: skip
            return f"{waiting['reason']}: {waiting.get('message') or ''}".strip(": ")
    return None


def send_test(
    cluster: Cluster,
    ns: str,
    name: str,
    users: Sequence[str],
    attrs: Any = None,
    *,
    wait_seconds: float = WAIT_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
) -> TestSendReport:
    """Render, then send in a one-shot pod and report per recipient. Raises ValueError
    (the recipients or attributes), TestSendProblems (nothing rendered) or ClusterError."""
    recipients = testsend.recipients_from(users, attrs)
    task = cluster.get(ns, name)
    nonce = secrets.token_hex(5)
    request = request_for(task, recipients, nonce)
    problems = testsend.problems(request.task, request.spec, recipients)
    if problems:
        raise TestSendProblems(problems)
    if len(request.encode()) > testsend.MAX_REQUEST_BYTES:
        raise ValueError(
            f"the message and attributes are too large for a test pod's environment (more "
            f"than {testsend.MAX_REQUEST_BYTES} bytes encoded)"
        )
    deployment = cluster.worker_deployment(ns, name)
    if deployment is None:  # never ran: the operator makes the template its first run would
        deployment = template_from_operator(cluster, ns, name, nonce, sleep=sleep)
    pod = build_pod(deployment, request)
    created = cluster.create_pod(ns, pod)
    try:
        ended = wait_for_pod(cluster, ns, created, wait_seconds, sleep)
        log = cluster.pod_log(ns, created)
    finally:
        cluster.delete_pod(ns, created)
    found = {o.user: o for o in testsend.outcomes(log)}
    outcomes = [
        found.get(r.user)
        or testsend.Outcome(r.user, "failed", 0, None, f"no result: the pod {ended}: {tail(log)}")
        for r in recipients
    ]
    return TestSendReport(created, outcomes)


def template_from_operator(
    cluster: Cluster,
    ns: str,
    name: str,
    nonce: str,
    *,
    wait_seconds: float = testsend.TEMPLATE_WAIT_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """The workers' pod template of a task without a worker Deployment, asked of the
    operator (testsend.TEMPLATE_REQUEST), in the Deployment's shape `build_pod` reads. The
    operator knows the image, ServiceAccount and settings the workers get; the tools do
    not. Raises ClusterError when it does not answer this request in time."""
    cluster.ask_test_template(ns, name, nonce)
    deadline = time.monotonic() + wait_seconds
    while True:
        got = cluster.test_template(ns, name)
        answers = ((got or {}).get("metadata") or {}).get("annotations") or {}
        if got is not None and answers.get(testsend.TEMPLATE_ANSWERS) == nonce:
            return {"spec": {"template": got["template"]}}
        if time.monotonic() > deadline:
            raise ClusterError(
                f"pushtask/{name} has no worker Deployment yet (it never ran), and the "
                f"operator did not answer the request for its workers' pod template within "
                f"{wait_seconds:.0f}s: is it running? (kubectl describe pushtask {name} "
                "shows its Events)"
            )
        sleep(POLL_SECONDS)


def wait_for_pod(
    cluster: Cluster, ns: str, pod: str, wait_seconds: float, sleep: Callable[[float], None]
) -> str:
    """Wait for the pod to end; returns how it ended ("Succeeded", "Failed ..."). Raises
    ClusterError when it cannot run or takes too long."""
    deadline = time.monotonic() + wait_seconds
    while True:
        got = cluster.read_pod(ns, pod)
        status = got.get("status") or {}
        phase = status.get("phase")
        if phase in ("Succeeded", "Failed"):
            reason = status.get("reason")  # DeadlineExceeded: activeDeadlineSeconds
            return f"{phase}" + (f" ({reason})" if reason else "")
        problem = pod_failure(got)
        if problem is not None:
            raise ClusterError(f"test pod {pod} cannot run: {problem}")
        if time.monotonic() > deadline:
            raise ClusterError(f"test pod {pod} did not end within {wait_seconds:.0f}s ({phase})")
        sleep(POLL_SECONDS)


def tail(log: str, lines: int = 5) -> str:
    return " | ".join(log.strip().splitlines()[-lines:]) or "(empty log)"


def outcome_rows(report: TestSendReport) -> list[list[str]]:
    """The table `kubectl push test` prints (and the console shows)."""
    rows = [["USER", "RESULT", "ATTEMPTS", "STATUS", "DETAIL"]]
    for o in report.outcomes:
        status = "-" if o.status is None else str(o.status)
        rows.append([o.user, o.outcome, str(o.attempts), status, o.detail or "-"])
    return rows
