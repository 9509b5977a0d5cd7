"""`helm template` / `helm lint` of charts/pushtask with several value sets.

Needs only the helm binary (devstack builds and caches it); no cluster.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack import build

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "pushtask"
URI = ["--set", "mongodb.uri=mongodb://mongo.example:27017/pushtask"]


@pytest.fixture(scope="module")
def helm() -> Path:
    path = build.tool_path("helm")
    if not build.is_built("helm"):
        pytest.skip("helm is not built yet: python -m devstack build --only helm")
    return path


def run(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            "HOME": "/tmp",
            "PATH": "/usr/bin:/bin",
            "HELM_CACHE_HOME": "/tmp/helm-cache",
            "HELM_CONFIG_HOME": "/tmp/helm-config",
            "HELM_DATA_HOME": "/tmp/helm-data",
        },
    )


def render(helm: Path, *values: str, namespace: str = "pushtask-system") -> list[dict[str, Any]]:
    proc = run(helm, "template", "rel", str(CHART), "--namespace", namespace, *values)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def find(
    docs: list[dict[str, Any]], kind: str, name: str | None = None, namespace: str | None = None
) -> list[dict[str, Any]]:
    return [
        d
        for d in docs
        if d["kind"] == kind
        and (name is None or d["metadata"]["name"] == name)
        and (namespace is None or d["metadata"].get("namespace") == namespace)
    ]


def operator_deployment(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (dep,) = find(docs, "Deployment", "rel-pushtask-operator")
    return dep


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_lint_strict_is_clean(helm: Path) -> None:
    for values in (
        [],
        URI,
        ["--set", "mongodb.bundled.enabled=true", "--set", "watchNamespaces={a,b}"],
    ):
        proc = run(helm, "lint", "--strict", str(CHART), *values)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_chart_crds_match_the_generated_crd() -> None:
    # Helm installs crds/ from the chart; `make chart-crds` copies the generated file.
    assert (CHART / "crds" / "pushtask.yaml").read_text() == (
        ROOT / "crds" / "pushtask.yaml"
    ).read_text(), "charts/pushtask/crds is stale: run `make chart-crds`"


def test_cluster_wide_defaults(helm: Path) -> None:
    docs = render(helm, *URI)
    dep = operator_deployment(docs)
    spec = dep["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (c,) = pod["containers"]
    assert c["command"] == ["pushtask-operator"]
    assert "--all-namespaces" in c["args"] and "--peering=pushtask" in c["args"]
    assert any(a.startswith("--liveness=http://$(POD_IP):8080/healthz") for a in c["args"])
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["resources"]["requests"] and c["resources"]["limits"]
    env = env_of(c)
    assert env["PUSHTASK_MONGO_URI"] == {
        "secretKeyRef": {"name": "rel-pushtask-mongodb", "key": "uri"}
    }
    assert env["PUSHTASK_NAMESPACES"] == ""
    assert find(docs, "ClusterRole", "rel-pushtask-operator")
    assert find(docs, "ClusterRoleBinding", "rel-pushtask-operator")
    assert find(docs, "ClusterKopfPeering", "pushtask")
    (secret,) = find(docs, "Secret", "rel-pushtask-mongodb")
    assert secret["stringData"]["uri"] == "mongodb://mongo.example:27017/pushtask"
    (svc,) = find(docs, "Service", "rel-pushtask-metrics")
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"
    assert not find(docs, "StatefulSet")
    (test_pod,) = [d for d in find(docs, "Pod") if "helm.sh/hook" in d["metadata"]["annotations"]]
    assert test_pod["spec"]["containers"][0]["command"] == ["pushtask-operator", "selftest"]


# Values whose settings checksum is 16 decimal digits ("5132136562475218"): unquoted, the
# API server refused the Deployment (annotations must be strings). Found by an e2e install.
DIGITS_ONLY_CHECKSUM = [
    "--set",
    "mongodb.uri=mongodb://127.0.0.1:27030/e2e_t_test_template_error_fails_with_the_line_f6d042",
    "--set",
    "worker.leaseSeconds=10",
    "--set",
    "operator.progressInterval=1",
    "--set",
    "operator.logLevel=info",
    "--set",
    "userRoles.enabled=false",
    "--set",
    "watchNamespaces={t-test-template-error-fails-with-the-line-f6d042}",
]


@pytest.mark.parametrize("values", [URI, DIGITS_ONLY_CHECKSUM], ids=["defaults", "digits"])
def test_labels_and_annotations_are_strings(helm: Path, values: list[str]) -> None:
    docs = render(helm, *values)
    metas = [d["metadata"] for d in docs]
    metas += [t["metadata"] for d in docs if (t := d.get("spec", {}).get("template"))]
    checked = 0
    for meta in metas:
        for field in ("labels", "annotations"):
            for key, value in (meta.get(field) or {}).items():
                assert isinstance(value, str), f"{field} {key}: {value!r} is not a string"
                checked += 1
    assert checked > 10
    checksum = operator_deployment(docs)["spec"]["template"]["metadata"]["annotations"]
    assert len(checksum["checksum/settings"]) == 16


def rules_of(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (g, r, v)
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }


def grants(group: str, resources: list[str], verbs: list[str]) -> set[tuple[str, str, str]]:
    return {(group, r, v) for r in resources for v in verbs}


# Exactly what the operator calls (kube.py) and what kopf needs, nothing more.
OPERATOR_RULES = (
    grants("pushtask.dev", ["pushtasks"], ["get", "list", "watch", "patch"])
    | grants("pushtask.dev", ["pushtasks/status"], ["get", "patch"])
    | grants("apps", ["deployments"], ["get", "create", "patch"])
    | grants("", ["podtemplates"], ["create", "patch"])
    | grants("", ["events"], ["create"])
    | grants("", ["secrets", "configmaps", "serviceaccounts"], ["get"])
)


def test_operator_rbac_is_least_privilege(helm: Path) -> None:
    docs = render(helm, *URI)
    (role,) = find(docs, "ClusterRole", "rel-pushtask-operator")
    assert rules_of(role) == OPERATOR_RULES | grants(
        "kopf.dev", ["clusterkopfpeerings"], ["get", "list", "watch", "patch"]
    ) | grants("apiextensions.k8s.io", ["customresourcedefinitions"], ["get", "list", "watch"])
    docs = render(helm, *URI, "--set", "watchNamespaces={a}")
    (role,) = find(docs, "Role", "rel-pushtask-operator", "a")
    assert rules_of(role) == OPERATOR_RULES | grants(
        "kopf.dev", ["kopfpeerings"], ["get", "list", "watch", "patch"]
    )


@pytest.mark.parametrize("scope", [[], ["--set", "watchNamespaces={a}"]])
def test_the_degrade_configmap_is_the_operators_to_read_and_nobody_elses_to_reset(
    helm: Path, scope: list[str]
) -> None:
    docs = render(helm, *URI, *scope)
    (cm,) = find(docs, "ConfigMap", "rel-pushtask-degrade", "pushtask-system")
    # No data: helm upgrade must never put back what was degraded or lifted live.
    assert "data" not in cm
    (c,) = operator_deployment(docs)["spec"]["template"]["spec"]["containers"]
    assert env_of(c)["PUSHTASK_DEGRADE_CONFIGMAP"] == "pushtask-system/rel-pushtask-degrade"
    (reader,) = find(docs, "Role", "rel-pushtask-degrade-reader", "pushtask-system")
    by_resource = {tuple(r["resources"]): r for r in reader["rules"]}
    assert by_resource[("configmaps",)]["resourceNames"] == ["rel-pushtask-degrade"]
    assert by_resource[("configmaps",)]["verbs"] == ["get", "list", "watch"]
    (binding,) = find(docs, "RoleBinding", "rel-pushtask-degrade-reader", "pushtask-system")
    assert binding["subjects"][0]["name"] == "rel-pushtask-operator"
    (editor,) = find(docs, "Role", "rel-pushtask-degrade-editor", "pushtask-system")
    (rule,) = editor["rules"]
    assert rule["resourceNames"] == ["rel-pushtask-degrade"]
    assert rule["verbs"] == ["get", "patch", "update"]
    # Nobody is bound to the editor Role by the chart: who may degrade is the cluster's call.
    assert not find(docs, "RoleBinding", "rel-pushtask-degrade-editor")


def test_workers_get_no_api_access(helm: Path) -> None:
    docs = render(helm, *URI, "--set", "watchNamespaces={a,b}")
    for ns in ("a", "b"):
        (sa,) = find(docs, "ServiceAccount", "pushtask-worker", ns)
        assert sa["automountServiceAccountToken"] is False
    for binding in find(docs, "RoleBinding") + find(docs, "ClusterRoleBinding"):
        assert all(s["name"] != "pushtask-worker" for s in binding["subjects"])


def test_watched_namespaces(helm: Path) -> None:
    docs = render(helm, *URI, "--set", "watchNamespaces={a,b}")
    (c,) = operator_deployment(docs)["spec"]["template"]["spec"]["containers"]
    assert "--namespace=a" in c["args"] and "--namespace=b" in c["args"]
    assert "--all-namespaces" not in c["args"]
    assert env_of(c)["PUSHTASK_NAMESPACES"] == "a,b"
    assert not find(docs, "ClusterRoleBinding", "rel-pushtask-operator")
    assert not find(docs, "ClusterKopfPeering")
    for ns in ("a", "b"):
        assert find(docs, "Role", "rel-pushtask-operator", ns)
        (rb,) = find(docs, "RoleBinding", "rel-pushtask-operator", ns)
        assert rb["subjects"][0]["namespace"] == "pushtask-system"
        assert find(docs, "KopfPeering", "pushtask", ns)
        assert find(docs, "Secret", "rel-pushtask-mongodb", ns)
    # The operator's own copy of the URI in the release namespace.
    assert find(docs, "Secret", "rel-pushtask-mongodb", "pushtask-system")


def test_bundled_mongodb(helm: Path) -> None:
    docs = render(helm, "--set", "mongodb.bundled.enabled=true")
    (sts,) = find(docs, "StatefulSet", "rel-pushtask-mongodb")
    assert sts["spec"]["replicas"] == 1
    assert find(docs, "Service", "rel-pushtask-mongodb")
    (secret,) = find(docs, "Secret", "rel-pushtask-mongodb")
    assert secret["stringData"]["uri"] == (
        "mongodb://rel-pushtask-mongodb.pushtask-system.svc:27017/pushtask"
    )
    persistent = render(
        helm,
        "--set",
        "mongodb.bundled.enabled=true",
        "--set",
        "mongodb.bundled.persistence.enabled=true",
    )
    (sts,) = find(persistent, "StatefulSet")
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]


def test_existing_secret(helm: Path) -> None:
    docs = render(
        helm, "--set", "mongodb.existingSecret=my-mongo", "--set", "mongodb.secretKey=connection"
    )
    assert not find(docs, "Secret")
    (c,) = operator_deployment(docs)["spec"]["template"]["spec"]["containers"]
    env = env_of(c)
    assert env["PUSHTASK_MONGO_URI"] == {"secretKeyRef": {"name": "my-mongo", "key": "connection"}}
    assert env["PUSHTASK_MONGO_SECRET"] == "my-mongo"


def test_operator_settings_reach_the_environment(helm: Path) -> None:
    docs = render(
        helm,
        *URI,
        "--set",
        "sendBudget=500",
        "--set",
        "degradedTiers.low=graceful",
        "--set",
        "worker.leaseSeconds=20",
        "--set",
        "runRetention=7",
        "--set",
        "operator.peering.enabled=false",
        "--set",
        "worker.env.HTTPS_PROXY=http://proxy:3128",
    )
    (c,) = operator_deployment(docs)["spec"]["template"]["spec"]["containers"]
    env = env_of(c)
    assert env["PUSHTASK_SEND_BUDGET"] == "500"
    assert env["PUSHTASK_WORKER_ENV"] == '{"HTTPS_PROXY":"http://proxy:3128"}'
    assert env["PUSHTASK_DEGRADED_TIERS"] == '{"low":"graceful"}'
    assert env["PUSHTASK_LEASE_SECONDS"] == "20"
    assert env["PUSHTASK_RUN_RETENTION"] == "7"
    assert env["PUSHTASK_TIERS"] == '{"critical":[700,1000],"low":[0,299],"normal":[300,699]}'
    assert "--standalone" in c["args"]
    lifted = render(
        helm, *URI, "--set", "degradedTiers.low=immediate", "--set", "degradedTiers=null"
    )
    (c,) = operator_deployment(lifted)["spec"]["template"]["spec"]["containers"]
    assert env_of(c)["PUSHTASK_DEGRADED_TIERS"] == "{}"
    assert not find(docs, "ClusterKopfPeering")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([], "set exactly one of mongodb.uri, mongodb.existingSecret"),
        ([*URI, "--set", "mongodb.bundled.enabled=true"], "set exactly one of"),
        ([*URI, "--set", "sendBudget=-5"], "/sendBudget"),
        ([*URI, "--set", "degradedTiers.low=later"], "/degradedTiers/low"),
        ([*URI, "--set", "degradedTiers.nosuch=graceful"], "degradedTiers: unknown tier nosuch"),
        ([*URI, "--set", "tiers.low={1}"], "/tiers/low"),
        ([*URI, "--set", "operator.logLevel=loud"], "/operator/logLevel"),
        ([*URI, "--set", "watchNamespaces={Bad_NS}"], "/watchNamespaces/0"),
        ([*URI, "--set", "worker.leaseSeconds=1"], "/worker/leaseSeconds"),
        ([*URI, "--set", "operator.replicas=2"], "replicas"),
        (["--set", "mongodb.uri=postgres://x"], "/mongodb/uri"),
        ([*URI, "--set", "image.pullPolicy=Sometimes"], "/image/pullPolicy"),
        ([*URI, "--set", "worker.env.bad-name=x"], "invalid propertyName 'bad-name'"),
    ],
)
def test_bad_values_fail_with_a_clear_message(helm: Path, values: list[str], message: str) -> None:
    proc = run(helm, "template", "rel", str(CHART), *values)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


# -- the web console (off by default) ------------------------------------------------------

CONSOLE = ["--set", "console.enabled=true", "--set", "console.tokenSecret.name=console-token"]
# Exactly what the console calls (pushtask_client/taskapi.py): read, act, create; Events;
# and a test send's (pushtask_client/testsend.py), unless console.testSends is off.
CONSOLE_RULES_WITHOUT_TESTS = grants(
    "pushtask.dev", ["pushtasks"], ["get", "list", "watch", "patch", "create"]
) | grants("", ["events"], ["get", "list", "watch"])
CONSOLE_RULES = (
    CONSOLE_RULES_WITHOUT_TESTS
    | grants("apps", ["deployments"], ["get"])
    | grants("", ["podtemplates"], ["get"])
    | grants("", ["pods"], ["create", "get", "delete"])
    | grants("", ["pods/log"], ["get"])
)


def test_nothing_of_the_console_renders_when_disabled(helm: Path) -> None:
    for scope in ([], ["--set", "watchNamespaces={a}"]):
        docs = render(helm, *URI, *scope)
        assert not [d for d in docs if "console" in d["metadata"]["name"]]


def test_console_rbac_is_least_privilege(helm: Path) -> None:
    docs = render(helm, *URI, *CONSOLE)
    (role,) = find(docs, "ClusterRole", "rel-pushtask-console")
    assert rules_of(role) == CONSOLE_RULES
    (binding,) = find(docs, "ClusterRoleBinding", "rel-pushtask-console")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "rel-pushtask-console", "namespace": "pushtask-system"}
    ]
    docs = render(helm, *URI, *CONSOLE, "--set", "watchNamespaces={a,b}")
    assert not find(docs, "ClusterRole", "rel-pushtask-console")
    for ns in ("a", "b"):
        (role,) = find(docs, "Role", "rel-pushtask-console", ns)
        assert rules_of(role) == CONSOLE_RULES
        (binding,) = find(docs, "RoleBinding", "rel-pushtask-console", ns)
        assert binding["subjects"][0]["name"] == "rel-pushtask-console"
    docs = render(helm, *URI, *CONSOLE, "--set", "console.testSends=false")
    (role,) = find(docs, "ClusterRole", "rel-pushtask-console")
    assert rules_of(role) == CONSOLE_RULES_WITHOUT_TESTS
    docs = render(helm, *URI, *CONSOLE, "--set", "watchNamespaces={a,b}")
    # Its account is bound to its own roles and nothing else.
    bound = [
        b["roleRef"]["name"]
        for b in find(docs, "RoleBinding") + find(docs, "ClusterRoleBinding")
        if any(s["name"] == "rel-pushtask-console" for s in b["subjects"])
    ]
    assert bound == ["rel-pushtask-console", "rel-pushtask-console"]


def test_console_deployment(helm: Path) -> None:
    docs = render(
        helm, *URI, *CONSOLE, "--set", "watchNamespaces={a,b}", "--set", "console.port=8099",
        "--set", "console.readsNeedToken=true",
    )  # fmt: skip
    (dep,) = find(docs, "Deployment", "rel-pushtask-console", "pushtask-system")
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "rel-pushtask-console"
    (c,) = pod["containers"]
    assert c["command"] == ["pushtask-console"]
    assert c["args"] == ["--host=$(POD_IP)", "--port=8099"]
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    env = env_of(c)
    assert env["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["PUSHTASK_NAMESPACES"] == "a,b"
    assert env["PUSHTASK_MONGO_URI"] == {
        "secretKeyRef": {"name": "rel-pushtask-mongodb", "key": "uri"}
    }
    assert env["PUSHTASK_CONSOLE_TOKEN"] == {
        "secretKeyRef": {"name": "console-token", "key": "token"}
    }
    assert env["PUSHTASK_CONSOLE_READS_NEED_TOKEN"] == "true"
    (svc,) = find(docs, "Service", "rel-pushtask-console")
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    assert svc["spec"]["selector"]["app.kubernetes.io/name"] == "pushtask-console"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["--set", "console.enabled=true"], "console.tokenSecret.name"),
        ([*CONSOLE, "--set", "console.colour=blue"], "colour"),
        ([*CONSOLE, "--set", "console.port=0"], "/console/port"),
    ],
)
def test_bad_console_values_fail_with_a_clear_message(
    helm: Path, values: list[str], message: str
) -> None:
    proc = run(helm, "template", "rel", str(CHART), *URI, *values)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


# -- the link tracker (off by default) --------------------------------------------------

TRACKER = ["--set", "tracker.enabled=true", "--set", "tracker.keySecret.name=tracker-key"]


def test_nothing_of_the_tracker_renders_when_disabled(helm: Path) -> None:
    docs = render(helm, *URI)
    assert not [d for d in docs if "tracker" in d["metadata"]["name"]]


def test_tracker_deployment_and_service(helm: Path) -> None:
    docs = render(
        helm, *URI, *TRACKER, "--set", "tracker.port=8091",
        "--set", "tracker.keySecret.previousKey=old",
        "--set", "tracker.conversionsTokenSecret.name=conv",
    )  # fmt: skip
    (dep,) = find(docs, "Deployment", "rel-pushtask-tracker", "pushtask-system")
    pod = dep["spec"]["template"]["spec"]
    # It needs no API access at all: no token in the pod, no Role anywhere.
    assert pod["automountServiceAccountToken"] is False
    assert not [d for d in docs if "tracker" in d["metadata"]["name"] and "Role" in d["kind"]]
    (c,) = pod["containers"]
    assert c["command"] == ["pushtask-tracker"]
    assert c["args"] == ["--host=$(POD_IP)", "--port=8091"]
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    env = env_of(c)
    assert env["PUSHTASK_MONGO_URI"] == {
        "secretKeyRef": {"name": "rel-pushtask-mongodb", "key": "uri"}
    }
    assert env["PUSHTASK_TRACKER_KEY"] == {"secretKeyRef": {"name": "tracker-key", "key": "key"}}
    assert env["PUSHTASK_TRACKER_KEY_PREVIOUS"] == {
        "secretKeyRef": {"name": "tracker-key", "key": "old"}
    }
    assert env["PUSHTASK_TRACKER_CONVERSIONS_TOKEN"] == {
        "secretKeyRef": {"name": "conv", "key": "token"}
    }
    (plain,) = find(render(helm, *URI, *TRACKER), "Deployment", "rel-pushtask-tracker")
    plain_env = env_of(plain["spec"]["template"]["spec"]["containers"][0])
    assert "PUSHTASK_TRACKER_CONVERSIONS_TOKEN" not in plain_env  # conversions refused
    (svc,) = find(docs, "Service", "rel-pushtask-tracker")
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    assert svc["spec"]["selector"]["app.kubernetes.io/name"] == "pushtask-tracker"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["--set", "tracker.enabled=true"], "tracker.keySecret.name"),
        ([*TRACKER, "--set", "tracker.colour=blue"], "colour"),
        ([*TRACKER, "--set", "tracker.port=0"], "/tracker/port"),
    ],
)
def test_bad_tracker_values_fail_with_a_clear_message(
    helm: Path, values: list[str], message: str
) -> None:
    proc = run(helm, "template", "rel", str(CHART), *URI, *values)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


# Every values combination the tests above render successfully, plus the monitoring ones
# (tests/unit/test_monitoring.py). tests/unit/test_chart_lint.py gives each one's output to
# kube-score, tests/e2e/test_chart_dry_run_e2e.py to the API server (server-side dry run).
# Keep it in step when a test above renders a new combination.
MONITORING_VALUES = [
    "--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.podMonitor.enabled=true",
    "--set", "metrics.prometheusRule.enabled=true", "--set", "metrics.dashboard.enabled=true",
]  # fmt: skip
VALUE_SETS: dict[str, list[str]] = {
    "defaults": URI,
    "digits-only-checksum": DIGITS_ONLY_CHECKSUM,
    "one-namespace": [*URI, "--set", "watchNamespaces={a}"],
    "two-namespaces": [*URI, "--set", "watchNamespaces={a,b}"],
    "bundled": ["--set", "mongodb.bundled.enabled=true"],
    "bundled-two-namespaces": [
        "--set", "mongodb.bundled.enabled=true", "--set", "watchNamespaces={a,b}",
    ],
    "bundled-persistent": [
        "--set", "mongodb.bundled.enabled=true",
        "--set", "mongodb.bundled.persistence.enabled=true",
    ],
    "existing-secret": [
        "--set", "mongodb.existingSecret=my-mongo", "--set", "mongodb.secretKey=connection",
    ],
    "operator-settings": [
        *URI, "--set", "sendBudget=500", "--set", "degradedTiers.low=graceful",
        "--set", "worker.leaseSeconds=20", "--set", "runRetention=7",
        "--set", "operator.peering.enabled=false",
    ],
    "degraded-tiers-null": [
        *URI, "--set", "degradedTiers.low=immediate", "--set", "degradedTiers=null",
    ],
    "console": [*URI, *CONSOLE],
    "console-two-namespaces": [
        *URI, *CONSOLE, "--set", "watchNamespaces={a,b}", "--set", "console.port=8099",
        "--set", "console.readsNeedToken=true",
    ],
    "tracker": [*URI, *TRACKER],
    "monitoring": [*URI, *MONITORING_VALUES],
    "monitoring-two-namespaces": [*URI, *MONITORING_VALUES, "--set", "watchNamespaces={a,b}"],
}  # fmt: skip


@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_value_set_renders(helm: Path, name: str) -> None:
    assert render(helm, *VALUE_SETS[name])


def test_people_who_edit_tasks_may_read_a_test_sends_pod_template(helm: Path) -> None:
    """`kubectl push test` of a task that never ran reads the operator's PodTemplate: the
    built-in `edit` role does not grant it, the chart's aggregated edit role does."""
    (edit,) = find(render(helm, *URI), "ClusterRole", "rel-pushtask-edit")
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert grants("", ["podtemplates"], ["get"]) <= rules_of(edit)
    assert not find(render(helm, *URI, "--set", "userRoles.enabled=false"), "ClusterRole",
                    "rel-pushtask-edit")  # fmt: skip
