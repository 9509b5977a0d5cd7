"""The worker Deployment of a PushTask, built as a plain dict (pure: no API calls).

The operator owns one Deployment per PushTask. Its selector names only the task, never
the run: a Deployment's selector is immutable, and a new run must reuse the Deployment
(the pod template's run label and PUSHTASK_RUN_ID change, so the pods roll over).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from typing import Any

from pushtask.models import API_VERSION, GROUP, KIND
from pushtask.naming import worker_deployment_name
from pushtask.secretrefs import dig, secret_key_refs  # shared with the test sends
from pushtask.testsend import TEMPLATE_ANSWERS
from pushtask_operator.settings import OperatorSettings

APP_LABEL = "app.kubernetes.io/name"
APP = "pushtask-worker"
TASK_LABEL = f"{GROUP}/task"
RUN_LABEL = f"{GROUP}/run"
RUN_ID_ANNOTATION = f"{GROUP}/run-id"
CONTAINER = "worker"

_LABEL_OK = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


def label_value(text: str) -> str:
    """A valid label value for `text`: as is when it fits, else a stable shortened form.

    Names of objects may be 253 characters; label values only 63.
    """
    if len(text) <= 63 and _LABEL_OK.match(text):
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    head = re.sub(r"[^-A-Za-z0-9_.]", "-", text)[:52].strip("-_.")
    return f"{head}-{digest}" if head else digest


def selector_labels(task_name: str) -> dict[str, str]:
    return {APP_LABEL: APP, TASK_LABEL: label_value(task_name)}


def selector_string(task_name: str) -> str:
    """`status.selector` for the scale subresource (what an HPA uses to find the pods)."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(task_name).items()))


def batch_seconds(spec: Mapping[str, Any]) -> float:
    """Worst-case time to finish the in-flight batch after SIGTERM.

    A batch's sends run concurrently and, once SIGTERM arrives, are not retried (a
    recipient waiting for a retry is handed back pending): one attempt (bounded by the
    channel timeout) finishes, then the results are written.
    Two timeouts leave room for that write.
    """
    message = dig(spec, "message", default={})
    channel = str(dig(message, "channel", default="webhook"))
    channel_settings = dig(message, channel, default={})
    timeout = float(dig(channel_settings, "timeoutSeconds", default=10) or 10)
    return 2 * timeout


def termination_grace_seconds(spec: Mapping[str, Any], settings: OperatorSettings) -> int:
    return max(settings.worker_termination_grace_seconds, math.ceil(batch_seconds(spec)) + 10)


def owner_reference(task_meta: Mapping[str, Any]) -> dict[str, Any]:
    # controller=true: the Deployment belongs to exactly this PushTask; blockOwnerDeletion:
    # foreground deletion of the task waits for the workers to go.
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": task_meta["name"],
        "uid": task_meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _env(run_id: str, spec: Mapping[str, Any], settings: OperatorSettings) -> list[dict[str, Any]]:
    secrets = [
        {"name": r.env, "valueFrom": {"secretKeyRef": {"name": r.secret, "key": r.key}}}
        for r in secret_key_refs(spec)
    ]
    fixed: list[dict[str, Any]] = [
        {
            "name": "PUSHTASK_MONGO_URI",
            "valueFrom": {
                "secretKeyRef": {
                    "name": settings.mongo_secret_name,
                    "key": settings.mongo_secret_key,
                }
            },
        },
        {"name": "PUSHTASK_RUN_ID", "value": run_id},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        # The metrics endpoint binds the pod's own address (on devstack pods share a host).
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "PUSHTASK_LEASE_SECONDS", "value": _num(settings.lease_seconds)},
        {"name": "PUSHTASK_METRICS_PORT", "value": str(settings.worker_metrics_port)},
        # The root filesystem is read-only: no .pyc files, and temp files go to /tmp.
        {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        *secrets,
    ]
    taken = {e["name"] for e in fixed}
    extra = [
        {"name": k, "value": v} for k, v in sorted(settings.worker_env.items()) if k not in taken
    ]
    return fixed + extra


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def build_worker_deployment(
    task_meta: Mapping[str, Any],
    spec: Mapping[str, Any],
    run_id: str,
    settings: OperatorSettings,
    *,
    replicas: int,
    run: int | None = None,
) -> dict[str, Any]:
    """The worker Deployment of one task and run.

    `task_meta` is the PushTask's metadata (name, namespace, uid); `spec` the run's frozen
    spec in JSON form (its Secret references must not change mid-run); `replicas` what
    the phase and the live spec.workers ask for (see reconcile.desired_replicas).
    """
    name = task_meta["name"]
    namespace = task_meta["namespace"]
    run_number = int(run if run is not None else dig(spec, "run", default=1))
    selector = selector_labels(name)
    pod_labels = {**settings.worker_pod_labels, **selector, RUN_LABEL: str(run_number)}
    ports: list[dict[str, Any]] = []
    if settings.worker_metrics_port:
        ports.append(
            {"name": "metrics", "containerPort": settings.worker_metrics_port, "protocol": "TCP"}
        )
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": settings.worker_image,
        "imagePullPolicy": settings.worker_image_pull_policy,
        # The console script, not a path: devstack runs it in the project's environment.
        "command": ["pushtask-worker"],
        "env": _env(run_id, spec, settings),
        "resources": {k: dict(v) for k, v in settings.worker_resources.items()},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    if ports:
        container["ports"] = ports
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": worker_deployment_name(name),
            "namespace": namespace,
            "labels": {**selector, "app.kubernetes.io/managed-by": "pushtask-operator"},
            "annotations": {RUN_ID_ANNOTATION: run_id},
            "ownerReferences": [owner_reference(task_meta)],
        },
        "spec": {
            "replicas": max(0, int(replicas)),
            "selector": {"matchLabels": dict(selector)},
            # New pods of a new run may start before the old run's pods stop: each works
            # only on its own run id, so overlap is harmless and the switch is quick.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"},
            },
            "revisionHistoryLimit": 2,
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": {**settings.worker_pod_annotations, RUN_ID_ANNOTATION: run_id},
                },
                "spec": {
                    # Workers never call the Kubernetes API: an SA of their own without
                    # any role, and no token mounted at all.
                    "serviceAccountName": settings.worker_service_account,
                    "automountServiceAccountToken": False,
                    # No Docker-link variables: a Service named like a setting (the
                    # release's pushtask-... Services) would set PUSHTASK_*_PORT over it.
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": termination_grace_seconds(spec, settings),
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 10001,
                        "runAsGroup": 10001,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                    "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}],
                },
            },
        },
    }


def build_test_pod_template(
    task_meta: Mapping[str, Any], spec: Mapping[str, Any], settings: OperatorSettings, nonce: str
) -> dict[str, Any]:
    """The PodTemplate a test send is made from when the task has no worker Deployment
    yet (it never ran): its workers' pod template as the first run would have it, for the
    spec as it is now, answering the request `nonce` (testsend.TEMPLATE_REQUEST). No run
    yet: the run id is empty (the test pod drops it with the store's URI)."""
    deployment = build_worker_deployment(task_meta, spec, "", settings, replicas=0, run=0)
    meta = deployment["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "labels": meta["labels"],
            "annotations": {TEMPLATE_ANSWERS: nonce},
            "ownerReferences": meta["ownerReferences"],
        },
        "template": deployment["spec"]["template"],
    }
