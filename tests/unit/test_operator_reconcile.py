from datetime import UTC, datetime
from typing import Any

import pytest

from pushtask.states import DesiredState, Phase
from pushtask_operator.progress import Counts, DeploymentView, Progress, WorkerHealth
from pushtask_operator.reconcile import (
    INVALID_SPEC,
    Observed,
    Validation,
    control_for,
    decide,
    desired_replicas,
    effective_rate,
    make_condition,
    next_run_number,
)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
WHOLE = DeploymentView(desired=3, ready=3, updated=3, exists=True)


def progress(
    *,
    finished: bool = False,
    failure: str | None = None,
    lost: list[str] | None = None,
    orphaned: int = 0,
) -> Progress:
    return Progress(
        counts=Counts(),
        rate=0.0,
        eta=None,
        workers_desired=3,
        workers_ready=3,
        workers_live=3,
        finished=finished,
        failure=failure,
        stage="delivery",
        health=WorkerHealth(live=["a"], lost=lost or [], orphaned_leases=orphaned),
    )


def obs(status: dict[str, Any] | None = None, **kw: Any) -> Observed:
    base: dict[str, Any] = dict(
        generation=1,
        spec_run=1,
        spec_workers=3,
        desired=DesiredState.STARTED,
        rate_per_second=100.0,
        status=status or {},
        deployment=WHOLE,
        now=NOW,
    )
    base.update(kw)
    return Observed(**base)


def test_first_sight_starts_a_run() -> None:
    plan = decide(obs())
    assert plan.phase is Phase.STARTED and plan.new_run and plan.run == 1
    assert plan.replicas == 3
    assert plan.control == {"state": "Started", "cancelInflight": False, "ratePerSecond": 100.0}
    assert plan.status["phase"] == "Started" and plan.status["run"] == 1
    assert plan.status["observedGeneration"] == 1
    (event,) = plan.events
    assert event.type == "Normal" and "New -> Started" in event.message


def test_waiting_for_start_time_keeps_zero_workers() -> None:
    plan = decide(obs(start_due=False))
    assert plan.phase is Phase.READY and not plan.new_run and plan.replicas == 0
    assert plan.control is None


def test_steady_state_posts_no_event() -> None:
    plan = decide(obs({"phase": "Started", "run": 1}, progress=progress()))
    assert plan.phase is Phase.STARTED and not plan.new_run and plan.events == []


def test_pause_scales_to_zero_and_tells_workers() -> None:
    plan = decide(
        obs({"phase": "Started", "run": 1}, desired=DesiredState.PAUSED, progress=progress())
    )
    assert plan.phase is Phase.PAUSED and plan.replicas == 0
    assert plan.control is not None and plan.control["state"] == "Paused"
    assert plan.events[0].reason == "PausedByUser"


def test_finished_and_failed() -> None:
    done = decide(obs({"phase": "Started", "run": 1}, progress=progress(finished=True)))
    assert done.phase is Phase.FINISHED and done.replicas == 0
    bad = decide(obs({"phase": "Started", "run": 1}, progress=progress(failure="budget spent")))
    assert bad.phase is Phase.FAILED and bad.events[0].type == "Warning"


def test_lost_worker_enters_reboot_and_is_forgotten_then_recovers() -> None:
    plan = decide(obs({"phase": "Started", "run": 1}, progress=progress(lost=["w2"], orphaned=1)))
    assert plan.phase is Phase.REBOOT and plan.forget_workers == ["w2"]
    assert plan.replicas == 3  # Reboot keeps workers running to reclaim the leases
    still = decide(obs({"phase": "Reboot", "run": 1}, progress=progress(orphaned=1)))
    assert still.phase is Phase.REBOOT and still.events == []
    partial = DeploymentView(desired=3, ready=2, updated=3, exists=True)
    waiting = decide(obs({"phase": "Reboot", "run": 1}, progress=progress(), deployment=partial))
    assert waiting.phase is Phase.REBOOT
    back = decide(obs({"phase": "Reboot", "run": 1}, progress=progress()))
    assert back.phase is Phase.STARTED and back.transition.reason == "Recovered"


def test_an_orphaned_lease_alone_means_a_lost_worker() -> None:
    # A crashed worker restarted under the same name: fresh heartbeat, stale lease.
    plan = decide(obs({"phase": "Started", "run": 1}, progress=progress(orphaned=1)))
    assert plan.phase is Phase.REBOOT and plan.forget_workers == []


def test_raised_run_starts_a_new_run() -> None:
    plan = decide(obs({"phase": "Finished", "run": 1}, spec_run=2))
    assert plan.new_run and plan.run == 2 and plan.phase is Phase.STARTED


def test_cron_firing_gets_the_next_run_number() -> None:
    assert next_run_number(1, None) == 1
    assert next_run_number(3, 1) == 3
    assert next_run_number(1, 4) == 5
    plan = decide(obs({"phase": "Ready", "run": 4}, spec_run=1, recurring=True))
    assert plan.new_run and plan.run == 5


