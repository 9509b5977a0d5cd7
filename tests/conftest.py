"""Shared fixtures: the real servers of the local stack (see devstack/testing.py)."""

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.testing import (  # noqa: F401  (re-exported as pytest fixtures)
    Kubectl,
    devstack_session,
    ferretdb_uri,
    helm,
    k8s_api,
    kubeconfig,
    kubectl,
    mongo_uri,
    namespace,
)

CRD = Path(__file__).resolve().parents[1] / "crds" / "pushtask.yaml"


@pytest.fixture(scope="session")
def pushtask_crd(kubectl: Kubectl) -> Iterator[None]:  # noqa: F811
    """The generated CRD, applied and Established (left in place: later suites use it)."""
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/pushtasks.pushtask.dev")
    # Discovery of a new group lags a moment behind Established.
    deadline = time.monotonic() + 30
    while kubectl("get", "pushtasks", "-A", check=False).returncode != 0:
        assert time.monotonic() < deadline, "pushtasks never became servable"
        time.sleep(0.5)
    yield
