"""What to do about a PushTask, decided from what was observed (pure: no I/O).

`decide()` takes everything the handler gathered (the parsed spec, current status,
validation result, progress of the run, the Deployment, the degraded tiers, the
operator-wide fair share) and returns a `Plan`: the next phase through
`pushtask.states.transition`, whether a new run must be created, how many workers, what the
run's control block says, which lost workers to forget and the Events to post.
`compose_status()` then turns the plan and what the handler did with it (a run created, the
Deployment's replicas, an API refusal) into the whole status, and `status_patch()` into the
one patch that is sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import ValidationError

from pushtask import fairshare, schedule
from pushtask.models import Counts, PushTaskSpec, PushTaskStatus
from pushtask.states import (
    ACTIVE_PHASES,
    DEGRADED,
    RUN_OVER,
    RUNNING_PHASES,
    TERMINAL_PHASES,
    Facts,
    Phase,
    Transition,
    scales_to_zero,
    transition,
)
from pushtask_operator.progress import DeploymentView, Progress
from pushtask_operator.settings import Degrade

# Reason of a Failed phase caused by the spec itself (not by a run): fixing the spec
# (a new generation that validates) leaves Failed without raising spec.run.
INVALID_SPEC = "InvalidSpec"
# The fields a reconcile reads from the spec as it is now (the rest is frozen in the run).
LIVE_FIELDS = ("run", "state", "workers", "priority", "rate", "schedule")


def read_spec(raw: Mapping[str, Any]) -> PushTaskSpec:
    """The spec as the models read it, defaults included.

    A spec the models refuse (a rule the CRD cannot express, or an object stored before a
    rule existed) fails validation, which fails the task or holds its next run; a run
    under way still follows its live fields. So those are read one by one, each through
    the model's own validator, and one that does not parse keeps the model's default.
    Only `LIVE_FIELDS` are set on such a spec: nothing reads the others from it (a run is
    planned only from a spec that validates).
    """
    try:
        return PushTaskSpec.model_validate(dict(raw))
    except ValidationError:
        pass
    # Defaults only; audience and message stay unset (nothing may read them from it).
    spec = PushTaskSpec.model_construct()  # type: ignore[call-arg]
    validator = PushTaskSpec.__pydantic_validator__
    for name in LIVE_FIELDS:
        alias = PushTaskSpec.model_fields[name].alias or name
        if raw.get(alias) is None:
            continue
        try:
            validator.validate_assignment(spec, name, raw[alias])
        except ValidationError:
            continue
    return spec


@dataclass(frozen=True)
class Validation:
    """The result of checking what the schema cannot.

    `permanent`: the spec can never work as written (a template that does not compile);
    the task fails. Otherwise a problem is one to wait out (a Secret not created yet,
    a URL that does not answer yet): nothing new starts until it is gone.
    """

    ok: bool = True
    reason: str = ""
    message: str = ""
    permanent: bool = False

    @classmethod
    def failed(cls, reason: str, message: str, *, permanent: bool) -> Validation:
        return cls(ok=False, reason=reason, message=message, permanent=permanent)


@dataclass(frozen=True)
class ApiProblem:
    """A Kubernetes API answer that retrying will not change (kube.py's error policy).

    `degraded`: the API server refused the worker Deployment, so the workers cannot follow
    the task; anything else (RBAC, a bad request) keeps the task from being reconciled.
    `retried`: shown the same way, but retried until it goes by itself (a deletion waiting
    for MongoDB): Reconciling rather than Stalled.
    """

    reason: str
    message: str
    degraded: bool = False
    retried: bool = False


@dataclass(frozen=True)
class Observed:
    generation: int
    spec: PushTaskSpec
    status: Mapping[str, Any]
    validation: Validation = field(default_factory=Validation)
    progress: Progress | None = None
    deployment: DeploymentView = field(default_factory=DeploymentView)
    start_due: bool = True
    in_window: bool = True
    recurring: bool = False
    degrade: Degrade | None = None
    tier: str | None = None  # the tier of spec.priority (named in the Degraded message)
    # This task's part of the operator-wide send budget (None: no global budget).
    fair_rate: float | None = None
    # The schedule's next event (schedule.next_event): shown as the Scheduled condition.
    next_event: tuple[datetime, str] | None = None
    # A cron firing that came due since the last one handled (schedule.due_firing): while
    # a run is under way it is skipped, never queued behind the run.
    due_firing: datetime | None = None
    now: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(frozen=True)
class EventSpec:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Plan:
    transition: Transition
    phase: Phase
    run: int | None  # the run this status describes (new number when new_run)
    new_run: bool
    replicas: int
    control: dict[str, Any] | None  # for the run document; None when there is no run
    forget_workers: list[str]
    events: list[EventSpec]
    # The part of the status the decision owns: phase, run, message, conditions,
    # observedGeneration, reason (`compose_status` adds the rest).
    status: dict[str, Any]


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def current_phase(status: Mapping[str, Any]) -> Phase | None:
    raw = status.get("phase")
    try:
        return Phase(raw) if raw else None
    except ValueError:
        return None


def _condition_reason(status: Mapping[str, Any], ctype: str) -> str | None:
    for cond in status.get("conditions") or []:
        if cond.get("type") == ctype:
            return str(cond.get("reason") or "")
    return None


def next_run_number(spec_run: int, status_run: int | None) -> int:
    """The number of a run about to start: spec.run when raised, else one more (cron)."""
    if status_run is None or spec_run > status_run:
        return spec_run
    return status_run + 1


def desired_replicas(phase: Phase, spec_workers: int) -> int:
    return 0 if scales_to_zero(phase) else max(0, spec_workers)


def control_for(
    phase: Phase,
    transition_reason: str,
    degrade: Degrade | None,
    rate: float,
) -> dict[str, Any]:
    """The control block of the run document, read by workers at every heartbeat."""
    if phase in RUNNING_PHASES:
        state = "Started"
    elif phase is Phase.PAUSED:
        state = "Paused"
    else:
        state = "Stopped"
    cancel = phase is Phase.PAUSED and degrade == "immediate" and transition_reason == DEGRADED
    return {"state": state, "cancelInflight": bool(cancel), "ratePerSecond": float(rate)}


def effective_rate(spec_rate: float, fair_rate: float | None) -> float:
    if fair_rate is None:
        return spec_rate
    return min(spec_rate, fair_rate)


def _facts(obs: Observed, status_run: int | None) -> Facts:
    p = obs.progress
    return Facts(
        start_due=obs.start_due,
        in_window=obs.in_window,
        run_raised=status_run is not None and obs.spec.run > status_run,
        recurring=obs.recurring,
        finished=bool(p and p.finished),
        failure=p.failure if p else None,
        # A stale heartbeat, or a lease nobody renews (its holder may have come back under
        # the same name after a crash, with a fresh heartbeat but none of its leases).
        worker_lost=bool(p and (p.health.lost or p.health.orphaned_leases)),
        deployment_whole=obs.deployment.whole,
        stale_leases=bool(p and p.health.orphaned_leases),
        degraded=(
            f"priority tier {obs.tier or '?'} degraded ({obs.degrade})" if obs.degrade else ""
        ),
    )


def make_condition(
    ctype: str,
    ok: bool,
    reason: str,
    message: str,
    *,
    generation: int,
    now: datetime,
    previous: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """A metav1.Condition; lastTransitionTime moves only when the status flips."""
    status = "True" if ok else "False"
    old = next((c for c in previous if c.get("type") == ctype), None)
    since = old.get("lastTransitionTime") if old and old.get("status") == status else None
    return {
        "type": ctype,
        "status": status,
        "reason": reason or ("AsExpected" if ok else "Unknown"),
        "message": message[:1024],
        "observedGeneration": generation,
        "lastTransitionTime": since or _iso(now),
    }


@dataclass(frozen=True)
class Health:
    """kstatus' two abnormal-true conditions (sigs.k8s.io/cli-utils), which Flux, Argo CD's
    health check (integrations/argocd) and kpt judge a resource by; docs/gitops.md has the
    table per phase. At most one is True: kstatus reads the first True one it meets.

    `stalled`: the task cannot get further without a person: the run Failed, or the spec
    as written can never work (a template that does not compile: a run under way goes on
    with its frozen spec, but the generation that was applied is broken).
    `reconciling`: the task has not reached what its spec asks for and the operator is
    working, or waiting, to get there: a run under way (Started, Reboot, outside a send
    window too); a tier degraded at a peak holding a task whose spec asks it to run
    (Paused, or Ready with its start due); a problem to wait out (a Secret not created
    yet). Neither at rest: waiting for startAt or the next cron firing, paused or held by
    the spec, stopped, finished. (kstatus also reads a False `Ready` as in progress; every
    phase where Ready is False has one of the two True, so it never has to.)
    """

    stalled: bool
    reconciling: bool
    reason: str
    message: str


def health(obs: Observed, t: Transition, phase: Phase) -> Health:
    v = obs.validation
    if phase is Phase.FAILED:
        return Health(True, False, t.reason, t.message)
    if not v.ok and v.permanent:
        return Health(True, False, v.reason, v.message)
    if phase in RUNNING_PHASES:
        return Health(False, True, t.reason, t.message)
    if not v.ok:
        return Health(False, True, v.reason, v.message)
    if t.reason == DEGRADED and (phase is Phase.PAUSED or obs.start_due):
        return Health(False, True, t.reason, t.message)
    return Health(False, False, t.reason, t.message)


def _conditions(obs: Observed, t: Transition, phase: Phase) -> list[dict[str, Any]]:
    prev = list(obs.status.get("conditions") or [])
    v = obs.validation
    kw: dict[str, Any] = {"generation": obs.generation, "now": obs.now, "previous": prev}
    healthy = phase is not Phase.FAILED and phase is not Phase.REBOOT and v.ok
    ready_reason = t.reason if v.ok or phase is Phase.FAILED else v.reason
    ready_msg = t.message if v.ok or phase is Phase.FAILED else v.message
    degraded = phase is Phase.REBOOT or t.reason == DEGRADED
    # kstatus' abnormal-true conditions, and Complete as a Job has it (docs/gitops.md).
    h = health(obs, t, phase)
    scheduled = []
    if obs.next_event is not None:
        at, what = obs.next_event
        scheduled = [
            make_condition("Scheduled", True, what, f"{SCHEDULED[what]} at {_iso(at)}", **kw)
        ]
    return [
        make_condition("Ready", healthy, ready_reason, ready_msg, **kw),
        make_condition("Reconciling", h.reconciling, h.reason, h.message, **kw),
        make_condition("Stalled", h.stalled, h.reason, h.message, **kw),
        make_condition("Complete", phase is Phase.FINISHED, t.reason, t.message, **kw),
        make_condition(
            "SpecValid",
            v.ok,
            v.reason or "Valid",
            v.message or "templates compile; referenced objects exist",
            **kw,
        ),
        make_condition(
            "Progressing",
            phase in RUNNING_PHASES,
            t.reason,
            t.message,
            **kw,
        ),
        make_condition(
            "Degraded",
            degraded,
            t.reason if degraded else "AsExpected",
            t.message if degraded else "",
            **kw,
        ),
        *scheduled,
    ]


# The Scheduled condition's message per event (schedule.next_event's names).
SCHEDULED = {
    "StartAt": "starts",
    "NextFiring": "next cron firing",
    "WindowOpens": "send window opens",
    "WindowCloses": "send window closes",
}


def with_api_problem(
    conditions: Sequence[Mapping[str, Any]],
    problem: ApiProblem,
    *,
    generation: int,
    now: datetime,
) -> list[dict[str, Any]]:
    """`conditions` showing an API problem: Ready False with its reason and the API's
    message, and Degraded True as well when the worker Deployment was refused. The phase is
    left alone: the run's facts did not change, only what the operator could do about them.
    Such an answer does not change by retrying, so the task is `Stalled` (kstatus: Failed,
    Argo CD: Degraded) and not `Reconciling` until a person fixes it (a `retried` problem
    the other way round).
    """
    kw: dict[str, Any] = {"generation": generation, "now": now, "previous": conditions}
    why = (problem.reason, problem.message)
    shown = {
        "Ready": make_condition("Ready", False, *why, **kw),
        "Reconciling": make_condition("Reconciling", problem.retried, *why, **kw),
        "Stalled": make_condition("Stalled", not problem.retried, *why, **kw),
    }
    if problem.degraded:
        shown["Degraded"] = make_condition("Degraded", True, problem.reason, problem.message, **kw)
    out = [shown.pop(t) if (t := str(c.get("type"))) in shown else dict(c) for c in conditions]
    return out + list(shown.values())


@dataclass(frozen=True)
class ScheduleFacts:
    """What spec.schedule says at `now`, given the last firing handled (`since`)."""

    start_due: bool
    in_window: bool
    recurring: bool
    next_event: tuple[datetime, str] | None
    due_firing: datetime | None


def schedule_facts(spec: PushTaskSpec, since: datetime, now: datetime) -> ScheduleFacts:
    sched = spec.schedule
    return ScheduleFacts(
        start_due=schedule.start_due(sched, now, since),
        in_window=schedule.in_window(sched, now),
        recurring=sched.cron is not None,
        next_event=schedule.next_event(sched, now, since),
        due_firing=schedule.due_firing(sched, since, now),
    )


def demand(
    t: Transition,
    spec: PushTaskSpec,
    *,
    in_window: bool,
    sending: bool,
    achieved: float | None,
    allocated: float | None,
) -> float | None:
    """The sends per second the task can use in the phase it enters (fairshare.demand_now);
    None when it is not running and takes no part in the budget. A run starting now is not
    sending yet and has achieved nothing."""
    if t.phase not in RUNNING_PHASES:
        return None
    return fairshare.demand_now(
        spec.rate.per_second,
        in_window=in_window,
        sending=sending and not t.new_run,
        achieved=None if t.new_run else achieved,
        allocated=allocated,
    )


def next_transition(obs: Observed) -> Transition:
    """The phase the task enters and whether a run starts: the state machine's answer,
    with validation gating what starts. Pure; `decide` builds the plan around it, and the
    handler asks it first (a run about to start re-reads its API facts; the budget share
    depends on the phase entered)."""
    status = obs.status
    phase_now = current_phase(status)
    v = obs.validation
    # First sight, or a Failed caused by a spec that now validates: start from Ready.
    start_phase = phase_now or Phase.READY
    if phase_now is Phase.FAILED and _condition_reason(status, "Ready") == INVALID_SPEC and v.ok:
        start_phase = Phase.READY

    t = transition(start_phase, obs.spec.state, _facts(obs, status.get("run")))
    if t.phase is phase_now and t.reason == RUN_OVER and status.get("message"):
        # Resting in a terminal phase: keep the cause it ended with, the one thing the
        # user needs (a later reconcile must not replace it with a generic line). A spec
        # still invalid is described as it is now: it may have been edited since.
        reason = _condition_reason(status, "Ready") or t.reason
        still_invalid = reason == INVALID_SPEC and not v.ok
        t = Transition(t.phase, reason, v.message if still_invalid else status["message"])

    # Validation gates what starts, never a run already under way (its spec is frozen).
    if not v.ok and t.new_run:
        if v.permanent:
            t = Transition(Phase.FAILED, INVALID_SPEC, v.message)
        else:
            held = start_phase if start_phase not in ACTIVE_PHASES else Phase.READY
            t = Transition(held, v.reason, f"waiting: {v.message}")
    elif not v.ok and v.permanent and t.phase is Phase.READY:
        # Not started yet (waiting for startAt, held): fail now rather than at the start.
        t = Transition(Phase.FAILED, INVALID_SPEC, v.message)
    return t


def decide(obs: Observed) -> Plan:
    """The plan: phase, run, replicas, control block, events and the decided status."""
    status = obs.status
    phase_now = current_phase(status)
    status_run: int | None = status.get("run")
    v = obs.validation
    t = next_transition(obs)
    phase = t.phase
    run = next_run_number(obs.spec.run, status_run) if t.new_run else status_run
    rate = effective_rate(obs.spec.rate.per_second, obs.fair_rate)
    control = control_for(phase, t.reason, obs.degrade, rate) if run is not None else None

    p = obs.progress
    forget: list[str] = []
    if p and p.health.lost and (phase is Phase.REBOOT or phase not in RUNNING_PHASES):
        # Handled: the Reboot phase now tracks their leases until they are reclaimed.
        forget = list(p.health.lost)

    events: list[EventSpec] = []
    if forget and t.reason != "WorkerLost" and phase_now is not Phase.REBOOT:
        # Lost without a Reboot to say so: the others finished (or the run was paused or
        # stopped) before the operator looked. The loss is still news.
        run_note = f" in run {run}" if run is not None else ""
        events.append(
            EventSpec(
                "Warning",
                "WorkerLost",
                f"worker {', '.join(forget)} lost{run_note}; its leases expired and were reclaimed",
            )
        )
    if phase is not phase_now or t.new_run:
        warn = phase in (Phase.FAILED, Phase.REBOOT) or t.reason == v.reason != ""
        what = f"{phase_now.value if phase_now else 'New'} -> {phase.value}"
        run_note = f" (run {run})" if run is not None else ""
        events.append(
            EventSpec("Warning" if warn else "Normal", t.reason, f"{what}{run_note}: {t.message}")
        )
    if (
        not v.ok
        and v.reason != _condition_reason(status, "SpecValid")
        and all(e.reason != v.reason for e in events)
    ):
        events.append(EventSpec("Warning", v.reason, v.message))

    skipped: str | None = None
    if obs.due_firing is not None and phase_now in ACTIVE_PHASES and not t.new_run:
        skipped = _iso(obs.due_firing)
        events.append(
            EventSpec(
                "Normal",
                "FiringSkipped",
                f"cron firing at {skipped} skipped: run {status_run} is still under way",
            )
        )

    new_status: dict[str, Any] = {
        "phase": phase.value,
        "observedGeneration": obs.generation,
        "message": t.message if v.ok or phase is Phase.FAILED else v.message,
        "reason": t.reason,
        "conditions": _conditions(obs, t, phase),
    }
    if run is not None:
        new_status["run"] = run
    if skipped is not None:
        new_status["lastSkippedAt"] = skipped
    return Plan(
        transition=t,
        phase=phase,
        run=run,
        new_run=t.new_run,
        replicas=desired_replicas(phase, obs.spec.workers),
        control=control,
        forget_workers=forget,
        events=events,
        status=new_status,
    )


# -- the status ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Applied:
    """What the handler read and did after `decide()`, as far as the status shows it."""

    selector: str  # status.selector (scale subresource)
    deployment_replicas: int  # the Deployment's status.replicas
    started_run: str | None = None  # the id of the run this reconcile created
    skip_samples: list[str] | None = None  # read only when the run has skipped rows
    refused: ApiProblem | None = None  # the API server refused the worker Deployment


def compose_status(
    current: Mapping[str, Any],
    plan: Plan,
    progress: Progress | None,
    applied: Applied,
    *,
    recurring: bool,
    now: datetime,
) -> PushTaskStatus:
    """The whole status after this reconcile, as the model the CRD's schema is generated
    from. Its set fields are what this reconcile writes (see `status_fields`); fields
    left unset keep their current value, and a field set to None is deleted.

    `progress` describes the run the status described so far: a run started now shows
    zero counts instead. A run that ends keeps the time it first ended at.
    """
    new: dict[str, Any] = {**plan.status, "selector": applied.selector}
    if applied.started_run is not None:
        new.update(
            runId=applied.started_run,
            startedAt=_iso(now),
            finishedAt=None,
            counts=Counts().model_dump(),
            rate=0.0,
            eta="",
            skipSamples=[],
            # The new run's clicks and conversions, if it tracks them, come with its
            # first progress.
            clicks=None,
            clickers=None,
            clickThrough=None,
            conversions=None,
        )
        if recurring:
            new["lastFiredAt"] = _iso(now)
    elif progress is not None:
        new.update(progress.status_fields())
    if applied.skip_samples is not None:
        new["skipSamples"] = list(applied.skip_samples)
    new["workers"] = {**(new.get("workers") or {"ready": 0, "live": 0}), "desired": plan.replicas}
    new["replicas"] = applied.deployment_replicas
    if plan.phase in TERMINAL_PHASES:
        new.update(finishedAt=current.get("finishedAt") or _iso(now), rate=0.0, eta="")
    if applied.refused is not None:
        new["conditions"] = with_api_problem(
            new["conditions"], applied.refused, generation=new["observedGeneration"], now=now
        )
    # The API server silently prunes what its schema lacks: a field the model does not
    # declare is a bug here, not something to drop quietly.
    if undeclared := sorted(set(new) - _DECLARED_STATUS):
        raise ValueError(f"status fields the PushTask schema does not declare: {undeclared}")
    return PushTaskStatus.model_validate(new)


_DECLARED_STATUS = frozenset(
    info.alias or name for name, info in PushTaskStatus.model_fields.items()
)


def status_fields(status: PushTaskStatus) -> dict[str, Any]:
    """The fields `status` sets, as the API server stores them (None: delete the field)."""
    return status.model_dump(mode="json", by_alias=True, exclude_unset=True)


def status_patch(current: Mapping[str, Any], fields: Mapping[str, Any]) -> dict[str, Any]:
    """The `fields` (status_fields of the new status) that differ from `current` (a merge
    patch: None deletes)."""
    return {k: v for k, v in fields.items() if current.get(k) != v}
