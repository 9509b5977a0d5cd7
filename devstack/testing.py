"""pytest fixtures for tests that need the real servers (wired up in tests/conftest.py).

- ``mongo_uri`` (session): a MongoDB-wire URI. mongo-java-server from the local stack,
  started if it is not running; or ``PUSHTASK_MONGO_URI`` when it names another server (a
  real MongoDB in CI, say).
- ``ferretdb_uri`` (session): FerretDB from the local stack, the second MongoDB-wire server
  the store's tests run on (see devstack/versions.py for why both).
- ``kubeconfig`` (session): the admin kubeconfig of the local cluster, started if needed;
  or ``PUSHTASK_E2E_KUBECONFIG`` for another cluster (kind on a machine with Docker). The
  ambient ``KUBECONFIG`` is deliberately not used: it may point at a cluster that matters.
- ``kubectl``, ``helm`` (session): run the real binaries against that cluster.
- ``k8s_api`` (session): a ``kubernetes.client.ApiClient`` for it.
- ``namespace`` (function): a fresh namespace per test, deleted afterwards.

A stack that was running before the test session (a developer's ``make up``) is reused
and left running. What the fixtures start themselves is stopped at the end of the session
unless ``PUSHTASK_KEEP_STACK=1``, and only once no other live test session uses it (several
test runs may share one tree's stack).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from devstack import build, stack

KEEP_ENV = "PUSHTASK_KEEP_STACK"


class StackSession:
    """This test session's use of the shared local stack."""

    def __init__(self) -> None:
        self.stack = stack.Stack(started_by="pytest")
        self._users = self.stack.paths.run / "users"
        self._me = self._users / str(os.getpid())
        self._registered = False

    def ensure(self, group: str) -> None:
        if not self._registered:
            self._users.mkdir(parents=True, exist_ok=True)
            self._me.touch()
            self._registered = True
        self.stack.up([group])

    def others(self) -> bool:
        """Another live test session uses this stack (its namespaces are its own)."""
        return bool(self._other_users())

    def _other_users(self) -> list[int]:
        others = []
        for entry in self._users.glob("*"):
            pid = int(entry.name) if entry.name.isdigit() else -1
            if pid == os.getpid():
                continue
            if pid > 0 and Path(f"/proc/{pid}").exists():
                others.append(pid)
            else:
                entry.unlink(missing_ok=True)  # a crashed session's leftover
        return others

    def close(self) -> None:
        if not self._registered:
            return
        self._me.unlink(missing_ok=True)
        if os.environ.get(KEEP_ENV) == "1" or self._other_users():
            return
        self.stack.down(started_by="pytest")


@pytest.fixture(scope="session")
def devstack_session() -> Iterator[StackSession]:
    session = StackSession()
    try:
        yield session
    finally:
        session.close()


@pytest.fixture(scope="session")
def mongo_uri(devstack_session: StackSession) -> str:
    uri = os.environ.get("PUSHTASK_MONGO_URI")
    if uri and uri != stack.MONGO_URI:
        return uri
    devstack_session.ensure("mongo")
    return stack.MONGO_URI


@pytest.fixture(scope="session")
def ferretdb_uri(devstack_session: StackSession) -> str:
    devstack_session.ensure("mongo")
    return stack.FERRETDB_URI


@pytest.fixture(scope="session")
def kubeconfig(devstack_session: StackSession) -> Path:
    external = os.environ.get("PUSHTASK_E2E_KUBECONFIG")
    if external:
        return Path(external)
    devstack_session.ensure("cluster")
    return devstack_session.stack.paths.admin_kubeconfig


def _tool(name: str) -> Path:
    # On an external cluster the binaries may come from PATH; ours are preferred.
    return build.ensure_tool(name)