def test_template_error_fails_before_start_and_recovers_when_fixed() -> None:
    bad = Validation.failed("TemplateError", "template field 'body', line 2: boom", permanent=True)
    plan = decide(obs(validation=bad))
    assert plan.phase is Phase.FAILED and not plan.new_run and plan.replicas == 0
    assert "line 2" in plan.status["message"]
    ready = next(c for c in plan.status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == INVALID_SPEC
    # Fixed in a new generation: no need to raise spec.run.
    fixed = decide(obs(plan.status, generation=2))
    assert fixed.phase is Phase.STARTED and fixed.new_run
    # Still broken: stays Failed without a new Event.
    again = decide(obs(plan.status, validation=bad))
    assert again.phase is Phase.FAILED and again.events == []
    assert "line 2" in again.status["message"]
    ready = next(c for c in again.status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == INVALID_SPEC
    # Edited into another error: the message follows the spec as it is now.
    other = Validation.failed("TemplateError", "field 'title', line 5: boom", permanent=True)
    edited = decide(obs(again.status, generation=2, validation=other))
    assert edited.phase is Phase.FAILED and "line 5" in edited.status["message"]


def test_a_terminal_phase_keeps_the_cause_it_ended_with() -> None:
    bad = decide(obs({"phase": "Started", "run": 1}, progress=progress(failure="budget spent")))
    later = decide(obs(bad.status, progress=progress(failure="budget spent")))
    assert later.phase is Phase.FAILED and later.events == []
    assert later.status["message"] == "budget spent"
    stopped = decide(obs({"phase": "Started", "run": 1}, desired=DesiredState.STOPPED))
    again = decide(obs(stopped.status, desired=DesiredState.STOPPED))
    assert again.status["message"] == stopped.status["message"] == "spec.state is Stopped; run over"


def test_template_error_waiting_for_start_fails_at_once() -> None:
    bad = Validation.failed("TemplateError", "line 1", permanent=True)
    assert decide(obs(validation=bad, start_due=False)).phase is Phase.FAILED


def test_missing_secret_holds_the_start_then_recovers() -> None:
    missing = Validation.failed("SecretMissing", 'Secret "hmac" not found', permanent=False)
    plan = decide(obs(validation=missing))
    assert plan.phase is Phase.READY and not plan.new_run and plan.replicas == 0
    assert 'Secret "hmac" not found' in plan.status["message"]
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "SecretMissing")]
    valid = next(c for c in plan.status["conditions"] if c["type"] == "SpecValid")
    assert valid["status"] == "False"
    later = decide(obs(plan.status))
    assert later.phase is Phase.STARTED and later.new_run


def test_invalid_edit_never_touches_a_running_run() -> None:
    bad = Validation.failed("TemplateError", "line 3", permanent=True)
    plan = decide(obs({"phase": "Started", "run": 1}, validation=bad, progress=progress()))
    assert plan.phase is Phase.STARTED and plan.replicas == 3


def test_degraded_tiers() -> None:
    graceful = decide(obs({"phase": "Started", "run": 1}, degrade="graceful", progress=progress()))
    assert graceful.phase is Phase.PAUSED and graceful.control is not None
    assert graceful.control["cancelInflight"] is False
    immediate = decide(
        obs({"phase": "Started", "run": 1}, degrade="immediate", progress=progress())
    )
    assert immediate.control is not None and immediate.control["cancelInflight"] is True
    lifted = decide(obs({"phase": "Paused", "run": 1}, progress=progress()))
    assert lifted.phase is Phase.STARTED and lifted.control is not None
    assert lifted.control["cancelInflight"] is False


@pytest.mark.parametrize("phase", list(Phase))
def test_replicas_follow_phase(phase: Phase) -> None:
    expected = 4 if phase in (Phase.STARTED, Phase.REBOOT) else 0
    assert desired_replicas(phase, 4) == expected


def test_control_and_fair_rate() -> None:
    assert effective_rate(100, None) == 100
    assert effective_rate(100, 40) == 40
    assert effective_rate(10, 40) == 10
    assert control_for(Phase.STOPPED, "StoppedByUser", None, 5)["state"] == "Stopped"
    plan = decide(obs({"phase": "Started", "run": 1}, progress=progress(), fair_rate=25.0))
    assert plan.control is not None and plan.control["ratePerSecond"] == 25.0


def test_condition_transition_time_moves_only_on_flip() -> None:
    first = make_condition("Ready", True, "R", "m", generation=1, now=NOW, previous=[])
    later = datetime(2026, 1, 1, 13, 0, tzinfo=UTC)
    same = make_condition("Ready", True, "R2", "m", generation=2, now=later, previous=[first])
    assert same["lastTransitionTime"] == first["lastTransitionTime"]
    flipped = make_condition("Ready", False, "X", "m", generation=2, now=later, previous=[first])
    assert flipped["lastTransitionTime"] == "2026-01-01T13:00:00Z"
