"""`make demo` as a user runs it (on this test's cluster and namespace): a small audience
listed inline, and one above the inline cap read from a collection the demo seeds."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from devstack.demo import audience_database
from devstack.testing import Helm, Kubectl
from pushtask.models import MAX_INLINE_USERS

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("users", "rate"),
    [(400, 500), (MAX_INLINE_USERS + 50, 5000)],
    ids=["inline", "seeded-collection"],
)
def test_demo_runs_the_example_campaign_to_finished(
    kubectl: Kubectl, helm: Helm, mongo_uri: str, namespace: str, users: int, rate: int
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
    cmd += ["--workers", "2", "--rate", str(rate), "--timeout", "240"]
    try:
        proc = subprocess.run(
            [*cmd, "--users", str(users)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=420,
        )
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out
        # What the user reads at the end: the phase, the sink's count, no duplicates.
        assert "Finished" in out and f"{users} distinct users (0 duplicates)" in out, out
        assert ("mongo source" in out) == (users > MAX_INLINE_USERS), out
        # The console it points at answers, and shows this task.
        address = re.search(r"web console: (http://[0-9.:]+/)", out)
        assert address, out
        with urllib.request.urlopen(address.group(1) + "api/tasks", timeout=10) as reply:
            shown = json.load(reply)
        assert [t["name"] for t in shown["tasks"]] == ["spring-sale"], shown
        task = kubectl.in_namespace(namespace).json("get", "pushtasks.pushtask.dev", "spring-sale")
        assert task["status"]["counts"]["sent"] == users
    finally:
        kubectl.in_namespace(namespace)(
            "delete", "pushtasks.pushtask.dev", "--all", "--wait=true", "--timeout=60s", check=False
        )
        helm("uninstall", "pushtask", "--namespace", namespace, "--wait", check=False)
        kubectl.in_namespace(namespace)("delete", "secret", "pushtask-console-token", check=False)
        client: MongoClient[dict[str, Any]] = MongoClient(mongo_uri)
        with client:
            client.drop_database(audience_database(namespace))
