"""The CRD on a real API server: examples pass, bad manifests are rejected naming the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from devstack.testing import Kubectl
from pushtask.models import ApiModel, PushTask, PushTaskSpec, describe_errors
from tests.bad_specs import (
    BAD_CASES,
    DEEP_CASES,
    GOOD_CASES,
    BadCase,
    DeepCase,
    GoodCase,
    names_field,
    pydantic_paths,
    valid_manifest,
)

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def _rule_messages() -> set[str]:
    out: set[str] = set()
    todo: list[type[ApiModel]] = [ApiModel]
    while todo:
        for sub in todo.pop().__subclasses__():
            out |= {r.message for r in sub.__cel__}
            todo.append(sub)
    return out


RULE_MESSAGES = _rule_messages()


def _dry_run(k: Kubectl, manifest: dict[str, Any]) -> Any:
    return k(
        "apply",
        "--dry-run=server",
        "-o",
        "json",
        "-f",
        "-",
        input=json.dumps(manifest),
        check=False,
    )


def test_crd_is_accepted_with_its_names_and_columns(pushtask_crd: None, kubectl: Kubectl) -> None:
    got = kubectl.json("get", "crd", "pushtasks.pushtask.dev")
    assert got["spec"]["names"]["shortNames"] == ["pt"]
    assert got["spec"]["names"]["categories"] == ["pushtask"]
    resources = kubectl("api-resources", "--api-group=pushtask.dev", "-o", "wide").stdout
    assert "pushtasks" in resources and "pt" in resources and "true" in resources.lower()


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_passes_server_dry_run(
    pushtask_crd: None, kubectl: Kubectl, namespace: str, path: Path
) -> None:
    k = kubectl.in_namespace(namespace)
    proc = k("apply", "--dry-run=server", "-f", str(path), check=False)
    assert proc.returncode == 0, proc.stderr


def test_server_defaults_equal_model_defaults(
    pushtask_crd: None, kubectl: Kubectl, namespace: str
) -> None:
    manifest = valid_manifest("defaults")
    proc = _dry_run(kubectl.in_namespace(namespace), manifest)
    assert proc.returncode == 0, proc.stderr
    server_spec = json.loads(proc.stdout)["spec"]
    python_spec = PushTaskSpec.model_validate(manifest["spec"]).model_dump(
        by_alias=True, mode="json", exclude_none=True
    )
    # The server keeps 100 as an int where pydantic has 100.0: compare as models.
    assert PushTaskSpec.model_validate(server_spec) == PushTaskSpec.model_validate(python_spec)
    assert server_spec["delivery"]["backoff"]["maxSeconds"] == 60
    assert server_spec["schedule"]["windows"][0]["days"][0] == "Mon"


def test_explain_shows_the_field_descriptions(pushtask_crd: None, kubectl: Kubectl) -> None:
    out = kubectl("explain", "pushtask.spec.schedule.windows").stdout
    assert "crosses midnight" in out and "timeZone" in out


def test_there_are_at_least_a_hundred_bad_manifests() -> None:
    # 40 before the hardening issue, 60 or more added by it.
    assert len(BAD_CASES) >= 100


@pytest.mark.parametrize("case", BAD_CASES, ids=lambda c: c.name)
def test_bad_manifest_is_rejected_naming_the_field(
    pushtask_crd: None, kubectl: Kubectl, namespace: str, case: BadCase
) -> None:
    proc = _dry_run(kubectl.in_namespace(namespace), case.manifest())
    assert proc.returncode != 0, f"accepted: {yaml.safe_dump(case.manifest())}"
    assert case.path in proc.stderr, proc.stderr
    # Where the models reject with one of their CEL twins, the server says the same words.
    with pytest.raises(ValidationError) as info:
        PushTask.model_validate(case.manifest())
    for line in describe_errors(info.value):
        message = line.split(": ", 1)[-1]
        if message in RULE_MESSAGES:
            assert message in proc.stderr, (message, proc.stderr)


@pytest.mark.parametrize("case", GOOD_CASES, ids=lambda c: c.name)
def test_manifest_at_a_bound_is_accepted_by_both(
    pushtask_crd: None, kubectl: Kubectl, namespace: str, case: GoodCase
) -> None:
    proc = _dry_run(kubectl.in_namespace(namespace), case.manifest())
    assert proc.returncode == 0, (case.why, proc.stderr)
    PushTask.model_validate(case.manifest())


@pytest.mark.parametrize("case", DEEP_CASES, ids=lambda c: c.name)
def test_query_beyond_the_crd_is_left_to_the_models(
    pushtask_crd: None, kubectl: Kubectl, namespace: str, case: DeepCase
) -> None:
    # Documents the division of labour: if the API server starts refusing these, move
    # them to BAD_CASES.
    proc = _dry_run(kubectl.in_namespace(namespace), case.manifest())
    assert proc.returncode == 0, (case.why, proc.stderr)
    with pytest.raises(ValidationError) as info:
        PushTask.model_validate(case.manifest())
    text = pydantic_paths(info.value)
    assert names_field(text, case.py) and case.refused in text, text


def test_run_must_not_decrease_on_update(
    pushtask_crd: None, kubectl: Kubectl, namespace: str
) -> None:
    k = kubectl.in_namespace(namespace)
    manifest = valid_manifest("runs")
    manifest["spec"]["run"] = 3
    k.apply(json.dumps(manifest))
    manifest["spec"]["run"] = 4
    k.apply(json.dumps(manifest))  # raising is fine
    manifest["spec"]["run"] = 2
    proc = k("apply", "-f", "-", input=json.dumps(manifest), check=False)
    assert proc.returncode != 0
    assert "spec.run" in proc.stderr and "must not decrease" in proc.stderr, proc.stderr


def test_scale_subresource_drives_workers(
    pushtask_crd: None, kubectl: Kubectl, namespace: str
) -> None:
    k = kubectl.in_namespace(namespace)
    k.apply(json.dumps(valid_manifest("scaled")))
    k("scale", "pushtask/scaled", "--replicas=5")
    assert k.json("get", "pt", "scaled")["spec"]["workers"] == 5
    proc = k("scale", "pushtask/scaled", "--replicas=0", check=False)
    assert proc.returncode != 0 and "spec.workers" in proc.stderr, proc.stderr


def test_declared_status_fields_survive_and_print(
    pushtask_crd: None, kubectl: Kubectl, namespace: str
) -> None:
    k = kubectl.in_namespace(namespace)
    k.apply(json.dumps(valid_manifest("status")))
    status = {
        "phase": "Started", "run": 1, "runId": "r", "observedGeneration": 1,
        "counts": {"audience": 10, "pending": 6, "sent": 4, "failed": 0, "skipped": 0,
                   "unknown": 0, "excluded": 3, "duplicates": 1},
        "rate": 12.5, "eta": "1s", "workers": {"desired": 2, "ready": 2, "live": 2},
        "replicas": 2, "selector": "pushtask.dev/task=status",
        "conditions": [{"type": "Ready", "status": "True", "reason": "Running", "message": "m",
                        "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}],
        "message": "m", "reason": "Running", "startedAt": "2026-01-01T00:00:00Z",
        "skipSamples": ["row 3: no id"], "lastFiredAt": "2026-01-01T00:00:00Z",
    }  # fmt: skip
    k(
        "patch",
        "pt",
        "status",
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )
    got = k.json("get", "pt", "status")["status"]
    assert got == status  # nothing pruned
    table = k("get", "pt", "status").stdout
    header, row = table.splitlines()[:2]
    assert header.split() == ["NAME", "PHASE", "RUN", "SENT", "TOTAL", "RATE", "WORKERS", "AGE"]
    assert row.split()[:7] == ["status", "Started", "1", "4", "10", "12.5", "2"]
    raw = f"/apis/pushtask.dev/v1alpha1/namespaces/{namespace}/pushtasks/status/scale"
    scale = json.loads(kubectl("get", "--raw", raw).stdout)
    assert scale["status"] == {"replicas": 2, "selector": "pushtask.dev/task=status"}
