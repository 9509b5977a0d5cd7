"""The chart's monitoring objects: ServiceMonitor, PodMonitor, PrometheusRule, dashboard.

The alert rules are rendered from the chart and given to a real `promtool` (built from its
pinned Go module by devstack.linttools): `check rules`, then `test rules` with the series
of tests/unit/promtool/, which trip and do not trip each alert. Every metric the rules and
the dashboard name must be one the operator or the worker defines (here against the
metrics modules; tests/e2e/test_monitoring_e2e.py checks a live /metrics of both).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

import pushtask_operator.metrics  # noqa: F401  (registers the operator's metrics)
import pushtask_worker.metrics  # noqa: F401  (registers the worker's metrics)
from devstack import build, linttools
from tests.unit.test_chart import CHART, URI, find, render, run

MONITORING = [
    "--api-versions",
    "monitoring.coreos.com/v1",
    "--set",
    "metrics.serviceMonitor.enabled=true",
    "--set",
    "metrics.podMonitor.enabled=true",
    "--set",
    "metrics.prometheusRule.enabled=true",
    "--set",
    "metrics.dashboard.enabled=true",
]
PROMTOOL_TESTS = Path(__file__).parent / "promtool" / "pushtask_alerts_test.yaml"
ALERTS = {
    "PushTaskRunFailed",
    "PushTaskRunStalled",
    "PushTaskSendingBelowAllocation",
    "PushTaskWorkersLost",
    "PushTaskStoreErrors",
    "PushTaskBudgetSaturated",
}


@pytest.fixture(scope="module")
def helm() -> Path:
    if not build.is_built("helm"):
        pytest.skip("helm is not built yet: python -m devstack build helm")
    return build.tool_path("helm")


@pytest.fixture(scope="module")
def promtool() -> Path:
    if not linttools.is_built("promtool"):
        pytest.skip("promtool is not built yet: python -m devstack.linttools promtool")
    return linttools.tool_path("promtool")


def rules(helm: Path, *values: str) -> dict[str, Any]:
    (rule,) = find(render(helm, *URI, *MONITORING, *values), "PrometheusRule")
    spec: dict[str, Any] = rule["spec"]
    return spec


def exposed_names() -> set[str]:
    """Sample names the two metrics modules can expose (counters with _total, histograms
    with _bucket/_sum/_count, as on /metrics)."""
    names: set[str] = set()
    for family in REGISTRY.collect():
        if not family.name.startswith("pushtask_"):
            continue
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + s for s in ("_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
    return names


def used_names(text: str) -> set[str]:
    return set(re.findall(r"\bpushtask_[a-z_]+\b", text))


def dashboard(helm: Path) -> dict[str, Any]:
    (cm,) = find(render(helm, *URI, *MONITORING), "ConfigMap", "rel-pushtask-dashboard")
    data: dict[str, Any] = json.loads(cm["data"]["pushtask.json"])
    return data


def test_nothing_renders_by_default_or_without_the_crds(helm: Path) -> None:
    kinds = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    assert not [d for d in render(helm, *URI) if d["kind"] in kinds]
    assert not find(render(helm, *URI), "ConfigMap", "rel-pushtask-dashboard")
    # Values on, but the cluster has no monitoring.coreos.com/v1: no object it would refuse.
    without_crds = render(helm, *URI, *MONITORING[2:])
    assert not [d for d in without_crds if d["kind"] in kinds]
    assert find(without_crds, "ConfigMap", "rel-pushtask-dashboard")  # a plain ConfigMap


def test_service_and_pod_monitors(helm: Path) -> None:
    docs = render(helm, *URI, *MONITORING, "--set", "metrics.serviceMonitor.labels.release=kp")
    (sm,) = find(docs, "ServiceMonitor")
    (svc,) = find(docs, "Service", "rel-pushtask-metrics")
    for key, value in sm["spec"]["selector"]["matchLabels"].items():
        assert svc["metadata"]["labels"][key] == value
    assert sm["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"]
    # The task's namespace label, not the operator pod's, on the operator's series.
    assert sm["spec"]["endpoints"][0]["honorLabels"] is True
    assert sm["metadata"]["labels"]["release"] == "kp"
    (pm,) = find(docs, "PodMonitor")
    # The labels and port name the operator gives worker pods (deployment.py).
    assert pm["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "pushtask-worker"}
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert pm["spec"]["namespaceSelector"] == {"any": True}
    docs = render(helm, *URI, *MONITORING, "--set", "watchNamespaces={a,b}")
    (pm,) = find(docs, "PodMonitor")
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["a", "b"]}
    docs = render(helm, *URI, *MONITORING, "--set", "worker.metricsPort=0")
    assert not find(docs, "PodMonitor")


def test_dashboard_configmap_for_the_grafana_sidecar(helm: Path) -> None:
    docs = render(
        helm, *URI, *MONITORING, "--set", "metrics.dashboard.namespace=monitoring",
        "--set", "metrics.dashboard.annotations.grafana_folder=PushTask",
    )  # fmt: skip
    (cm,) = find(docs, "ConfigMap", "rel-pushtask-dashboard")
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "PushTask"}
    board = json.loads(cm["data"]["pushtask.json"])
    assert board == json.loads((CHART / "dashboards" / "pushtask.json").read_text())
    titles = {p["title"] for p in board["panels"]}
    for wanted in (
        "Progress per task",
        "ETA per task",
        "Send rate against limit and allocation",
        "Failures by reason",
        "In doubt (unknown)",
        "Worker heartbeat age",
        "Store latency (p50, p99)",
    ):
        assert wanted in titles
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))


def test_every_metric_the_rules_and_dashboard_use_is_exported(helm: Path) -> None:
    exported = exposed_names()
    used = used_names(yaml.safe_dump(rules(helm))) | used_names(json.dumps(dashboard(helm)))
    assert used, "no metric found in the rules or the dashboard"
    assert used <= exported, f"not exported by the operator or a worker: {used - exported}"


def test_promtool_checks_and_unit_tests_the_rules(
    helm: Path, promtool: Path, tmp_path: Path
) -> None:
    groups = rules(helm)
    assert {r["alert"] for g in groups["groups"] for r in g["rules"]} == ALERTS
    (tmp_path / "pushtask.rules.yaml").write_text(yaml.safe_dump(groups, sort_keys=False))
    shutil.copy(PROMTOOL_TESTS, tmp_path / PROMTOOL_TESTS.name)
    proc = subprocess.run(
        [str(promtool), "check", "rules", "pushtask.rules.yaml"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 6 rules found" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    proc = subprocess.run(
        [str(promtool), "test", "rules", PROMTOOL_TESTS.name],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


def test_each_alert_has_a_case_that_trips_it_and_one_that_does_not() -> None:
    tripped: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(PROMTOOL_TESTS.read_text())["tests"]:
        for check in case["alert_rule_test"]:
            (tripped if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert tripped == ALERTS
    assert quiet == ALERTS


def test_rule_thresholds_come_from_values(helm: Path) -> None:
    groups = rules(
        helm, "--set", "metrics.prometheusRule.stalledMinutes=30",
        "--set", "metrics.prometheusRule.additionalLabels.team=growth",
        "--set", "metrics.prometheusRule.severity.failed=page",
    )  # fmt: skip
    by_name = {r["alert"]: r for g in groups["groups"] for r in g["rules"]}
    assert "[30m]" in by_name["PushTaskRunStalled"]["expr"]
    assert by_name["PushTaskRunFailed"]["labels"] == {"severity": "page", "team": "growth"}


def test_lint_strict_with_monitoring_on(helm: Path) -> None:
    # helm lint has no --api-versions: this renders the dashboard, not the CRD kinds.
    proc = run(helm, "lint", "--strict", str(CHART), *URI, *MONITORING[2:])
    assert proc.returncode == 0, proc.stdout + proc.stderr
