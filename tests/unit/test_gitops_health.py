"""Health that GitOps tools understand (docs/gitops.md): the conditions per phase, what
kstatus makes of them, and what Argo CD's health check (integrations/argocd, run in a real
Lua 5.1) shows. The table below is the one in docs/gitops.md; kstatus' own Go code is run
on real PushTasks in tests/e2e/test_gitops_e2e.py, and on the Argo CD fixtures there too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from pushtask.states import DesiredState
from pushtask_operator.reconcile import (
    ApiProblem,
    Applied,
    Observed,
    Validation,
    compose_status,
    decide,
    status_fields,
)
from tests.support.argocd import HEALTH_DIR, argocd_health
from tests.support.status import check_status_patch
from tests.unit.test_operator_reconcile import NOW, obs, progress

TESTS = yaml.safe_load((HEALTH_DIR / "health_test.yaml").read_text())["tests"]


def kstatus(obj: Mapping[str, Any]) -> str:
    """kstatus' verdict for a custom resource (cli-utils v0.37 pkg/kstatus/status: the
    generic checks, then the Ready fallback), written out here so the table reads on its
    own; the e2e test runs the real Go code on the same fixtures and on live tasks."""
    status = obj.get("status") or {}
    generation = obj["metadata"].get("generation")
    seen = status.get("observedGeneration")
    if generation is not None and seen is not None and seen != generation:
        return "InProgress"
    conditions = status.get("conditions") or []
    for c in conditions:
        if c["type"] == "Reconciling" and c["status"] == "True":
            return "InProgress"
        if c["type"] == "Stalled" and c["status"] == "True":
            return "Failed"
    for c in conditions:
        if c["type"] == "Ready":
            return "Current" if c["status"] == "True" else "InProgress"
    return "Current"


def task(status: Mapping[str, Any] | None, generation: int = 1) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "pushtask.dev/v1alpha1",
        "kind": "PushTask",
        "metadata": {"name": "t", "namespace": "ns", "generation": generation},
        "spec": {},
    }
    if status is not None:
        obj["status"] = dict(status)
    return obj


# -- the fixtures of the Argo CD health check ----------------------------------------------


def test_every_fixture_is_tested() -> None:
    listed = {t["inputPath"] for t in TESTS}
    present = {f"testdata/{p.name}" for p in (HEALTH_DIR / "testdata").glob("*.yaml")}
    assert listed == present


@pytest.mark.parametrize("case", TESTS, ids=lambda t: t["inputPath"])
def test_argocd_health_of_each_fixture(case: dict[str, Any]) -> None:
    obj = yaml.safe_load((HEALTH_DIR / case["inputPath"]).read_text())
    assert argocd_health(obj) == case["healthStatus"]
    if "status" in obj:
        check_status_patch(obj["status"])  # what the operator writes, every field declared


# The kstatus verdict of each fixture (the e2e test checks these with kstatus' own code).
FIXTURE_KSTATUS = {
    "not-observed": "Current",  # kstatus' own gap: no status yet reads as current
    "generation-not-observed": "InProgress",
    "ready-waiting-for-start": "Current",
    "ready-held": "Current",
    "ready-secret-missing": "InProgress",
    "started": "InProgress",
    "started-outside-window": "InProgress",
    "reboot": "InProgress",
    "paused": "Current",
    "paused-degraded-tier": "InProgress",
    "stopped": "Current",
    "finished": "Current",
    "failed": "Failed",
    "failed-invalid-spec": "Failed",
    "deployment-rejected": "Failed",
    "cron-awaiting-next-firing": "Current",
}


@pytest.mark.parametrize("name", sorted(FIXTURE_KSTATUS))
def test_kstatus_of_each_fixture(name: str) -> None:
    obj = yaml.safe_load((HEALTH_DIR / "testdata" / f"{name}.yaml").read_text())
    assert kstatus(obj) == FIXTURE_KSTATUS[name]


# -- the table: phase -> conditions -> kstatus, Argo CD ---------------------------------------

RUN = {"phase": "Started", "run": 1, "runId": "r1"}
MISSING = Validation.failed("SecretMissing", 'Secret "hmac" not found', permanent=False)
BROKEN = Validation.failed("TemplateError", "template field 'body', line 1: boom", permanent=True)


@dataclass(frozen=True)
class Row:
    what: str
    observe: Callable[[], Observed]
    phase: str
    conditions: str  # the True ones among Ready, Reconciling, Stalled, Complete
    kstatus: str
    argocd: str
    refused: ApiProblem | None = None


def _ended(observed: Observed) -> dict[str, Any]:
    return {**observed.status, **decide(observed).status}


ROWS = [
    Row(
        "waiting for startAt",
        lambda: obs(start_due=False),
        "Ready", "Ready", "Current", "Healthy",
    ),
    Row(
        "cron: waiting for the next firing",
        lambda: obs(
            _ended(obs(RUN, recurring=True, progress=progress(finished=True))),
            recurring=True,
            start_due=False,
        ),
        "Ready", "Ready", "Current", "Healthy",
    ),
    Row(
        "held by spec.state Paused",
        lambda: obs(desired=DesiredState.PAUSED),
        "Ready", "Ready", "Current", "Suspended",
    ),
    Row(
        "start due, held by a degraded tier",
        lambda: obs(degrade="graceful", tier="low"),
        "Ready", "Ready Reconciling", "InProgress", "Suspended",
    ),
    Row(
        "startAt ahead, tier degraded",
        lambda: obs(degrade="graceful", tier="low", start_due=False),
        "Ready", "Ready", "Current", "Suspended",
    ),
    Row(
        "waiting for a Secret",
        lambda: obs(validation=MISSING),
        "Ready", "Reconciling", "InProgress", "Progressing",
    ),
    Row(
        "a run under way",
        lambda: obs(RUN, progress=progress()),
        "Started", "Ready Reconciling", "InProgress", "Progressing",
    ),
    Row(
        "outside a send window",
        lambda: obs(RUN, progress=progress(), in_window=False),
        "Started", "Ready Reconciling", "InProgress", "Progressing",
    ),
    Row(
        "a worker lost",
        lambda: obs(RUN, progress=progress(lost=["w2"], orphaned=1)),
        "Reboot", "Reconciling", "InProgress", "Progressing",
    ),
    Row(
        "paused by a person",
        lambda: obs(RUN, progress=progress(), desired=DesiredState.PAUSED),
        "Paused", "Ready", "Current", "Suspended",
    ),
    Row(
        "paused by a degraded tier",
        lambda: obs(RUN, progress=progress(), degrade="immediate", tier="low"),
        "Paused", "Ready Reconciling", "InProgress", "Suspended",
    ),
    Row(
        "stopped by a person",
        lambda: obs(RUN, progress=progress(), desired=DesiredState.STOPPED),
        "Stopped", "Ready", "Current", "Suspended",
    ),
    Row(
        "every recipient has a result",
        lambda: obs(RUN, progress=progress(finished=True)),
        "Finished", "Ready Complete", "Current", "Healthy",
    ),
    Row(
        "finished, at rest",
        lambda: obs(_ended(obs(RUN, progress=progress(finished=True)))),
        "Finished", "Ready Complete", "Current", "Healthy",
    ),
    Row(
        "the run failed",
        lambda: obs(RUN, progress=progress(failure="error budget spent")),
        "Failed", "Stalled", "Failed", "Degraded",
    ),
    Row(
        "a template that never compiles",
        lambda: obs(validation=BROKEN),
        "Failed", "Stalled", "Failed", "Degraded",
    ),
    Row(
        "cron: the last run failed, waiting for the next firing",
        lambda: obs(
            _ended(obs(RUN, recurring=True, progress=progress(failure="budget spent"))),
            recurring=True,
            start_due=False,
        ),
        "Ready", "Ready", "Current", "Healthy",
    ),
    Row(
        "a run under way, the spec edited into a template error",
        lambda: obs(RUN, progress=progress(), validation=BROKEN, generation=2),
        "Started", "Stalled", "Failed", "Degraded",
    ),
    Row(
        "the API server refuses the worker Deployment",
        lambda: obs(RUN, progress=progress()),
        "Started", "Stalled", "Failed", "Degraded",
        refused=ApiProblem("DeploymentRejected", "HTTP 422: invalid", degraded=True),
    ),
]  # fmt: skip


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.what)
def test_phase_conditions_kstatus_and_argocd(row: Row) -> None:
    observed = row.observe()
    plan = decide(observed)
    applied = Applied("app=w", plan.replicas, refused=row.refused)
    check_status_patch(plan.status)
    status = status_fields(
        compose_status(observed.status, plan, None, applied, recurring=observed.recurring, now=NOW)
    )
    check_status_patch(status)
    assert status["phase"] == row.phase
    by_type = {c["type"]: c for c in status["conditions"]}
    true = {
        t for t in ("Ready", "Reconciling", "Stalled", "Complete") if by_type[t]["status"] == "True"
    }
    assert true == set(row.conditions.split())
    # Every condition says which generation it describes (kubectl wait and kstatus read it).
    assert {c["observedGeneration"] for c in status["conditions"]} == {observed.generation}
    obj = task(status, generation=observed.generation)
    assert kstatus(obj) == row.kstatus
    assert argocd_health(obj)["status"] == row.argocd


def test_an_unobserved_generation_is_in_progress_for_both() -> None:
    status = decide(obs(RUN, progress=progress(finished=True))).status
    obj = task(status, generation=2)
    assert kstatus(obj) == "InProgress"
    assert argocd_health(obj) == {
        "status": "Progressing",
        "message": "Waiting for the operator to observe generation 2",
    }
