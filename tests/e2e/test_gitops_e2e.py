"""Health that GitOps tools understand, on real PushTasks (docs/gitops.md).

kstatus' own Go code (sigs.k8s.io/cli-utils), Flux's fork of it and Flux's evaluator of
the `healthCheckExprs` in integrations/flux/kustomization.yaml (tools/kstatus, pinned in
its go.mod, built by devstack/kstatus.py) judge tasks the operator drives into each
phase, from `kubectl get -o json`; `kubectl wait --for=condition=Complete` waits for a
run's end as it does for a Job, and never returns for a Failed one
(`--for=condition=Stalled` does).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack import kstatus as kstatus_tool
from tests.e2e.test_operator_e2e import RESOURCE, ROOT, Env, push_task, users, wait_for
from tests.support.argocd import HEALTH_DIR
from tests.unit.test_gitops_health import FIXTURE_KSTATUS

FLUX_KUSTOMIZATION = ROOT / "integrations" / "flux" / "kustomization.yaml"

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def kstatus_bin() -> Path:
    return kstatus_tool.ensure()  # cached: seconds, or about a minute the first time


def kstatus(binary: Path, obj: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Per object name, for one object or a List: `status` (kstatus), `flux` (Flux's fork
    of kstatus) and `fluxExprs` (Flux's evaluator of the example's healthCheckExprs)."""
    out = subprocess.run(
        [str(binary), "-flux", str(FLUX_KUSTOMIZATION)],
        input=json.dumps(obj), capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    for line in lines:  # Flux without healthCheckExprs judges as kstatus does
        assert line["flux"] == line["status"], line
    return {line["name"]: line for line in lines}


# What the Flux example's expressions make of each Argo CD fixture: a task the operator has
# accepted is healthy, running or not; Stalled fails; Ready False (a Secret to wait for, a
# Reboot) and an unobserved generation are in progress.
FIXTURE_FLUX_EXPRS = {
    **{name: "Current" for name in FIXTURE_KSTATUS},
    "not-observed": "Error",  # no status yet: `status` cannot be read (docs/gitops.md)
    "generation-not-observed": "InProgress",
    "ready-secret-missing": "InProgress",
    "reboot": "InProgress",
    "failed": "Failed",
    "failed-invalid-spec": "Failed",
    "deployment-rejected": "Failed",
}


@pytest.mark.parametrize("name", sorted(FIXTURE_KSTATUS))
def test_kstatus_and_flux_on_the_argocd_fixtures(kstatus_bin: Path, name: str) -> None:
    """The fixtures of the Argo CD health check through kstatus' and Flux's own code: the
    verdicts tests/unit/test_gitops_health.py expects of kstatus, and the Flux example's."""
    obj = yaml.safe_load((HEALTH_DIR / "testdata" / f"{name}.yaml").read_text())
    got = kstatus(kstatus_bin, obj)[obj["metadata"]["name"]]
    assert got["status"] == FIXTURE_KSTATUS[name], got
    assert got["fluxExprs"].split(":")[0] == FIXTURE_FLUX_EXPRS[name], got


@pytest.fixture
def waits() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        yield pool


def kubectl_wait(
    env: Env, pool: ThreadPoolExecutor, name: str, condition: str, timeout: int
) -> Future[subprocess.CompletedProcess[str]]:
    """`kubectl wait --for=condition=<condition>` in the background."""
    return pool.submit(
        env.kubectl,
        "wait", f"--for=condition={condition}", f"{RESOURCE}/{name}", f"--timeout={timeout}s",
        check=False, timeout=timeout + 30,
    )  # fmt: skip


def test_kstatus_and_kubectl_wait_follow_each_phase(
    env: Env, kstatus_bin: Path, waits: ThreadPoolExecutor
) -> None:
    def verdict(name: str) -> str:
        """kstatus' verdict, and Flux's by the example's expressions after a slash."""
        got = kstatus(kstatus_bin, env.task(name))[name]
        return f"{got['status']}/{got['fluxExprs']}"

    start_at = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    later = push_task("later", env.sink.url, users(10), workers=1)
    later["spec"]["schedule"] = {"startAt": start_at}
    env.apply(later)
    env.sink.program(prefixes={"bad-": [{"status": 400}]})  # final: the run's budget goes
    # 10/s: the worker judges the budget at its heartbeat, which must come before the end.
    bad = push_task("bad", env.sink.url, users(200, "bad"), workers=1, rate=10)
    bad["spec"]["delivery"] = {"failureThreshold": {"ratio": 0.5, "minSample": 10}}
    env.apply(bad)
    env.apply(push_task("done", env.sink.url, users(50, "d"), workers=1))
    # Waits begun before the operator has written any status, as in a pipeline.
    complete = kubectl_wait(env, waits, "done", "Complete", 240)
    stalled = kubectl_wait(env, waits, "bad", "Stalled", 240)
    # 20/s: a minute of sending, time to look at it Started, then pause and stop it.
    env.apply(push_task("slow", env.sink.url, users(1200, "s"), workers=1, rate=20))

    status = env.wait_phase("later", "Ready", 60)
    assert any(c["type"] == "Scheduled" for c in status["conditions"])
    assert verdict("later") == "Current/Current"  # accepted; its run starts in an hour

    env.wait_phase("slow", "Started", 120)
    wait_for("slow sending", lambda: env.status("slow").get("counts", {}).get("sent", 0) > 0, 120)
    assert env.phase("slow") == "Started"
    assert verdict("slow") == "InProgress/Current"

    waited = complete.result(timeout=300)
    after = env.status("done")
    assert waited.returncode == 0 and after["phase"] == "Finished", (waited, after)
    assert after["counts"]["sent"] == 50
    assert verdict("done") == "Current/Current"

    waited = stalled.result(timeout=300)
    failed = env.status("bad")
    assert waited.returncode == 0 and failed["phase"] == "Failed", (waited, failed)
    assert verdict("bad") == "Failed/Failed"
    # Complete never comes for a Failed run: kubectl wait times out (exit 1).
    never = env.kubectl(
        "wait", "--for=condition=Complete", f"{RESOURCE}/bad", "--timeout=5s", check=False
    )
    assert never.returncode != 0 and "timed out" in never.stderr, never

    env.patch_spec("slow", state="Paused")
    env.wait_phase("slow", "Paused", 60)
    assert verdict("slow") == "Current/Current"  # what the spec asks for, reached
    env.patch_spec("slow", state="Stopped")
    env.wait_phase("slow", "Stopped", 60)
    assert verdict("slow") == "Current/Current"

    # The whole list, as `kubectl get -o json` gives it to a tool.
    listed = kstatus(kstatus_bin, env.kubectl.json("get", RESOURCE))
    assert {n: (v["status"], v["fluxExprs"]) for n, v in listed.items()} == {
        "later": ("Current", "Current"),
        "done": ("Current", "Current"),
        "bad": ("Failed", "Failed"),
        "slow": ("Current", "Current"),
    }
