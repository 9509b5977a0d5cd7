"""Pod status as the kubelet reports it, built from what the kubelet knows of each container.

Pure functions: no I/O, so the phase and condition rules are tested without a cluster.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal


def now() -> datetime:
    return datetime.now(UTC)


def rfc3339(ts: datetime) -> str:
    """metav1.Time: second precision, UTC, 'Z'."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_time(ts: datetime) -> str:
    """metav1.MicroTime (Lease renewTime)."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass
class Terminated:
    exit_code: int
    started_at: datetime | None
    finished_at: datetime
    reason: str = ""
    message: str = ""
    signal: int | None = None
    container_id: str = ""

    def to_api(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "exitCode": self.exit_code,
            "reason": self.reason or ("Completed" if self.exit_code == 0 else "Error"),
            "finishedAt": rfc3339(self.finished_at),
            "startedAt": rfc3339(self.started_at or self.finished_at),
        }
        if self.message:
            out["message"] = self.message
        if self.signal:
            out["signal"] = self.signal
        if self.container_id:
            out["containerID"] = self.container_id
        return out


@dataclass
class ContainerView:
    """What the kubelet knows of one container at one moment."""

    name: str
    image: str = ""
    state: Literal["waiting", "running", "terminated"] = "waiting"
    waiting_reason: str = "ContainerCreating"
    waiting_message: str = ""
    running_since: datetime | None = None
    terminated: Terminated | None = None
    last_terminated: Terminated | None = None
    restart_count: int = 0
    ready: bool = False
    started: bool = False
    container_id: str = ""

    def to_api(self) -> dict[str, Any]:
        state: dict[str, Any]
        if self.state == "running":
            state = {"running": {"startedAt": rfc3339(self.running_since or now())}}
        elif self.state == "terminated" and self.terminated is not None:
            state = {"terminated": self.terminated.to_api()}
        else:
            waiting: dict[str, Any] = {"reason": self.waiting_reason}
            if self.waiting_message:
                waiting["message"] = self.waiting_message
            state = {"waiting": waiting}
        out: dict[str, Any] = {
            "name": self.name,
            "image": self.image or "devstack/none",
            # Nothing is pulled: the ID says so instead of pretending to be a digest.
            "imageID": f"devstack://{self.image}" if self.image else "",
            "ready": self.ready,
            "restartCount": self.restart_count,
            "started": self.started,
            "state": state,
            "lastState": (
                {"terminated": self.last_terminated.to_api()} if self.last_terminated else {}
            ),
        }
        if self.container_id and self.state != "waiting":
            out["containerID"] = self.container_id
        return out


def pod_phase(
    restart_policy: str,
    containers: Sequence[ContainerView],
    init_done: bool,
    init_failed: bool = False,
) -> str:
    """The kubelet's getPhase, for containers of one pod."""
    if init_failed and restart_policy == "Never":
        return "Failed"
    if not init_done:
        return "Pending"
    running = waiting = stopped = succeeded = 0
    for c in containers:
        if c.state == "running":
            running += 1
        elif c.state == "terminated":
            stopped += 1
            if c.terminated is not None and c.terminated.exit_code == 0:
                succeeded += 1
        elif c.last_terminated is not None:  # waiting to restart after a run
            stopped += 1
            if c.last_terminated.exit_code == 0:
                succeeded += 1
        else:
            waiting += 1
    if waiting:
        return "Pending"
    if running:
        return "Running"
    if restart_policy == "Always":
        return "Running"
    if stopped == succeeded:
        return "Succeeded"
    if restart_policy == "Never":
        return "Failed"
    return "Running"  # OnFailure: a failed container is about to be restarted


@dataclass
class PodFacts:
    """Everything besides the containers that goes into a pod's status."""

    pod_ip: str
    host_ip: str
    start_time: datetime
    phase: str
    init_done: bool = True
    sandbox_ready: bool = True
    init_containers: Sequence[ContainerView] = field(default_factory=list)
    message: str = ""
    reason: str = ""


def _condition(
    ctype: str,
    ok: bool,
    previous: Mapping[str, Mapping[str, Any]],
    when: datetime,
    reason: str = "",
    message: str = "",
) -> dict[str, Any]:
    status = "True" if ok else "False"
    prev = previous.get(ctype)
    # lastTransitionTime moves only when the status flips.
    transition = (
        prev.get("lastTransitionTime") if prev and prev.get("status") == status else None
    ) or rfc3339(when)
    cond: dict[str, Any] = {
        "type": ctype,
        "status": status,
        "lastProbeTime": None,
        "lastTransitionTime": transition,
    }
    if reason and not ok:
        cond["reason"] = reason
    if message and not ok:
        cond["message"] = message
    return cond


def build_status(
    pod: Mapping[str, Any],
    containers: Sequence[ContainerView],
    facts: PodFacts,
    when: datetime | None = None,
    previous_conditions: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The ``status`` the kubelet posts for ``pod``.

    ``previous_conditions`` (what the kubelet last posted) keeps lastTransitionTime stable
    even before the watch has brought that post back; readiness gates always come from the
    pod as the API server has it, since other controllers set them.
    """
    when = when or now()
    spec = pod.get("spec") or {}
    api_conditions = {c["type"]: c for c in (pod.get("status") or {}).get("conditions") or []}
    previous = dict(api_conditions)
    previous.update({c["type"]: c for c in previous_conditions or []})
    terminal = facts.phase in ("Succeeded", "Failed")
    unready = [c.name for c in containers if not c.ready]
    uninit = [
        c.name
        for c in facts.init_containers
        if not (c.state == "terminated" and c.terminated and c.terminated.exit_code == 0)
    ]
    containers_ready = not unready and not terminal
    gates_ok = all(
        (api_conditions.get(g["conditionType"]) or {}).get("status") == "True"
        for g in spec.get("readinessGates") or []
    )
    not_ready_reason = "PodCompleted" if terminal else "ContainersNotReady"
    not_ready_msg = "" if terminal else f"containers with unready status: [{' '.join(unready)}]"
    conditions = [
        _condition(
            "PodReadyToStartContainers", facts.sandbox_ready and not terminal, previous, when
        ),
        _condition(
            "Initialized",
            facts.init_done,
            previous,
            when,
            "ContainersNotInitialized",
            f"containers with incomplete status: [{' '.join(uninit)}]",
        ),
        _condition(
            "Ready",
            containers_ready and gates_ok,
            previous,
            when,
            not_ready_reason if not containers_ready else "ReadinessGatesNotReady",
            not_ready_msg if not containers_ready else "readiness gates not all True",
        ),
        _condition(
            "ContainersReady", containers_ready, previous, when, not_ready_reason, not_ready_msg
        ),
        _condition("PodScheduled", True, previous, when),
    ]
    status: dict[str, Any] = {
        "phase": facts.phase,
        "conditions": conditions,
        "hostIP": facts.host_ip,
        "hostIPs": [{"ip": facts.host_ip}],
        "startTime": rfc3339(facts.start_time),
        "containerStatuses": [c.to_api() for c in containers],
    }
    if facts.pod_ip:
        status["podIP"] = facts.pod_ip
        status["podIPs"] = [{"ip": facts.pod_ip}]
    if facts.init_containers:
        status["initContainerStatuses"] = [c.to_api() for c in facts.init_containers]
    if facts.message:
        status["message"] = facts.message
    if facts.reason:
        status["reason"] = facts.reason
    return status
