"""`make demo` as a user runs it (on this test's cluster and namespace, a small audience)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from devstack.testing import Helm, Kubectl

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_the_example_campaign_to_finished(
    kubectl: Kubectl, helm: Helm, mongo_uri: str, namespace: str
) -> None:
    if os.environ.get("PUSHTASK_E2E_KUBECONFIG"):
        pytest.skip("the demo installs the chart against devstack's MongoDB")
    tools = os.pathsep.join(str(p.parent) for p in (kubectl.binary, helm.binary))
    env = {
        **os.environ,
        **helm.env,
        "KUBECONFIG": str(kubectl.kubeconfig),
        "PUSHTASK_MONGO_URI": mongo_uri,
        "PATH": f"{tools}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "HELM_CONFIG_HOME": str(helm.home / "config"),
        "HELM_CACHE_HOME": str(helm.home / "cache"),
        "HELM_DATA_HOME": str(helm.home / "data"),
        "COLUMNS": "250",
    }
    cmd = [sys.executable, "-m", "devstack.demo", "--no-up", "--namespace", namespace]
    try:
        proc = subprocess.run(
            [*cmd, "--users", "400", "--workers", "2", "--timeout", "240"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=420,
        )
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out
        # What the user reads at the end: the phase, the sink's count, no duplicates.
        assert "Finished" in out and "400 distinct users (0 duplicates)" in out, out
        task = kubectl.in_namespace(namespace).json("get", "pushtasks.pushtask.dev", "spring-sale")
        assert task["status"]["counts"]["sent"] == 400
    finally:
        kubectl.in_namespace(namespace)(
            "delete", "pushtasks.pushtask.dev", "--all", "--wait=true", "--timeout=60s", check=False
        )
        helm("uninstall", "pushtask", "--namespace", namespace, "--wait", check=False)
