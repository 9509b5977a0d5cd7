"""The whole `helm template` output, for every values combination the chart tests render
(tests/unit/test_chart.py's VALUE_SETS), given to the devstack API server as a server-side
dry run with strict field validation: each object is checked against the API server's own
OpenAPI schema (and the CRDs' schemas), admission included, and nothing is stored.

The Prometheus Operator kinds (ServiceMonitor, PodMonitor, PrometheusRule) are left out:
the chart renders them only where the cluster serves monitoring.coreos.com/v1, and
devstack does not (their CRDs are the Prometheus Operator's). promtool checks the rules
(tests/unit/test_monitoring.py); the dashboard's ConfigMap is in the dry run.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.testing import Helm, Kubectl
from tests.unit.test_chart import VALUE_SETS

pytestmark = pytest.mark.e2e

CHART = Path(__file__).resolve().parents[2] / "charts" / "pushtask"
PEERING_CRDS = CHART / "crds" / "kopf-peering.yaml"


@pytest.fixture(scope="module")
def namespaces(kubectl: Kubectl, pushtask_crd: None) -> Iterator[tuple[str, str]]:
    """Two namespaces for the release and its watchNamespaces (one pair for every set), and
    the kopf peering CRDs the chart's crds/ adds (helm template leaves crds/ out)."""
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(PEERING_CRDS))
    token = secrets.token_hex(3)
    names = (f"t-dry-run-{token}-a", f"t-dry-run-{token}-b")
    for name in names:
        kubectl("create", "namespace", name)
    try:
        yield names
    finally:
        for name in names:
            kubectl("delete", "namespace", name, "--wait=false", check=False)


def mapped(values: list[str], first: str, second: str) -> list[str]:
    """The values with their watchNamespaces named after this test's two namespaces."""
    out = []
    for value in values:
        m = re.fullmatch(r"watchNamespaces=\{(.*)\}", value)
        if m:
            names = m.group(1).split(",")
            value = "watchNamespaces={" + ",".join([first, second][: len(names)]) + "}"
        out.append(value)
    return out


@pytest.mark.skipif(
    bool(os.environ.get("PUSHTASK_E2E_KUBECONFIG")), reason="devstack's API server only"
)
@pytest.mark.parametrize("name", VALUE_SETS)
def test_the_rendered_chart_passes_a_server_side_dry_run(
    kubectl: Kubectl, helm: Helm, namespaces: tuple[str, str], name: str
) -> None:
    namespace, second_namespace = namespaces
    values = mapped(VALUE_SETS[name], namespace, second_namespace)
    rendered = helm("template", "rel", str(CHART), "--namespace", namespace, *values).stdout
    docs: list[dict[str, Any]] = [d for d in yaml.safe_load_all(rendered) if d]
    assert docs
    # A Pod is admitted only if its ServiceAccount exists (the ServiceAccount admission
    # plugin), and a dry run stores nothing: create the ServiceAccounts for real first, as
    # `helm install` does before its test hook's Pod (in this test's namespaces).
    accounts = [d for d in docs if d["kind"] == "ServiceAccount"]
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all(accounts))
    proc = kubectl(
        "apply", "--dry-run=server", "--validate=strict", "-f", "-", input=rendered, check=False
    )
    assert proc.returncode == 0, f"{name}: {proc.stderr}{proc.stdout}"
    # One line per object ("... created (server dry run)" or "configured"/"unchanged").
    lines = [line for line in proc.stdout.splitlines() if "(server dry run)" in line]
    assert len(lines) == len(docs), proc.stdout
