"""Pod phase and status as the kubelet reports them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from devstack.kubelet.status import (
    ContainerView,
    PodFacts,
    Terminated,
    build_status,
    pod_phase,
    rfc3339,
)

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def running(name: str = "c", ready: bool = True) -> ContainerView:
    return ContainerView(
        name=name, image="img", state="running", running_since=T0, ready=ready, started=True
    )


def exited(code: int, name: str = "c") -> ContainerView:
    return ContainerView(
        name=name,
        state="terminated",
        terminated=Terminated(exit_code=code, started_at=T0, finished_at=T0),
    )


def backing_off(last_code: int) -> ContainerView:
    return ContainerView(
        name="c",
        state="waiting",
        waiting_reason="CrashLoopBackOff",
        last_terminated=Terminated(last_code, T0, T0),
        restart_count=2,
    )


@pytest.mark.parametrize(
    ("policy", "views", "phase"),
    [
        ("Always", [ContainerView(name="c")], "Pending"),
        ("Always", [running()], "Running"),
        ("Always", [exited(0)], "Running"),  # about to restart
        ("Always", [backing_off(1)], "Running"),
        ("Never", [exited(0)], "Succeeded"),
        ("Never", [exited(2)], "Failed"),
        ("Never", [exited(0), exited(1, "d")], "Failed"),
        ("Never", [running(), exited(1, "d")], "Running"),
        ("OnFailure", [exited(0)], "Succeeded"),
        ("OnFailure", [exited(1)], "Running"),
        ("OnFailure", [backing_off(1)], "Running"),
        ("Never", [running(), ContainerView(name="d")], "Pending"),
    ],
)
def test_phase(policy: str, views: list[ContainerView], phase: str) -> None:
    assert pod_phase(policy, views, init_done=True) == phase


def test_phase_while_initializing() -> None:
    assert pod_phase("Always", [ContainerView(name="c")], init_done=False) == "Pending"
    assert (
        pod_phase("Never", [ContainerView(name="c")], init_done=False, init_failed=True) == "Failed"
    )


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def test_running_pod_status() -> None:
    pod: dict[str, Any] = {"spec": {}, "status": {}}
    facts = PodFacts(pod_ip="127.10.0.9", host_ip="127.0.0.1", start_time=T0, phase="Running")
    status = build_status(pod, [running(ready=True)], facts, when=T0)
    assert status["podIP"] == "127.10.0.9" and status["podIPs"] == [{"ip": "127.10.0.9"}]
    assert status["startTime"] == "2026-01-02T03:04:05Z"
    conds = conditions(status)
    assert {t: c["status"] for t, c in conds.items()} == {
        "PodReadyToStartContainers": "True",
        "Initialized": "True",
        "Ready": "True",
        "ContainersReady": "True",
        "PodScheduled": "True",
    }
    cs = status["containerStatuses"][0]
    assert cs["state"] == {"running": {"startedAt": "2026-01-02T03:04:05Z"}}
    assert cs["ready"] is True and cs["restartCount"] == 0


def test_unready_container_and_transition_times() -> None:
    facts = PodFacts(pod_ip="127.10.0.9", host_ip="127.0.0.1", start_time=T0, phase="Running")
    first = build_status({"spec": {}}, [running(ready=False)], facts, when=T0)
    ready = conditions(first)["Ready"]
    assert ready["status"] == "False" and ready["reason"] == "ContainersNotReady"
    assert "[c]" in ready["message"]
    later = T0 + timedelta(seconds=30)
    same = build_status(
        {"spec": {}},
        [running(ready=False)],
        facts,
        when=later,
        previous_conditions=first["conditions"],
    )
    assert conditions(same)["Ready"]["lastTransitionTime"] == rfc3339(T0)
    flipped = build_status(
        {"spec": {}},
        [running(ready=True)],
        facts,
        when=later,
        previous_conditions=first["conditions"],
    )
    assert conditions(flipped)["Ready"] == {
        "type": "Ready",
        "status": "True",
        "lastProbeTime": None,
        "lastTransitionTime": rfc3339(later),
    }


def test_readiness_gates_come_from_the_api_object() -> None:
    facts = PodFacts(pod_ip="127.10.0.9", host_ip="127.0.0.1", start_time=T0, phase="Running")
    pod: dict[str, Any] = {
        "spec": {"readinessGates": [{"conditionType": "example.com/lb"}]},
        "status": {"conditions": []},
    }
    assert conditions(build_status(pod, [running()], facts))["Ready"]["status"] == "False"
    pod["status"]["conditions"] = [{"type": "example.com/lb", "status": "True"}]
    assert conditions(build_status(pod, [running()], facts))["Ready"]["status"] == "True"


def test_crash_loop_and_completed_statuses() -> None:
    facts = PodFacts(pod_ip="127.10.0.9", host_ip="127.0.0.1", start_time=T0, phase="Running")
    cs = build_status({"spec": {}}, [backing_off(3)], facts)["containerStatuses"][0]
    assert cs["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert cs["lastState"]["terminated"]["exitCode"] == 3
    assert cs["lastState"]["terminated"]["reason"] == "Error"
    assert cs["restartCount"] == 2
    facts.phase = "Succeeded"
    done = build_status({"spec": {}}, [exited(0)], facts)
    assert done["containerStatuses"][0]["state"]["terminated"]["reason"] == "Completed"
    assert conditions(done)["Ready"]["reason"] == "PodCompleted"


def test_signal_exit() -> None:
    t = Terminated(exit_code=143, signal=15, started_at=T0, finished_at=T0).to_api()
    assert t["exitCode"] == 143 and t["signal"] == 15 and t["reason"] == "Error"
