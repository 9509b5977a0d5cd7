import dataclasses
from pathlib import Path
from typing import Any

import pytest

from pushtask.naming import worker_deployment_name
from pushtask_operator.deployment import (
    build_worker_deployment,
    label_value,
    secret_key_refs,
    selector_string,
    termination_grace_seconds,
)
from pushtask_operator.settings import OperatorSettings

META = {"name": "spring-sale", "namespace": "shop", "uid": "0123456789abcdef"}
SPEC: dict[str, Any] = {
    "workers": 3,
    "run": 2,
    "message": {"channel": "webhook", "webhook": {"url": "http://x", "timeoutSeconds": 40}},
}
SETTINGS = OperatorSettings(
    mongo_secret_name="mongo",
    mongo_secret_key="uri",
    worker_image="ghcr.io/x/pushtask:1",
    worker_service_account="pushtask-worker",
    worker_resources={"requests": {"cpu": "50m"}, "limits": {"memory": "200Mi"}},
    worker_metrics_port=9100,
    lease_seconds=20,
)
RUN_ID = "shop.spring-sale.2.01234567"


def build(replicas: int = 3, **kw: Any) -> dict[str, Any]:
    return build_worker_deployment(META, SPEC, RUN_ID, SETTINGS, replicas=replicas, **kw)


def env_of(dep: dict[str, Any]) -> dict[str, Any]:
    c = dep["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


def test_owner_reference_makes_the_task_the_controller() -> None:
    (ref,) = build()["metadata"]["ownerReferences"]
    assert ref == {
        "apiVersion": "pushtask.dev/v1alpha1",
        "kind": "PushTask",
        "name": "spring-sale",
        "uid": "0123456789abcdef",
        "controller": True,
        "blockOwnerDeletion": True,
    }


def test_labels_selector_and_replicas() -> None:
    dep = build(replicas=3)
    assert dep["metadata"]["name"] == "spring-sale-worker"
    assert dep["metadata"]["namespace"] == "shop"
    sel = dep["spec"]["selector"]["matchLabels"]
    assert sel == {"app.kubernetes.io/name": "pushtask-worker", "pushtask.dev/task": "spring-sale"}
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert labels["pushtask.dev/run"] == "2"
    assert sel.items() <= labels.items()  # the selector selects the template
    assert "pushtask.dev/run" not in sel  # selectors are immutable: a new run reuses it
    assert dep["spec"]["replicas"] == 3
    assert build(replicas=0)["spec"]["replicas"] == 0
    assert build(replicas=-2)["spec"]["replicas"] == 0
    assert selector_string("spring-sale") == (
        "app.kubernetes.io/name=pushtask-worker,pushtask.dev/task=spring-sale"
    )


def test_environment_of_the_worker() -> None:
    env = env_of(build())
    assert env["PUSHTASK_MONGO_URI"] == {"secretKeyRef": {"name": "mongo", "key": "uri"}}
    assert env["PUSHTASK_RUN_ID"] == RUN_ID
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["PUSHTASK_METRICS_PORT"] == "9100"
    assert env["PUSHTASK_LEASE_SECONDS"] == "20"


def test_more_environment_from_the_settings_never_replaces_the_operators() -> None:
    settings = dataclasses.replace(
        SETTINGS,
        worker_env={"HTTPS_PROXY": "http://proxy:3128", "PUSHTASK_RUN_ID": "someone-else"},
    )
    dep = build_worker_deployment(META, SPEC, RUN_ID, settings, replicas=1)
    names = [e["name"] for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]]
    assert len(names) == len(set(names))  # one entry a name: no "last one wins" guessing
    env = env_of(dep)
    assert env["HTTPS_PROXY"] == "http://proxy:3128"
    assert env["PUSHTASK_RUN_ID"] == RUN_ID


def test_container_runs_console_script_with_settings_resources() -> None:
    pod = build()["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"] == ["pushtask-worker"]
    assert c["image"] == "ghcr.io/x/pushtask:1"
    assert c["resources"] == {"requests": {"cpu": "50m"}, "limits": {"memory": "200Mi"}}
    assert c["ports"] == [{"name": "metrics", "containerPort": 9100, "protocol": "TCP"}]


