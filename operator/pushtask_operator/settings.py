"""Operator settings, read once from the environment (the Helm chart sets every one).

Everything an operator of the system may want to change without a new image is here:
which namespaces to watch, where MongoDB is, what the worker pods look like, the
operator-wide send budget and which priority tiers are degraded at a peak.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Degrade = Literal["graceful", "immediate"]

DEFAULT_WORKER_RESOURCES: dict[str, dict[str, str]] = {
    "requests": {"cpu": "100m", "memory": "128Mi"},
    "limits": {"memory": "256Mi"},
}


# Three tiers by spec.priority (default 500: "normal").
DEFAULT_TIERS: dict[str, tuple[int, int]] = {
    "low": (0, 299),
    "normal": (300, 699),
    "critical": (700, 1000),
}


class SettingsError(ValueError):
    """An environment variable holds a value the operator cannot use (fail at start-up)."""


@dataclass(frozen=True)
class OperatorSettings:
    # Namespaces to watch; empty means the whole cluster.
    namespaces: tuple[str, ...] = ()
    # The operator's own connection to MongoDB (it writes run documents and reads progress).
    mongo_uri: str = "mongodb://localhost:27017/pushtask"
    # Workers get the URI from this Secret, which must exist in each task's namespace.
    mongo_secret_name: str = "pushtask-mongodb"
    mongo_secret_key: str = "uri"
    worker_image: str = "pushtask:latest"
    worker_image_pull_policy: str = "IfNotPresent"
    worker_service_account: str = "pushtask-worker"
    worker_resources: Mapping[str, Any] = field(
        default_factory=lambda: dict(DEFAULT_WORKER_RESOURCES)
    )
    # Seconds a worker may take to finish its in-flight batch after SIGTERM.
    worker_termination_grace_seconds: int = 60
    worker_metrics_port: int = 9090
    lease_seconds: float = 30.0
    # Extra labels/annotations for worker pods (e.g. a service mesh opt-out).
    worker_pod_labels: Mapping[str, str] = field(default_factory=dict)
    worker_pod_annotations: Mapping[str, str] = field(default_factory=dict)
    # More environment for every worker (a proxy, a log level); the operator's own
    # variables (the store, the run, the pod's identity) cannot be replaced by these.
    worker_env: Mapping[str, str] = field(default_factory=dict)
    # Operator-wide sends per second shared by every running task; 0 = no global budget.
    send_budget: float = 0.0
    # Split the budget in proportion to spec.priority (else evenly) among tasks that want
    # more than their part.
    fair_share_by_priority: bool = False
    # Tier name -> inclusive range of spec.priority (0..1000) it covers.
    tiers: Mapping[str, tuple[int, int]] = field(default_factory=lambda: dict(DEFAULT_TIERS))
    # Tier name -> how it is degraded right now ("graceful" pause / "immediate" cancel):
    # the chart's degradedTiers at start, then as the degrade ConfigMap says (degrade.py).
    degraded_tiers: Mapping[str, Degrade] = field(default_factory=dict)
    # "namespace/name" of the ConfigMap watched for live degradations ("": none).
    degrade_configmap: str = ""
    # How often each running task's progress is aggregated into its status.
    progress_interval: float = 3.0
    # The timeout of a URL source probe at validation time.
    url_probe_timeout: float = 10.0
    # Runs of a task whose ledger is kept in MongoDB (older ones are deleted when a new run
    # starts; all of them when the task is deleted), so a long-lived stack stays bounded.
    run_retention: int = 3

    @property
    def cluster_wide(self) -> bool:
        return not self.namespaces

    def tier_of(self, priority: int) -> str | None:
        for name, (low, high) in self.tiers.items():
            if low <= priority <= high:
                return name
        return None

    def degrade_for(self, priority: int) -> Degrade | None:
        """How a task of this priority is degraded right now (None: it is not)."""
        tier = self.tier_of(priority)
        return self.degraded_tiers.get(tier) if tier is not None else None


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _mapping(name: str, value: str) -> dict[str, Any]:
    """JSON object, or `k=v,k=v` for the simple cases a human types in a values file."""
    value = value.strip()
    if value in ("", "null", "{}"):  # Helm renders an unset map as null
        return {}
    if value.startswith("{"):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as exc:
            raise SettingsError(f"{name}: not valid JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise SettingsError(f"{name}: expected a JSON object")
        return parsed
    out: dict[str, Any] = {}
    for item in _csv(value):
        key, sep, val = item.partition("=")
        if not sep:
            raise SettingsError(f"{name}: expected key=value, got {item!r}")
        out[key.strip()] = val.strip()
    return out


def _number(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}: not a number: {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name}: must be >= {minimum}, got {value}")
    return value


def _tiers(value: str) -> dict[str, tuple[int, int]]:
    """`{"low": [0, 299], ...}` (JSON) or `low=0-299,normal=300-699`."""
    raw = _mapping("PUSHTASK_TIERS", value)
    if not raw:
        return dict(DEFAULT_TIERS)
    out: dict[str, tuple[int, int]] = {}
    for name, rng in raw.items():
        try:
            low, high = rng.split("-", 1) if isinstance(rng, str) else rng
            out[name] = (int(low), int(high))
        except (TypeError, ValueError):
            raise SettingsError(
                f"PUSHTASK_TIERS: tier {name!r}: expected a range such as 0-299, got {rng!r}"
            ) from None
        if out[name][0] > out[name][1]:
            raise SettingsError(f"PUSHTASK_TIERS: tier {name!r}: range is empty")
    return out


def _configmap_ref(value: str) -> str:
    value = value.strip()
    if value and value.count("/") != 1:
        raise SettingsError(f"PUSHTASK_DEGRADE_CONFIGMAP: expected namespace/name, got {value!r}")
    return value


def from_env(env: Mapping[str, str] | None = None) -> OperatorSettings:
    """Build settings from `PUSHTASK_*` variables; unknown or bad values fail loudly."""
    env = os.environ if env is None else env
    d = OperatorSettings()
    tiers = _tiers(env.get("PUSHTASK_TIERS", ""))
    degraded = _mapping("PUSHTASK_DEGRADED_TIERS", env.get("PUSHTASK_DEGRADED_TIERS", ""))
    for tier, mode in list(degraded.items()):
        if mode not in ("graceful", "immediate", "off"):
            raise SettingsError(
                f"PUSHTASK_DEGRADED_TIERS: tier {tier!r}: mode must be graceful, immediate or"
                f" off, got {mode!r}"
            )
        if tier not in tiers:
            raise SettingsError(
                f"PUSHTASK_DEGRADED_TIERS: unknown tier {tier!r}; tiers are {', '.join(tiers)}"
            )
    resources = (
        _mapping("PUSHTASK_WORKER_RESOURCES", env["PUSHTASK_WORKER_RESOURCES"])
        if env.get("PUSHTASK_WORKER_RESOURCES")
        else dict(DEFAULT_WORKER_RESOURCES)
    )
    return OperatorSettings(
        namespaces=_csv(env.get("PUSHTASK_NAMESPACES", "")),
        mongo_uri=env.get("PUSHTASK_MONGO_URI", d.mongo_uri),
        mongo_secret_name=env.get("PUSHTASK_MONGO_SECRET", d.mongo_secret_name),
        mongo_secret_key=env.get("PUSHTASK_MONGO_SECRET_KEY", d.mongo_secret_key),
        worker_image=env.get("PUSHTASK_WORKER_IMAGE", d.worker_image),
        worker_image_pull_policy=env.get(
            "PUSHTASK_WORKER_IMAGE_PULL_POLICY", d.worker_image_pull_policy
        ),
        worker_service_account=env.get("PUSHTASK_WORKER_SERVICE_ACCOUNT", d.worker_service_account),
        worker_resources=resources,
        worker_termination_grace_seconds=int(
            _number(env, "PUSHTASK_WORKER_GRACE_SECONDS", d.worker_termination_grace_seconds, 1)
        ),
        worker_metrics_port=int(_number(env, "PUSHTASK_WORKER_METRICS_PORT", 9090)),
        lease_seconds=_number(env, "PUSHTASK_LEASE_SECONDS", d.lease_seconds, 1),
        worker_pod_labels=_mapping(
            "PUSHTASK_WORKER_POD_LABELS", env.get("PUSHTASK_WORKER_POD_LABELS", "")
        ),
        worker_pod_annotations=_mapping(
            "PUSHTASK_WORKER_POD_ANNOTATIONS", env.get("PUSHTASK_WORKER_POD_ANNOTATIONS", "")
        ),
        worker_env={
            str(k): str(v)
            for k, v in _mapping("PUSHTASK_WORKER_ENV", env.get("PUSHTASK_WORKER_ENV", "")).items()
        },
        send_budget=_number(env, "PUSHTASK_SEND_BUDGET", 0.0),
        fair_share_by_priority=env.get("PUSHTASK_FAIR_SHARE_BY_PRIORITY", "").lower()
        in ("1", "true", "yes"),
        tiers=tiers,
        # "off" lifts a degradation explicitly (Helm cannot remove a map key on upgrade).
        degraded_tiers={t: m for t, m in degraded.items() if m != "off"},
        degrade_configmap=_configmap_ref(env.get("PUSHTASK_DEGRADE_CONFIGMAP", "")),
        progress_interval=_number(env, "PUSHTASK_PROGRESS_INTERVAL", d.progress_interval, 0.5),
        url_probe_timeout=_number(env, "PUSHTASK_URL_PROBE_TIMEOUT", d.url_probe_timeout, 0.1),
        run_retention=int(_number(env, "PUSHTASK_RUN_RETENTION", d.run_retention, 1)),
    )
