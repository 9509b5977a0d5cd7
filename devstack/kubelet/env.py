"""A container's environment and argv, resolved from the pod spec as the kubelet does."""

from __future__ import annotations

import base64
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

# Data of a Secret (decoded) or ConfigMap by name; None means "looked up: does not exist".
ObjectData = Mapping[str, str] | None

# What a real container inherits from its image, here from the kubelet's environment:
# nothing that names the kubelet's own credentials (KUBECONFIG) or cluster.
_INHERITED = (
    "PATH",
    "HOME",
    "USER",
    "LANG",
    "LANGUAGE",
    "TZ",
    "TMPDIR",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
)


class EnvError(Exception):
    """The container cannot start with this spec (the kubelet's CreateContainerConfigError)."""


@dataclass
class References:
    secrets: set[str] = field(default_factory=set)
    configmaps: set[str] = field(default_factory=set)


def references(container: Mapping[str, Any]) -> References:
    """Secrets and ConfigMaps a container's env/envFrom read."""
    refs = References()
    for var in container.get("env") or []:
        source = var.get("valueFrom") or {}
        if "secretKeyRef" in source:
            refs.secrets.add(source["secretKeyRef"]["name"])
        if "configMapKeyRef" in source:
            refs.configmaps.add(source["configMapKeyRef"]["name"])
    for source in container.get("envFrom") or []:
        if "secretRef" in source:
            refs.secrets.add(source["secretRef"]["name"])
        if "configMapRef" in source:
            refs.configmaps.add(source["configMapRef"]["name"])
    return refs


def decode_secret(data: Mapping[str, str] | None) -> dict[str, str]:
    # surrogateescape keeps non-UTF-8 bytes intact all the way to the process's environ.
    return {
        k: base64.b64decode(v).decode("utf-8", "surrogateescape") for k, v in (data or {}).items()
    }


def expand(text: str, lookup: Callable[[str], str | None]) -> str:
    """Kubernetes ``$(VAR)`` expansion: ``$$`` escapes, unknown references stay as written."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch != "$" or i + 1 >= n:
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            close = text.find(")", i + 2)
            if close < 0:
                out.append("$(")
                i += 2
                continue
            name = text[i + 2 : close]
            value = lookup(name)
            out.append(value if value is not None else f"$({name})")
            i = close + 1
        else:
            out.append("$" + nxt)
            i += 2
    return "".join(out)


def field_value(pod: Mapping[str, Any], path: str, pod_ip: str, host_ip: str) -> str:
    """The value of a downward-API fieldRef."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    for prefix, key in (("metadata.labels['", "labels"), ("metadata.annotations['", "annotations")):
        if path.startswith(prefix) and path.endswith("']"):
            return str((meta.get(key) or {}).get(path[len(prefix) : -2], ""))
    simple: dict[str, str] = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", "") or "default",
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
    }
    if path not in simple:
        raise EnvError(f"unsupported fieldRef fieldPath {path!r}")
    return simple[path]