def test_workers_have_no_api_access_and_run_locked_down() -> None:
    pod = build()["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "pushtask-worker"
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False  # found on kind: links override settings
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    sc = pod["containers"][0]["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}


def test_grace_period_covers_a_batch() -> None:
    # 40 s channel timeout: one attempt plus the result write must fit.
    assert termination_grace_seconds(SPEC, SETTINGS) >= 80
    assert termination_grace_seconds({}, SETTINGS) == SETTINGS.worker_termination_grace_seconds
    pod = build()["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == termination_grace_seconds(SPEC, SETTINGS)


def test_metrics_port_zero_means_no_port() -> None:
    settings = OperatorSettings(worker_metrics_port=0)
    dep = build_worker_deployment(META, SPEC, RUN_ID, settings, replicas=1)
    assert "ports" not in dep["spec"]["template"]["spec"]["containers"][0]
    assert env_of(dep)["PUSHTASK_METRICS_PORT"] == "0"


def test_long_names_fit_label_limits() -> None:
    long = "a" * 200
    assert label_value("short") == "short"
    value = label_value(long)
    assert len(value) <= 63 and value == label_value(long)
    assert label_value("b" * 63) == "b" * 63
    assert len(worker_deployment_name("x" * 253)) <= 200


def test_secrets_reach_workers_through_the_environment() -> None:
    spec = {
        **SPEC,
        "message": {
            "channel": "smtp",
            "webhook": {"url": "http://x", "secretRef": {"name": "hmac", "key": "k"}},
            "smtp": {"host": "h", "credentialsSecretRef": {"name": "mail"}},
        },
        "audience": {
            "sources": [
                {"kind": "inline", "users": ["a"]},
                {"kind": "mongo", "collection": "u", "secretRef": {"name": "crm", "key": "uri"}},
            ],
            "exclude": [{"kind": "mongo", "collection": "optout", "secretRef": {"name": "crm2"}}],
        },
    }
    refs = {r.env: (r.secret, r.key) for r in secret_key_refs(spec)}
    assert refs == {
        "PUSHTASK_WEBHOOK_SECRET": ("hmac", "k"),
        "PUSHTASK_SMTP_USERNAME": ("mail", "username"),
        "PUSHTASK_SMTP_PASSWORD": ("mail", "password"),
        "PUSHTASK_AUDIENCE_SOURCES_1_URI": ("crm", "uri"),
        "PUSHTASK_AUDIENCE_EXCLUDE_0_URI": ("crm2", "uri"),
    }
    env = env_of(build_worker_deployment(META, spec, RUN_ID, SETTINGS, replicas=1))
    assert env["PUSHTASK_WEBHOOK_SECRET"] == {"secretKeyRef": {"name": "hmac", "key": "k"}}


def test_mobile_credentials_reach_workers_through_the_environment() -> None:
    fcm = {
        **SPEC,
        "message": {
            "channel": "fcm",
            "fcm": {
                "serviceAccountSecretRef": {"name": "firebase"},
                "caSecretRef": {"name": "gateway-ca", "key": "bundle.pem"},
            },
        },
    }
    apns = {
        **SPEC,
        "message": {
            "channel": "apns",
            "apns": {"keySecretRef": {"name": "apple"}, "keyId": "K", "teamId": "T"},
        },
    }
    assert [(r.env, r.secret, r.key, r.field) for r in secret_key_refs(fcm)] == [
        (
            "PUSHTASK_FCM_SERVICE_ACCOUNT",
            "firebase",
            "service-account.json",
            "spec.message.fcm.serviceAccountSecretRef",
        ),
        ("PUSHTASK_FCM_CA_BUNDLE", "gateway-ca", "bundle.pem", "spec.message.fcm.caSecretRef"),
    ]
    assert [(r.env, r.secret, r.key) for r in secret_key_refs(apns)] == [
        ("PUSHTASK_APNS_KEY", "apple", "key.p8")
    ]
    env = env_of(build_worker_deployment(META, apns, RUN_ID, SETTINGS, replicas=1))
    assert env["PUSHTASK_APNS_KEY"] == {"secretKeyRef": {"name": "apple", "key": "key.p8"}}


def test_the_tools_look_up_the_deployment_the_operator_names(tmp_path: Path) -> None:
    """`kubectl push recipient` reads the workers' MongoDB Secret through their Deployment:
    for a long task name it must ask for the shortened name the operator gave it."""
    from kubernetes.client.exceptions import ApiException

    from pushtask_client.taskapi import Cluster, ClusterError
    from tests.unit.test_console_security import kubeconfig_of_nothing

    name = "n" * 240
    built = build_worker_deployment(
        {**META, "name": name}, SPEC, "r", OperatorSettings(), replicas=1, run=1
    )
    asked: list[str] = []

    class Apps:  # records the name asked for; the API server's answer does not matter here
        def read_namespaced_deployment(self, deployment: str, ns: str) -> None:
            asked.append(deployment)
            raise ApiException(status=404, reason="Not Found")

    cluster = Cluster(kubeconfig_of_nothing(tmp_path))
    cluster.apps = Apps()  # type: ignore[assignment]
    with pytest.raises(ClusterError):
        cluster.workers_mongo_uri("shop", name)
    assert asked == [built["metadata"]["name"]] and len(asked[0]) == 200


def test_a_test_template_is_the_pod_template_the_first_run_would_get() -> None:
    """A task that never ran has no Deployment to copy a test pod from: the operator
    answers the request with the workers' pod template (image, ServiceAccount, Secret env,
    security context) as a PodTemplate named like the Deployment and owned by the task."""
    from pushtask_operator.deployment import build_test_pod_template

    got = build_test_pod_template(META, SPEC, SETTINGS, "n0nce")
    assert (got["apiVersion"], got["kind"]) == ("v1", "PodTemplate")
    meta = got["metadata"]
    assert (meta["name"], meta["namespace"]) == ("spring-sale-worker", "shop")
    assert meta["annotations"] == {"test.pushtask.dev/template-answers": "n0nce"}
    assert meta["ownerReferences"] == build()["metadata"]["ownerReferences"]
    template = got["template"]
    first = build_worker_deployment(META, SPEC, "", SETTINGS, replicas=0, run=0)
    assert template == first["spec"]["template"]
    (container,) = template["spec"]["containers"]
    assert container["image"] == "ghcr.io/x/pushtask:1"
    assert template["spec"]["serviceAccountName"] == "pushtask-worker"
    # No run yet: the run id is empty (the test pod drops it with the store's URI).
    assert env_of({"spec": {"template": template}})["PUSHTASK_RUN_ID"] == ""