@dataclass(frozen=True)
class Kubectl:
    """The real kubectl bound to a kubeconfig (and optionally a namespace)."""

    binary: Path
    kubeconfig: Path
    namespace: str | None = None

    def __call__(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.binary), f"--kubeconfig={self.kubeconfig}"]
        if self.namespace:
            cmd.append(f"--namespace={self.namespace}")
        proc = subprocess.run(
            [*cmd, *args], input=input, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}{proc.stdout}"
            )
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "-o", "json").stdout)

    def apply(self, manifest: str) -> subprocess.CompletedProcess[str]:
        return self("apply", "-f", "-", input=manifest)

    def in_namespace(self, namespace: str) -> Kubectl:
        return Kubectl(self.binary, self.kubeconfig, namespace)


@dataclass(frozen=True)
class Helm:
    """The real helm bound to a kubeconfig, with its config/cache kept under .devstack/."""

    binary: Path
    kubeconfig: Path
    home: Path
    env: dict[str, str] = field(default_factory=dict)

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ)
        env.update(
            {
                "KUBECONFIG": str(self.kubeconfig),
                # Keep the developer's ~/.config/helm (repos, registries) out of tests.
                "HELM_CONFIG_HOME": str(self.home / "config"),
                "HELM_CACHE_HOME": str(self.home / "cache"),
                "HELM_DATA_HOME": str(self.home / "data"),
            }
        )
        env.update(self.env)
        proc = subprocess.run(
            [str(self.binary), *args], capture_output=True, text=True, timeout=timeout, env=env
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"helm {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}{proc.stdout}"
            )
        return proc


@pytest.fixture(scope="session")
def kubectl(kubeconfig: Path) -> Kubectl:
    return Kubectl(_tool("kubectl"), kubeconfig)


@pytest.fixture(scope="session")
def helm(kubeconfig: Path) -> Helm:
    return Helm(_tool("helm"), kubeconfig, stack.state_root() / "helm")


@pytest.fixture(scope="session")
def k8s_api(kubeconfig: Path, devstack_session: StackSession) -> Any:
    from kubernetes import config

    api = config.new_client_from_config(config_file=str(kubeconfig))
    if not os.environ.get("PUSHTASK_E2E_KUBECONFIG") and not devstack_session.others():
        clear_leftovers(api)
    return api


def clear_leftovers(api: Any) -> None:
    """Delete the test namespaces an interrupted session left (a killed test run leaves
    its operators running against MongoDB databases that are gone: they restart in a loop
    and take CPU from the timing-sensitive tests). Their PushTasks lose their finalizers
    first: the operator that would take them off goes with the namespace."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    namespaces: list[Any] = core.list_namespace(label_selector="pushtask-test=1").items
    for ns in namespaces:
        name: str = ns.metadata.name
        try:
            listed: Any = custom.list_namespaced_custom_object(
                "pushtask.dev", "v1alpha1", name, "pushtasks"
            )
            tasks: list[dict[str, Any]] = listed["items"]
        except ApiException:
            tasks = []  # no CRD yet
        for task in tasks:
            if task["metadata"].get("finalizers"):
                custom.patch_namespaced_custom_object(
                    "pushtask.dev", "v1alpha1", name, "pushtasks",
                    task["metadata"]["name"], {"metadata": {"finalizers": None}},
                )  # fmt: skip
        if ns.metadata.deletion_timestamp is None:
            core.delete_namespace(name, propagation_policy="Background")


def _namespace_name(nodeid: str) -> str:
    test = nodeid.rsplit("::", 1)[-1]
    slug = re.sub(r"[^a-z0-9]+", "-", test.lower()).strip("-")[:40].strip("-")
    return f"t-{slug}-{secrets.token_hex(3)}"


@pytest.fixture
def namespace(k8s_api: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test; deleted (with everything in it) afterwards."""
    from kubernetes import client

    core = client.CoreV1Api(k8s_api)
    name = _namespace_name(request.node.nodeid)
    core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={"pushtask-test": "1"}))
    )
    try:
        yield name
    finally:
        # Background: the namespace controller finishes the cleanup; no test waits on it.
        core.delete_namespace(name, propagation_policy="Background")
