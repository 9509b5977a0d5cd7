"""`kubectl push` as a real kubectl plugin against the real API server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from devstack.testing import Kubectl
from tests.bad_specs import valid_manifest

pytestmark = pytest.mark.e2e


def kubectl_push(kubectl: Kubectl, *args: str) -> subprocess.CompletedProcess[str]:
    """`kubectl push ...`: kubectl finds the `kubectl-push` console script on PATH."""
    # The console script sits beside the interpreter of this environment.
    plugin = shutil.which("kubectl-push", path=str(Path(sys.executable).parent))
    assert plugin, "the kubectl-push console script is not installed"
    env = {
        **os.environ,
        "KUBECONFIG": str(kubectl.kubeconfig),
        "PATH": f"{Path(plugin).parent}{os.pathsep}{os.environ['PATH']}",
    }
    return subprocess.run(
        [str(kubectl.binary), "push", *args], env=env, capture_output=True, text=True, timeout=60
    )


def spec_of(k: Kubectl, name: str) -> Any:
    return k.json("get", "pushtask", name)["spec"]


def test_lifecycle_commands_patch_the_spec(
    pushtask_crd: None, kubectl: Kubectl, namespace: str
) -> None:
    k = kubectl.in_namespace(namespace)
    k.apply(json.dumps(valid_manifest("cli")))

    for action, state in [("pause", "Paused"), ("resume", "Started"), ("stop", "Stopped")]:
        proc = kubectl_push(k, "-n", namespace, action, "cli")
        assert proc.returncode == 0, proc.stderr
        assert spec_of(k, "cli")["state"] == state

    proc = kubectl_push(k, "-n", namespace, "restart", "cli")
    assert proc.returncode == 0, proc.stderr
    assert (spec_of(k, "cli")["run"], spec_of(k, "cli")["state"]) == (2, "Started")

    proc = kubectl_push(k, "-n", namespace, "scale", "cli", "7")
    assert proc.returncode == 0, proc.stderr
    assert spec_of(k, "cli")["workers"] == 7


def test_status_and_get_show_the_task(pushtask_crd: None, kubectl: Kubectl, namespace: str) -> None:
    k = kubectl.in_namespace(namespace)
    k.apply(json.dumps(valid_manifest("shown")))
    proc = kubectl_push(k, "-n", namespace, "get")
    assert proc.returncode == 0, proc.stderr
    assert "shown" in proc.stdout
    proc = kubectl_push(k, "-n", namespace, "status", "shown")
    assert proc.returncode == 0, proc.stderr
    assert "shown" in proc.stdout


def test_an_unknown_task_is_a_clear_error(
    pushtask_crd: None, kubectl: Kubectl, namespace: str
) -> None:
    proc = kubectl_push(kubectl, "-n", namespace, "pause", "nope")
    assert proc.returncode != 0
    assert "nope" in proc.stderr and "Not Found" in proc.stderr
