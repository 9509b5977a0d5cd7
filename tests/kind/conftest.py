"""The kind suite: what only a real node shows (scripts/e2e-kind.sh runs it).

It runs only against the kind cluster that scripts/e2e-kind.sh made and named in
PUSHTASK_KIND_NODE (the node's container); anywhere else (`make test` on devstack) every
test here is skipped. The release is the script's cluster-wide one (PUSHTASK_E2E_RELEASE)
with its bundled MongoDB; each test gets a namespace, a webhook sink on the host's address
on the kind network, and test_operator_e2e's `env` (Secret and worker ServiceAccount in
the test's namespace, as a user of a cluster-wide install has them).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.test_operator_e2e import env  # noqa: F401  (the fixture, reused as it is)

NODE = os.environ.get("PUSHTASK_KIND_NODE", "")
RELEASE_NAMESPACE = os.environ.get("PUSHTASK_E2E_RELEASE_NAMESPACE", "pushtask-system")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "kind: needs the kind cluster of scripts/e2e-kind.sh")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.kind)
            item.add_marker(pytest.mark.e2e)
            if not NODE:
                item.add_marker(pytest.mark.skip(reason="needs scripts/e2e-kind.sh's cluster"))


def node(*cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a command inside the kind node (its container), as root there."""
    proc = subprocess.run(
        ["docker", "exec", NODE, *cmd], capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} in {NODE} exited {proc.returncode}: {proc.stderr}")
    return proc


def container_pid(namespace: str, pod: str, container: str) -> int:
    """The node-side pid of a pod's running container, from containerd's own list."""
    labels = (
        f'labels."io.kubernetes.pod.name"=={pod},'
        f'labels."io.kubernetes.pod.namespace"=={namespace},'
        f'labels."io.kubernetes.container.name"=={container}'
    )
    ids = set(node("ctr", "-n", "k8s.io", "containers", "ls", "-q", labels).stdout.split())
    running = [
        int(pid)
        for cid, pid, status in (
            line.split()
            for line in node("ctr", "-n", "k8s.io", "tasks", "ls").stdout.splitlines()[1:]
        )
        if cid in ids and status == "RUNNING"
    ]
    assert len(running) == 1, f"expected one running {container} container in {pod}: {running}"
    return running[0]


@pytest.fixture
def release_pods(kubectl: Any) -> Iterator[dict[str, str]]:
    """name -> pod of the cluster-wide release's own Deployments (operator, console)."""
    pods = kubectl.in_namespace(RELEASE_NAMESPACE).json("get", "pods")["items"]
    by_role = {}
    for pod in pods:
        role = pod["metadata"].get("labels", {}).get("app.kubernetes.io/name", "")
        if pod["status"].get("phase") == "Running" and not pod["metadata"].get("deletionTimestamp"):
            by_role[role] = pod["metadata"]["name"]
    yield by_role
