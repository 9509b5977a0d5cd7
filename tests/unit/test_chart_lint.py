"""Independent linters on the chart, for every values combination the chart tests render
(test_chart.VALUE_SETS): `helm lint --strict`, and kube-score (built from its pinned Go
module by devstack.linttools) on the `helm template` output with zero findings. A check
the chart does not follow is switched off beside the object, with the reason, by a
`kube-score/ignore` annotation in the template; none is switched off here.

(kube-linter was asked for, but the Go module proxy serves no version of
golang.stackrox.io/kube-linter; kube-score is the independent checker of the same kind.)
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from devstack import build, linttools
from tests.unit.test_chart import CHART, VALUE_SETS, run

# The Prometheus Operator kinds render only where the cluster serves them.
API_VERSIONS = ["--api-versions", "monitoring.coreos.com/v1"]
KUBERNETES_VERSION = "v1.28"  # the oldest the chart supports (README)


@pytest.fixture(scope="module")
def helm() -> Path:
    if not build.is_built("helm"):
        pytest.skip("helm is not built yet: python -m devstack build helm")
    return build.tool_path("helm")


@pytest.fixture(scope="module")
def kube_score() -> Path:
    if not linttools.is_built("kube-score"):
        pytest.skip("kube-score is not built yet: python -m devstack.linttools kube-score")
    return linttools.tool_path("kube-score")


@pytest.mark.parametrize("name", VALUE_SETS)
def test_helm_lint_strict(helm: Path, name: str) -> None:
    proc = run(helm, "lint", "--strict", str(CHART), *VALUE_SETS[name])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("name", VALUE_SETS)
def test_kube_score_finds_nothing(helm: Path, kube_score: Path, name: str) -> None:
    proc = run(helm, "template", "rel", str(CHART), "--namespace", "pushtask-system",
               *API_VERSIONS, *VALUE_SETS[name])  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    scored = subprocess.run(
        [str(kube_score), "score", "--output-format", "ci", "--exit-one-on-warning",
         "--kubernetes-version", KUBERNETES_VERSION, "-"],
        input=proc.stdout, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    findings = [
        line for line in scored.stdout.splitlines() if line.startswith(("[WARNING]", "[CRITICAL]"))
    ]
    assert not findings, "\n".join(findings)
    assert scored.returncode == 0, scored.stdout + scored.stderr
    assert "[OK]" in scored.stdout  # it did score the objects
