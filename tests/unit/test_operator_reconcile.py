from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pushtask.models import Counts, PushTaskSpec, PushTaskStatus
from pushtask.records import ClickTotals, ConversionTotals
from pushtask.states import DesiredState, Phase
from pushtask_operator.progress import DeploymentView, Progress, WorkerHealth
from pushtask_operator.reconcile import (
    INVALID_SPEC,
    ApiProblem,
    Applied,
    Observed,
    Plan,
    Validation,
    compose_status,
    control_for,
    decide,
    desired_replicas,
    effective_rate,
    make_condition,
    next_run_number,
    read_spec,
    status_fields,
    status_patch,
)
from tests.support.status import check_status_patch

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


def task_spec(**fields: Any) -> PushTaskSpec:
    return PushTaskSpec.model_validate(
        {
            "workers": 3,
            "audience": {"sources": [{"kind": "inline", "users": ["a"]}]},
            "message": {"webhook": {"url": "http://sink/hook"}, "template": {"body": "Hi"}},
            **fields,
        }
    )


def obs(
    status: dict[str, Any] | None = None,
    *,
    spec_run: int = 1,
    desired: DesiredState = DesiredState.STARTED,
    **kw: Any,
) -> Observed:
    base: dict[str, Any] = dict(
        generation=1,
        spec=task_spec(run=spec_run, state=desired),
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


def test_a_worker_lost_while_the_others_finish_still_gets_its_event() -> None:
    # The race: the lost worker's chunk was reclaimed and the run finished between two
    # looks of the operator, so there is no Reboot to carry the news.
    lost = progress(finished=True, lost=["w2"])
    plan = decide(obs({"phase": "Started", "run": 4}, progress=lost))
    assert plan.phase is Phase.FINISHED and plan.forget_workers == ["w2"]
    reasons = [(e.type, e.reason) for e in plan.events]
    # The loss first: it happened before the run finished.
    assert reasons == [("Warning", "WorkerLost"), ("Normal", "RunFinished")], plan.events
    assert "w2" in plan.events[0].message and "run 4" in plan.events[0].message
    # Through Reboot the transition's own Event says it, once.
    rebooting = decide(obs({"phase": "Started", "run": 4}, progress=progress(lost=["w2"])))
    assert [e.reason for e in rebooting.events] == ["WorkerLost"]
    after = decide(obs({"phase": "Reboot", "run": 4}, progress=progress(lost=["w3"])))
    assert "WorkerLost" not in [e.reason for e in after.events]


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


def test_a_degraded_task_says_which_tier_and_how() -> None:
    plan = decide(
        obs({"phase": "Started", "run": 1}, degrade="graceful", tier="low", progress=progress())
    )
    assert plan.status["reason"] == "Degraded"
    assert plan.status["message"] == "paused: priority tier low degraded (graceful)"
    cond = {c["type"]: c for c in plan.status["conditions"]}["Degraded"]
    assert cond["status"] == "True" and cond["reason"] == "Degraded"
    # A user's pause is not a degradation: the workers keep their in-flight sends.
    paused = decide(
        obs(
            {"phase": "Started", "run": 1},
            desired=DesiredState.PAUSED,
            degrade="immediate",
            tier="low",
            progress=progress(),
        )
    )
    assert paused.status["reason"] == "PausedByUser"
    assert paused.control is not None and paused.control["cancelInflight"] is False


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


# -- the parsed spec ----------------------------------------------------------------------


def test_read_spec_fills_the_models_defaults() -> None:
    spec = read_spec(task_spec().model_dump(by_alias=True, mode="json", exclude_none=True))
    assert spec.run == 1 and spec.state is DesiredState.STARTED and spec.priority == 500
    assert spec.rate.per_second == 100 and spec.schedule.cron is None


def test_read_spec_of_a_spec_the_models_refuse_keeps_its_live_fields() -> None:
    raw = task_spec(workers=4, run=2, rate={"perSecond": 7}).model_dump(
        by_alias=True, mode="json", exclude_none=True
    )
    raw["audience"]["sources"][0]["filter"] = {"$where": "sleep(1)"}  # refused by the models
    raw["priority"] = -5  # out of range: the model's default instead
    spec = read_spec(raw)
    assert (spec.workers, spec.run, spec.rate.per_second, spec.priority) == (4, 2, 7.0, 500)
    refused = Validation.failed(INVALID_SPEC, "bad", permanent=True)
    assert decide(obs(spec=spec, validation=refused)).phase is Phase.FAILED
    # A run under way goes on, following the live fields (its audience is frozen).
    running = {"phase": "Started", "run": 2}
    plan = decide(obs(running, spec=spec, validation=refused, progress=progress()))
    assert plan.phase is Phase.STARTED and plan.replicas == 4
    assert plan.control is not None and plan.control["ratePerSecond"] == 7.0


# -- the status ---------------------------------------------------------------------------

APPLIED = Applied(selector="app=w", deployment_replicas=3)


def running_progress(sent: int = 40, skipped: int = 0) -> Progress:
    return Progress(
        counts=Counts(audience=100, pending=60 - skipped, sent=sent, skipped=skipped),
        rate=12.345,
        eta=5,
        workers_desired=3,
        workers_ready=2,
        workers_live=2,
        finished=False,
        failure=None,
        stage="delivery",
        health=WorkerHealth(live=["a", "b"], lost=[], orphaned_leases=0),
    )


def compose(
    current: dict[str, Any],
    plan: Plan,
    progress: Progress | None = None,
    applied: Applied = APPLIED,
    *,
    recurring: bool = False,
) -> dict[str, Any]:
    check_status_patch(plan.status)  # every field declared, at every level
    status = compose_status(current, plan, progress, applied, recurring=recurring, now=NOW)
    fields = status_fields(status)
    check_status_patch(fields)  # every value of its type
    check_status_patch(status_patch(current, fields))
    return fields


def patch(current: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """status_patch of a status composed as `fields`."""
    return status_patch(current, status_fields(PushTaskStatus.model_validate(fields)))


def test_a_new_run_starts_from_zero_counts_and_records_its_start() -> None:
    before = {"phase": "Finished", "run": 1, "runId": "old", "finishedAt": "2025-12-31T00:00:00Z"}
    plan = decide(obs(before, spec_run=2))
    old = running_progress()  # the finished run's: not shown for the new one
    status = compose(before, plan, old, Applied("app=w", 0, started_run="new"), recurring=True)
    assert status["runId"] == "new" and status["run"] == 2 and status["phase"] == "Started"
    assert status["startedAt"] == status["lastFiredAt"] == "2026-01-01T12:00:00Z"
    assert status["finishedAt"] is None and status["skipSamples"] == []
    assert status["counts"] == Counts().model_dump() and status["rate"] == 0.0
    assert status["workers"] == {"ready": 0, "live": 0, "desired": 3}
    assert status["reason"] == "NewRun" and status["selector"] == "app=w"
    assert patch(before, status)["finishedAt"] is None  # a merge patch deletes it


def test_progress_fills_counts_rate_eta_and_workers() -> None:
    current = {"phase": "Started", "run": 1, "runId": "r"}
    plan = decide(obs(current, progress=running_progress()))
    status = compose(
        current, plan, running_progress(skipped=2), replace(APPLIED, skip_samples=["bad row"])
    )
    assert status["counts"]["sent"] == 40 and status["rate"] == 12.35 and status["eta"] == "5s"
    assert status["workers"] == {"desired": 3, "ready": 2, "live": 2}
    assert status["replicas"] == 3 and status["skipSamples"] == ["bad row"]
    assert "finishedAt" not in status and "runId" not in patch(current, status)


def test_a_tracked_run_shows_its_clicks_and_conversions_and_a_new_run_clears_them() -> None:
    current = {"phase": "Started", "run": 1, "runId": "r"}
    tracked = replace(
        running_progress(sent=40),
        clicks=ClickTotals(7, 5, {0: 5, 1: 2}),
        conversions=ConversionTotals({"purchase": 2}),
    )
    status = compose(current, decide(obs(current, progress=tracked)), tracked)
    assert (status["clicks"], status["clickers"], status["clickThrough"]) == (7, 5, "12.5%")
    assert status["conversions"] == [{"event": "purchase", "count": 2, "rate": "5.0%"}]
    untracked = compose(current, decide(obs(current, progress=running_progress())))
    assert "clicks" not in untracked  # a run that tracks nothing shows no clicks
    before = {**status, "phase": "Finished", "finishedAt": "2025-12-31T00:00:00Z"}
    plan = decide(obs(before, spec_run=2))
    new = compose(before, plan, tracked, Applied("app=w", 0, started_run="new"))
    assert new["clicks"] is None and patch(before, new)["clickThrough"] is None
    assert new["conversions"] is None


def test_a_run_that_ends_stops_the_clock_once() -> None:
    current = {"phase": "Started", "run": 1, "runId": "r", "rate": 50.0, "eta": "3s"}
    plan = decide(obs(current, progress=replace(running_progress(), finished=True)))
    done = compose(current, plan, running_progress(sent=100))
    assert done["phase"] == "Finished" and done["finishedAt"] == "2026-01-01T12:00:00Z"
    assert done["rate"] == 0.0 and done["eta"] == "" and done["workers"]["desired"] == 0
    later = compose_status(
        done, decide(obs(done)), None, APPLIED, recurring=False, now=NOW.replace(hour=13)
    )
    assert status_fields(later)["finishedAt"] == done["finishedAt"]
    assert "finishedAt" not in status_patch(done, status_fields(later))


def test_a_refused_deployment_shows_in_the_conditions_not_the_phase() -> None:
    current = {"phase": "Started", "run": 1, "runId": "r"}
    plan = decide(obs(current, progress=running_progress()))
    problem = ApiProblem("DeploymentRejected", "spec.template: invalid", degraded=True)
    status = compose(current, plan, running_progress(), replace(APPLIED, refused=problem))
    assert status["phase"] == "Started"
    by_type = {c["type"]: c for c in status["conditions"]}
    assert by_type["Ready"]["status"] == "False"
    assert by_type["Degraded"]["reason"] == "DeploymentRejected"


def test_the_patch_holds_only_what_changed() -> None:
    current = {"phase": "Started", "run": 1, "runId": "r"}
    plan = decide(obs(current, progress=running_progress()))
    status = compose(current, plan, running_progress())
    assert patch(status, status) == {}
    assert patch({**status, "rate": 1.0}, status) == {"rate": status["rate"]}


@pytest.mark.parametrize("phase", list(Phase))
def test_every_phase_composes_a_status_the_schema_declares(phase: Phase) -> None:
    current = {"phase": phase.value, "run": 1, "runId": "r"}
    for progress_now in (None, running_progress()):
        plan = decide(obs(current, progress=progress_now))
        compose(current, plan, progress_now)


def test_a_cron_firing_during_a_run_is_skipped_with_an_event() -> None:
    running = {"phase": "Started", "run": 4, "runId": "r4", "lastFiredAt": "2026-01-01T11:00:00Z"}
    firing = NOW.replace(minute=0, second=0) + timedelta(minutes=1)  # after the last one
    plan = decide(obs(running, recurring=True, progress=running_progress(), due_firing=firing))
    assert plan.phase is Phase.STARTED and not plan.new_run  # the run goes on, alone
    (event,) = plan.events
    assert event.reason == "FiringSkipped" and "run 4 is still under way" in event.message
    assert plan.status["lastSkippedAt"] == "2026-01-01T12:01:00Z"
    status = compose(running, plan, running_progress(), recurring=True)
    assert "lastFiredAt" not in patch(running, status)  # no run fired
    # A firing that starts a run is not a skipped one.
    ready = {"phase": "Ready", "run": 4, "runId": "r4"}
    plan = decide(obs(ready, recurring=True, start_due=True, due_firing=firing))
    assert plan.new_run and "lastSkippedAt" not in plan.status
    assert all(e.reason != "FiringSkipped" for e in plan.events)


def test_the_scheduled_condition_names_the_next_event() -> None:
    at = NOW + timedelta(minutes=30)
    plan = decide(obs(start_due=False, next_event=(at, "StartAt")))
    (cond,) = [c for c in plan.status["conditions"] if c["type"] == "Scheduled"]
    assert cond["status"] == "True" and cond["reason"] == "StartAt"
    assert cond["message"] == "starts at 2026-01-01T12:30:00Z"
    plan = decide(obs(start_due=False))
    assert all(c["type"] != "Scheduled" for c in plan.status["conditions"])