def parse_quantity(text: str) -> float:
    """A resource.Quantity as a number (cpu in cores, memory in bytes)."""
    text = str(text).strip()
    for suffix in ("Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "k", "M", "G", "T", "P", "E", "m"):
        if text.endswith(suffix):
            factor = {
                "Ki": 2**10,
                "Mi": 2**20,
                "Gi": 2**30,
                "Ti": 2**40,
                "Pi": 2**50,
                "Ei": 2**60,
                "k": 1e3,
                "M": 1e6,
                "G": 1e9,
                "T": 1e12,
                "P": 1e15,
                "E": 1e18,
                "m": 1e-3,
            }[suffix]
            return float(text[: -len(suffix)]) * factor
    return float(text)


def resource_value(
    container: Mapping[str, Any], ref: Mapping[str, Any], capacity: Mapping[str, str]
) -> str:
    """A resourceFieldRef: the container's limit/request, the node's capacity if unset."""
    resource: str = ref["resource"]  # e.g. limits.cpu, requests.memory
    kind, _, name = resource.partition(".")
    resources = (container.get("resources") or {}).get(kind) or {}
    raw = resources.get(name) or capacity.get(name, "0")
    divisor = str(ref.get("divisor") or "1")
    value = parse_quantity(raw) / parse_quantity(divisor)
    # The real kubelet rounds up to an integer number of divisor units.
    rounded = int(value) if value == int(value) else int(value) + 1
    return str(rounded)


def resolve_env(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    *,
    pod_ip: str,
    host_ip: str,
    secrets: Mapping[str, ObjectData],
    configmaps: Mapping[str, ObjectData],
    capacity: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The variables the pod spec asks for, in the kubelet's order: envFrom, then env.

    ``secrets`` and ``configmaps`` hold every referenced object (see :func:`references`),
    None for one that does not exist. Raises :class:`EnvError` as the kubelet would refuse
    to create the container.
    """
    namespace = (pod.get("metadata") or {}).get("namespace", "")
    result: dict[str, str] = {}

    def lookup_object(kind: str, name: str) -> ObjectData:
        table = secrets if kind == "Secret" else configmaps
        return table.get(name)

    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind, key in (("Secret", "secretRef"), ("ConfigMap", "configMapRef")):
            if key not in source:
                continue
            ref = source[key]
            data = lookup_object(kind, ref["name"])
            if data is None:
                if ref.get("optional"):
                    continue
                raise EnvError(f'{kind.lower()} "{ref["name"]}" not found')
            for k, v in data.items():
                name = prefix + k
                if name and "=" not in name and "\x00" not in name:
                    result[name] = v

    for var in container.get("env") or []:
        name = var["name"]
        if "valueFrom" not in var:
            result[name] = expand(var.get("value", ""), result.get)
            continue
        source = var["valueFrom"]
        value: str | None
        if "fieldRef" in source:
            value = field_value(pod, source["fieldRef"]["fieldPath"], pod_ip, host_ip)
        elif "resourceFieldRef" in source:
            value = resource_value(container, source["resourceFieldRef"], capacity or {})
        else:
            kind, key = (
                ("Secret", "secretKeyRef")
                if "secretKeyRef" in source
                else ("ConfigMap", "configMapKeyRef")
            )
            if key not in source:
                raise EnvError(f"env {name}: unsupported valueFrom {sorted(source)}")
            ref = source[key]
            data = lookup_object(kind, ref["name"])
            if data is None:
                if ref.get("optional"):
                    continue
                raise EnvError(f'{kind.lower()} "{ref["name"]}" not found')
            if ref["key"] not in data:
                if ref.get("optional"):
                    continue
                raise EnvError(
                    f"couldn't find key {ref['key']} in {kind} {namespace}/{ref['name']}"
                )
            value = data[ref["key"]]
        result[name] = value
    return result


def base_environment(pod_name: str, parent: Mapping[str, str] | None = None) -> dict[str, str]:
    """What the "image" contributes: a PATH on which the project's console scripts resolve."""
    parent = os.environ if parent is None else parent
    env = {k: parent[k] for k in _INHERITED if k in parent}
    bindir = os.path.dirname(sys.executable)
    rest = [
        p
        for p in env.get("PATH", "/usr/local/bin:/usr/bin:/bin").split(os.pathsep)
        if p and p != bindir
    ]
    env["PATH"] = os.pathsep.join([bindir, *rest])
    env["HOSTNAME"] = pod_name
    # Python images usually set this; without it a process's output reaches its log file
    # only when a buffer fills, which makes `devstack logs` useless while it runs.
    env["PYTHONUNBUFFERED"] = "1"
    return env


def command_line(container: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    """argv: command + args, with ``$(VAR)`` expanded. The image's entrypoint is unknown, so
    a container with only ``args`` runs them as the whole command line."""
    argv = list(container.get("command") or []) + list(container.get("args") or [])
    if not argv:
        raise EnvError(
            f"container {container.get('name')!r} has no command or args "
            "(devstack ignores the image, so its entrypoint is unknown)"
        )
    return [expand(str(a), env.get) for a in argv]
