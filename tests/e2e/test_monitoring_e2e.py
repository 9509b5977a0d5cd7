"""Every metric the chart's alert rules and Grafana dashboard use is on a live /metrics:
the operator's and a running worker's, scraped at their pod IPs as Prometheus would
(through the ServiceMonitor and the PodMonitor), while a task runs on devstack."""

from __future__ import annotations

import json
import os
import urllib.request
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from devstack import build
from tests.e2e.test_operator_e2e import Env, push_task, users, wait_for
from tests.unit.test_chart import URI, find, render
from tests.unit.test_monitoring import MONITORING, used_names

pytestmark = pytest.mark.e2e


def scrape(pod: dict[str, Any]) -> str:
    ip = pod["status"]["podIP"]
    ports = {p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
    with urllib.request.urlopen(f"http://{ip}:{ports['metrics']}/metrics", timeout=10) as resp:
        text: str = resp.read().decode()
    return text


def names(text: str) -> set[str]:
    """The sample names a scrape offers: every family it declares (# TYPE), even one with no
    sample yet (a labelled counter nothing has counted), with the suffixes of its type."""
    out: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            if kind == "histogram":
                out.update(name + s for s in ("_bucket", "_sum", "_count"))
            elif kind == "counter" and not name.endswith("_total"):
                out.add(name + "_total")
            else:
                out.add(name)
    return out


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.mark.skipif(
    bool(os.environ.get("PUSHTASK_E2E_KUBECONFIG")), reason="pod IPs are reachable on devstack"
)
def test_rules_and_dashboard_use_only_metrics_the_operator_and_workers_export(env: Env) -> None:
    env.apply(push_task("watched", env.sink.url, users(4000), workers=1, rate=100))

    def running_worker() -> dict[str, Any] | None:
        pods = [
            p
            for p in env.worker_pods("watched")
            if p["status"].get("phase") == "Running" and p["status"].get("podIP")
        ]
        return pods[0] if pods else None

    def worker_beat() -> str | None:
        pod = running_worker()
        if pod is None:
            return None
        try:
            text = scrape(pod)
        except OSError:
            return None  # not listening yet
        return text if "pushtask_worker_heartbeat_timestamp_seconds{" in text else None

    worker_text = wait_for("a worker's metrics with a heartbeat", worker_beat, 120)
    (operator,) = env.kubectl.json("get", "pods", "-l", "app.kubernetes.io/name=pushtask-operator")[
        "items"
    ]

    def operator_sees_task() -> str | None:
        text = scrape(operator)
        return text if 'task="watched"' in text else None

    operator_text = wait_for("the operator's metrics of the task", operator_sees_task, 60)

    helm = build.tool_path("helm")
    (rule,) = find(render(helm, *URI, *MONITORING), "PrometheusRule")
    (board,) = find(render(helm, *URI, *MONITORING), "ConfigMap", "rel-pushtask-dashboard")
    used = used_names(yaml.safe_dump(rule["spec"])) | used_names(
        json.dumps(json.loads(board["data"]["pushtask.json"]))
    )
    exported = names(worker_text) | names(operator_text)
    assert used <= exported, f"used but on neither /metrics: {sorted(used - exported)}"

    # The new metrics carry values, not only declarations.
    task = (("namespace", env.namespace), ("task", "watched"))
    op = samples(operator_text)
    assert op[("pushtask_task_rate_limit_per_second", task)] == 100
    assert op[("pushtask_send_budget_per_second", ())] == 0
    worker = samples(worker_text)
    label = (("task", f"{env.namespace}/watched"),)
    assert worker[("pushtask_worker_heartbeat_timestamp_seconds", label)] > 1e9
    assert worker[("pushtask_worker_store_seconds_count", (("op", "heartbeat"),))] >= 1
    assert worker[("pushtask_worker_store_circuit_open", ())] == 0
