"""The kubelet's env resolution: envFrom, env, valueFrom, $(VAR) expansion."""

from __future__ import annotations

import base64
import os
import sys
from typing import Any

import pytest

from devstack.kubelet.env import (
    EnvError,
    base_environment,
    command_line,
    decode_secret,
    expand,
    references,
    resolve_env,
)

POD: dict[str, Any] = {
    "metadata": {
        "name": "web-1",
        "namespace": "shop",
        "uid": "u-1",
        "labels": {"app": "web"},
        "annotations": {"note": "hi"},
    },
    "spec": {"nodeName": "devstack", "serviceAccountName": "runner"},
}


def resolve(
    container: dict[str, Any],
    secrets: dict[str, Any] | None = None,
    configmaps: dict[str, Any] | None = None,
) -> dict[str, str]:
    return resolve_env(
        POD,
        container,
        pod_ip="127.10.0.7",
        host_ip="127.0.0.1",
        secrets=secrets or {},
        configmaps=configmaps or {},
        capacity={"cpu": "2", "memory": "1Gi"},
    )


def test_plain_values_and_expansion_in_order() -> None:
    env = resolve(
        {
            "name": "c",
            "env": [
                {"name": "A", "value": "x"},
                {"name": "B", "value": "$(A)-$(MISSING)-$$(A)"},
                {"name": "C", "value": "$(D)"},  # D is defined later: not expanded
                {"name": "D", "value": "d"},
            ],
        }
    )
    assert env == {"A": "x", "B": "x-$(MISSING)-$(A)", "C": "$(D)", "D": "d"}


def test_field_refs() -> None:
    paths = [
        "metadata.name",
        "metadata.namespace",
        "metadata.uid",
        "status.podIP",
        "spec.nodeName",
        "spec.serviceAccountName",
        "status.hostIP",
        "metadata.labels['app']",
        "metadata.annotations['note']",
    ]
    env = resolve(
        {
            "name": "c",
            "env": [
                {"name": f"V{i}", "valueFrom": {"fieldRef": {"fieldPath": p}}}
                for i, p in enumerate(paths)
            ],
        }
    )
    assert list(env.values()) == [
        "web-1",
        "shop",
        "u-1",
        "127.10.0.7",
        "devstack",
        "runner",
        "127.0.0.1",
        "web",
        "hi",
    ]


def test_unsupported_field_ref() -> None:
    with pytest.raises(EnvError, match="unsupported fieldRef"):
        resolve(
            {
                "name": "c",
                "env": [{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "spec.bogus"}}}],
            }
        )


def test_secret_and_configmap_keys() -> None:
    container = {
        "name": "c",
        "env": [
            {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
            {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}},
            {
                "name": "OPT",
                "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "nope", "optional": True}},
            },
            {
                "name": "OPT2",
                "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k", "optional": True}},
            },
        ],
    }
    refs = references(container)
    assert refs.secrets == {"db", "absent"} and refs.configmaps == {"cfg"}
    env = resolve(
        container,
        secrets={"db": {"password": "s3cret"}, "absent": None},
        configmaps={"cfg": {"mode": "fast"}},
    )
    assert env == {"PW": "s3cret", "MODE": "fast"}


def test_missing_required_secret_and_key() -> None:
    ref = {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}
    with pytest.raises(EnvError, match='secret "db" not found'):
        resolve({"name": "c", "env": [ref]}, secrets={"db": None})
    with pytest.raises(EnvError, match="couldn't find key password in Secret shop/db"):
        resolve({"name": "c", "env": [ref]}, secrets={"db": {"other": "x"}})


def test_env_from_with_prefix_and_override() -> None:
    container = {
        "name": "c",
        "envFrom": [
            {"configMapRef": {"name": "cfg"}},
            {"secretRef": {"name": "sec"}, "prefix": "S_"},
            {"configMapRef": {"name": "gone", "optional": True}},
        ],
        "env": [{"name": "MODE", "value": "override"}],
    }
    env = resolve(
        container,
        secrets={"sec": {"token": "t", "bad=key": "x"}},
        configmaps={"cfg": {"MODE": "fast", "LEVEL": "3"}, "gone": None},
    )
    assert env == {"MODE": "override", "LEVEL": "3", "S_token": "t"}
    with pytest.raises(EnvError, match='configmap "cfg" not found'):
        resolve(
            {"name": "c", "envFrom": [{"configMapRef": {"name": "cfg"}}]}, configmaps={"cfg": None}
        )


def test_resource_field_ref() -> None:
    container = {
        "name": "c",
        "resources": {"limits": {"memory": "256Mi"}},
        "env": [
            {
                "name": "MEM",
                "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}},
            },
            {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
        ],
    }
    assert resolve(container) == {"MEM": "256", "CPU": "2"}


def test_decode_secret_keeps_bytes() -> None:
    raw = b"\xff\xfeok"
    decoded = decode_secret({"k": base64.b64encode(raw).decode()})
    assert os.fsencode(decoded["k"]) == raw


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$(A)", "1"),
        ("$$(A)", "$(A)"),
        ("$(A", "$(A"),
        ("$", "$"),
        ("a$b", "a$b"),
        ("$(A)$(B)", "12"),
        ("$()", "$()"),
        ("x$$", "x$"),
    ],
)
def test_expand(text: str, expected: str) -> None:
    assert expand(text, {"A": "1", "B": "2"}.get) == expected


def test_command_line() -> None:
    env = {"POD_IP": "127.10.0.7"}
    assert command_line(
        {
            "name": "c",
            "command": ["python", "-m", "http.server"],
            "args": ["--bind", "$(POD_IP)", "8080"],
        },
        env,
    ) == ["python", "-m", "http.server", "--bind", "127.10.0.7", "8080"]
    assert command_line({"name": "c", "args": ["pushtask-worker"]}, env) == ["pushtask-worker"]
    with pytest.raises(EnvError, match="no command"):
        command_line({"name": "c", "image": "nginx"}, env)


def test_base_environment_puts_the_venv_first_and_leaks_no_credentials() -> None:
    env = base_environment(
        "web-1",
        {
            "PATH": "/usr/bin:/bin",
            "HOME": "/root",
            "KUBECONFIG": "/admin",
            "PUSHTASK_MONGO_URI": "x",
        },
    )
    assert env["PATH"].split(os.pathsep)[0] == os.path.dirname(sys.executable)
    assert "KUBECONFIG" not in env and "PUSHTASK_MONGO_URI" not in env
    assert "KUBERNETES_SERVICE_HOST" not in env
    assert env["HOSTNAME"] == "web-1" and env["HOME"] == "/root"
