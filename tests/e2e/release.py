"""Helpers the end-to-end tests share beyond test_operator_e2e.py's: a test release of the
chart with the values a test chooses, and an Env that names the resource with its group.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from tests.e2e.test_operator_e2e import SINK_HOST, Env, install
from tests.support.sink import SinkThread

RESOURCE = "pushtasks.pushtask.dev"


class QualifiedEnv(Env):
    """An Env whose kubectl calls name `pushtasks.pushtask.dev`: a second CRD with the plural
    `pushtasks` (a trial group on a shared cluster) makes a bare `pushtask` ambiguous."""

    def task(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.kubectl.json("get", RESOURCE, name)
        return result

    def patch_spec(self, name: str, **spec: Any) -> None:
        self.kubectl("patch", RESOURCE, name, "--type=merge", "-p", json.dumps({"spec": spec}))

    def condition(self, name: str, ctype: str) -> dict[str, Any]:
        conditions = self.status(name).get("conditions") or []
        return next((c for c in conditions if c.get("type") == ctype), {})

    def operator_logs(self) -> str:
        proc = self.kubectl(
            "logs", "-l", "app.kubernetes.io/name=pushtask-operator", "--tail=-1", check=False
        )
        return str(proc.stdout)


def on_devstack() -> None:
    """Skip unless the cluster is devstack's (its processes are ours to stop and start)."""
    if os.environ.get("PUSHTASK_E2E_KUBECONFIG") or os.environ.get("PUSHTASK_E2E_RELEASE"):
        pytest.skip("needs devstack's process control and a release installed by the test")


@contextlib.contextmanager
def release(
    kubectl: Any,
    helm: Any,
    namespace: str,
    db_uri: str,
    *values: str,
    sink_secret: str = "",
    keep_messages: bool = False,
) -> Iterator[QualifiedEnv]:
    """The chart installed for this test's namespace with `values`, a sink (recording the
    messages too with `keep_messages`), and the same teardown as test_operator_e2e's `env`
    fixture (logs shown when the test failed)."""
    k = kubectl.in_namespace(namespace)
    name = f"pt-{namespace[-6:]}"
    install(helm, name, namespace, db_uri, f"watchNamespaces={{{namespace}}}", *values)
    try:
        with SinkThread(
            host=SINK_HOST, secret=sink_secret or None, keep_messages=keep_messages
        ) as sink:
            yield QualifiedEnv(k, namespace, db_uri, sink, name)
    finally:
        for selector in (
            "app.kubernetes.io/name=pushtask-operator",
            "app.kubernetes.io/name=pushtask-worker",
            "app.kubernetes.io/name=pushtask-console",  # when the test enabled it
            "app.kubernetes.io/name=pushtask-tracker",  # when the test enabled it
        ):
            logs = k("logs", "-l", selector, "--tail=80", "--prefix", check=False)
            print(f"--- logs of {selector}\n{logs.stdout}{logs.stderr}")
        k("delete", RESOURCE, "--all", "--wait=true", "--timeout=60s", check=False)
        helm("uninstall", name, "--namespace", namespace, "--wait", check=False)
        client: MongoClient[dict[str, Any]]
        with (
            contextlib.suppress(PyMongoError),
            MongoClient(db_uri, serverSelectionTimeoutMS=3000) as client,
        ):
            client.drop_database(urlsplit(db_uri).path.strip("/"))


def ready_pod_ip(env: QualifiedEnv, app: str, timeout: float = 120) -> str:
    """The IP of a Ready pod of the release's `app` (app.kubernetes.io/name)."""
    from tests.e2e.test_operator_e2e import wait_for

    def ready_ip() -> str | None:
        pods = env.kubectl.json("get", "pods", "-l", f"app.kubernetes.io/name={app}")
        for pod in pods["items"]:
            ready = any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in pod.get("status", {}).get("conditions", [])
            )
            if ready and pod["status"].get("podIP"):
                return str(pod["status"]["podIP"])
        return None

    return str(wait_for(f"the {app} pod Ready", ready_ip, timeout))
