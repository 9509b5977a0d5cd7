"""The devstack cluster as the by-hand benchmarks use it: the chart in a namespace of
their own, the namespace cleared again, the local process behind a pod."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESOURCE = "pushtasks.pushtask.dev"


def sh(*cmd: str, env: dict[str, str], input: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(cmd, env=env, input=input, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed: {proc.stderr}{proc.stdout}")
    return proc.stdout


def install(
    env: dict[str, str], namespace: str, release: str, mongo_uri: str, sets: list[str]
) -> None:
    """The chart watching only `namespace`, its store at `mongo_uri` (a database named)."""
    ns = sh("kubectl", "create", "namespace", namespace, "--dry-run=client", "-o", "yaml", env=env)
    sh("kubectl", "apply", "-f", "-", env=env, input=ns)
    # The generated CRD first: helm leaves one already in the cluster as it is.
    sh("kubectl", "apply", "-f", str(ROOT / "crds" / "pushtask.yaml"), env=env)
    sets = [f"mongodb.uri={mongo_uri}", f"watchNamespaces={{{namespace}}}",
            "userRoles.enabled=false", *sets]  # fmt: skip
    args = [a for s in sets for a in ("--set", s)]
    sh("helm", "upgrade", "--install", release, str(ROOT / "charts" / "pushtask"),
       "-n", namespace, "--wait", "--timeout", "3m", *args, env=env)  # fmt: skip


def clear(env: dict[str, str], namespace: str) -> None:
    """Remove the namespace: its tasks first, while their operator still runs to release
    their finalizers (deleting the namespace alone stops the operator first and leaves the
    namespace Terminating)."""
    if sh("kubectl", "get", "namespace", namespace, "--ignore-not-found", env=env).strip():
        # Not kubectl's --wait: it waits for each object in turn (minutes for a thousand).
        sh("kubectl", "-n", namespace, "delete", RESOURCE, "--all", "--wait=false", env=env)
        deadline = time.monotonic() + 600
        while sh("kubectl", "-n", namespace, "get", RESOURCE, "-o", "name", env=env).strip():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the PushTasks of {namespace} were not deleted in 10 min")
            time.sleep(2)
    sh("kubectl", "delete", "namespace", namespace, "--ignore-not-found", "--wait=true",
       "--timeout=300s", env=env)  # fmt: skip


def operator_pod(env: dict[str, str], namespace: str) -> str:
    return sh("kubectl", "get", "pods", "-n", namespace, "-l",
              "app.kubernetes.io/name=pushtask-operator",
              "-o=jsonpath={.items[0].metadata.name}", env=env).strip()  # fmt: skip


def environ(pid: int) -> list[bytes]:
    """A local process's environment as NAME=value entries ([] once it has gone)."""
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return []


def local_pids(marker: str) -> list[int]:
    """The processes whose environment holds `marker` (devstack runs pods as processes)."""
    want = marker.encode()
    pids = (int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit())
    return [pid for pid in pids if want in environ(pid)]


def memory_mib(pid: int, field: str) -> float | None:
    """A /proc/PID/status memory line in MiB (VmRSS: now, VmHWM: the peak); None once the
    process has gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None
