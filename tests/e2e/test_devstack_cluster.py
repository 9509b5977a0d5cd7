"""The local cluster is a real one: real apiserver, RBAC, controllers, kubectl and helm."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from devstack import stack, versions
from devstack.testing import Helm, Kubectl

pytestmark = pytest.mark.e2e

CHARTS = Path(__file__).parent / "charts"
T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 60.0) -> T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def test_server_is_the_pinned_kubernetes(kubectl: Kubectl) -> None:
    version = json.loads(kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == versions.KUBERNETES_VERSION
    assert version["clientVersion"]["gitVersion"] == versions.KUBERNETES_VERSION
    ready = kubectl("get", "--raw", "/readyz").stdout.strip()
    assert ready == "ok"


def test_controllers_populate_a_new_namespace(kubectl: Kubectl, namespace: str) -> None:
    """serviceaccount and root-ca-cert-publisher controllers run in the controller-manager."""
    k = kubectl.in_namespace(namespace)
    wait_for(
        "the default ServiceAccount", lambda: k("get", "sa", "default", check=False).returncode == 0
    )
    cm = wait_for(
        "kube-root-ca.crt",
        lambda: (
            k("get", "configmap", "kube-root-ca.crt", check=False).returncode == 0
            and k.json("get", "configmap", "kube-root-ca.crt")
        ),
    )
    assert "BEGIN CERTIFICATE" in cm["data"]["ca.crt"]


def test_rbac_is_enforced(kubectl: Kubectl, namespace: str) -> None:
    k = kubectl.in_namespace(namespace)
    sa = f"system:serviceaccount:{namespace}:default"

    def can_i(verb: str, resource: str, *who: str) -> str:
        # `auth can-i` exits 1 for "no": read the answer, not the exit code.
        return k("auth", "can-i", verb, resource, *who, check=False).stdout.strip()

    assert can_i("list", "secrets") == "yes"  # admin: system:masters
    assert can_i("list", "secrets", f"--as={sa}") == "no"
    # The node identity may not read arbitrary secrets either (Node authorizer + RBAC).
    node = ["--as=system:node:devstack", "--as-group=system:nodes"]
    denied = can_i("list", "secrets", *node)
    assert denied.startswith("no") and "node" in denied  # the Node authorizer's own reason

    k("create", "role", "secret-reader", "--verb=list", "--resource=secrets")
    k(
        "create",
        "rolebinding",
        "sa-reads",
        "--role=secret-reader",
        f"--serviceaccount={namespace}:default",
    )
    wait_for(
        "RBAC to allow the bound ServiceAccount",
        lambda: can_i("list", "secrets", f"--as={sa}") == "yes",
    )
    # Bound in this namespace only.
    assert (
        k(
            "auth", "can-i", "list", "secrets", f"--as={sa}", "-n", "default", check=False
        ).stdout.strip()
        == "no"
    )


def _owned_by(obj: dict[str, Any], kind: str, uid: str) -> bool:
    refs = obj["metadata"].get("ownerReferences", [])
    return any(r["kind"] == kind and r["uid"] == uid and r.get("controller") for r in refs)


DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata:
  name: sleeper
spec:
  replicas: 2
  selector:
    matchLabels: {app: sleeper}
  template:
    metadata:
      labels: {app: sleeper}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
        - name: main
          image: python:3.11-slim  # ignored by the local kubelet
          command: ["python", "-c", "import time; time.sleep(3600)"]
"""


def test_deleting_a_deployment_garbage_collects_replicaset_and_pods(
    kubectl: Kubectl, namespace: str
) -> None:
    k = kubectl.in_namespace(namespace)
    k.apply(DEPLOYMENT)
    dep = k.json("get", "deployment", "sleeper")

    rs = wait_for(
        "the ReplicaSet",
        lambda: next(iter(k.json("get", "rs", "-l", "app=sleeper")["items"]), None),
    )
    assert _owned_by(rs, "Deployment", dep["metadata"]["uid"])
    pods = wait_for(
        "2 pods",
        lambda: (
            (items := k.json("get", "pods", "-l", "app=sleeper")["items"])
            and len(items) == 2
            and items
        ),
    )
    assert all(_owned_by(p, "ReplicaSet", rs["metadata"]["uid"]) for p in pods)

    # kubectl's default cascade is background: the garbage collector removes dependents.
    k("delete", "deployment", "sleeper", "--wait=true")
    wait_for(
        "the ReplicaSet to be garbage-collected",
        lambda: not k.json("get", "rs", "-l", "app=sleeper")["items"],
    )
    wait_for(
        "the pods to be garbage-collected",
        lambda: not k.json("get", "pods", "-l", "app=sleeper")["items"],
        timeout=90,
    )


def test_helm_install_and_uninstall(helm: Helm, kubectl: Kubectl, namespace: str) -> None:
    k = kubectl.in_namespace(namespace)
    chart = str(CHARTS / "greeting")
    helm("install", "hi", chart, "--namespace", namespace, "--set", "greeting=bonjour", "--wait")

    cm = k.json("get", "configmap", "hi-greeting")
    assert cm["data"]["greeting"] == "bonjour"
    # helm asked the real apiserver for its version.
    assert cm["data"]["kubeVersion"] == versions.KUBERNETES_VERSION
    releases = json.loads(helm("list", "--namespace", namespace, "-o", "json").stdout)
    assert [(r["name"], r["status"]) for r in releases] == [("hi", "deployed")]

    helm("upgrade", "hi", chart, "--namespace", namespace, "--set", "greeting=salut")
    assert k.json("get", "configmap", "hi-greeting")["data"]["greeting"] == "salut"

    helm("uninstall", "hi", "--namespace", namespace, "--wait")
    assert k("get", "configmap", "hi-greeting", check=False).returncode != 0
    assert json.loads(helm("list", "--namespace", namespace, "-o", "json").stdout) == []
    # helm keeps release state in Secrets; uninstall removes them too.
    assert k.json("get", "secrets", "-l", "owner=helm")["items"] == []


@pytest.mark.skipif(
    bool(os.environ.get("PUSHTASK_E2E_KUBECONFIG")), reason="checks the local devstack itself"
)
def test_up_again_is_harmless_and_env_points_at_the_stack(kubeconfig: Path) -> None:
    def cluster_rows() -> list[dict[str, str]]:
        return [r for r in stack.Stack().status() if r["component"] in stack.GROUPS["cluster"]]

    before = {r["component"]: r["pid"] for r in cluster_rows()}
    cli = [sys.executable, "-m", "devstack"]
    up = subprocess.run(
        [*cli, "up", "--only", "cluster"], capture_output=True, text=True, timeout=120
    )
    assert up.returncode == 0, up.stderr
    assert "started: nothing (already running)" in up.stderr
    rows = cluster_rows()
    assert {r["component"]: r["pid"] for r in rows} == before
    assert all(r["state"] == "healthy" for r in rows), rows

    env = subprocess.run([*cli, "env"], capture_output=True, text=True, check=True).stdout
    assert f"export KUBECONFIG={kubeconfig}\n" in env
    assert f"export PUSHTASK_MONGO_URI={stack.MONGO_URI}\n" in env
