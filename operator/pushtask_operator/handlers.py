"""The operator's handlers: gather facts, call the pure modules, apply the plan.

Every entry point (create, resume, update, the timer) ends in `reconcile()`, which runs
under a per-task lock so an update and a timer tick never act on the same task at once.
One reconcile (`_reconcile`), in steps:

1. gather: the validation (when due), the run's facts in MongoDB and the worker
   Deployment, read side by side; a run about to start reads its API facts again;
2. the task's share of the send budget, then `reconcile.decide()`, once;
3. apply: start the run, write its control block, own the Deployment;
4. publish: `reconcile.compose_status()`; the run's completion notifications recorded
   in the store's outbox (`notify.py`; sent in the background by `notifier.py`); ONE
   status patch, an Event per transition, metrics, the next wake-up.

The decisions and the status are the pure modules'; this one only reads facts and
applies what they return.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import kopf
from pymongo.errors import PyMongoError

from pushtask import fairshare
from pushtask.models import Counts, PushTaskSpec, PushTaskStatus
from pushtask.naming import worker_deployment_name
from pushtask.planning import TaskRef, plan_run, run_id_for
from pushtask.records import ClickTotals, ConversionTotals, RunTotals
from pushtask.states import RUNNING_PHASES, TERMINAL_PHASES, Phase
from pushtask.store import Store
from pushtask.tracking import conversion_window
from pushtask_operator import degrade, metrics, notify
from pushtask_operator.degrade import DegradeView
from pushtask_operator.deployment import (
    RUN_ID_ANNOTATION,
    build_test_pod_template,
    build_worker_deployment,
    selector_string,
)
from pushtask_operator.kube import DeploymentRejected, Kube, KubeApiError
from pushtask_operator.progress import (
    CLICKS_REFRESH_SECONDS,
    DeploymentView,
    Progress,
    RateTracker,
    click_fields,
    compute_progress,
    still_tracked,
    tracks_conversions,
    tracks_links,
)
from pushtask_operator.reconcile import (
    ApiProblem,
    Applied,
    Observed,
    Plan,
    Validation,
    compose_status,
    current_phase,
    decide,
    demand,
    effective_rate,
    next_transition,
    read_spec,
    schedule_facts,
    status_fields,
    status_patch,
    with_api_problem,
)
from pushtask_operator.settings import Degrade, OperatorSettings
from pushtask_operator.validation import SourceGone, configmap_contents, validate
from pushtask_operator.wakeups import Wakeup, next_wakeup

log = logging.getLogger("pushtask.operator")

TEMPLATE_HASH_ANNOTATION = "pushtask.dev/template-hash"
# A problem that is waited out (a Secret not there yet) is looked at again this often;
# URL probes, which may take seconds, less often.
REVALIDATE_SECONDS = 5.0
REPROBE_SECONDS = 15.0
# While budget changes hands between tasks, how soon a task looks again (the senders
# report a new rate within a rate beat, half a second).
HANDOVER_SECONDS = 1.0
# The store's clock is read again at most this often (it drifts by microseconds a minute).
CLOCK_READ_SECONDS = 10.0


def post_event(body: Mapping[str, Any], type: str, reason: str, message: str) -> None:
    """An Event on the PushTask, through kopf's posting queue (never blocks the handler)."""
    kopf.event(cast(kopf.Body, body), type=type, reason=reason, message=message)


@dataclass
class Runtime:
    """Operator-wide state, created at startup and shared by every task's handlers."""

    settings: OperatorSettings
    store: Store
    kube: Kube
    # Task key -> sends per second it can use now (fairshare.demand_now), running tasks
    # only; and its weight when the budget is shared by priority.
    demands: dict[str, float] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    # Task key -> the most its senders may be sending at now (fairshare.in_force): budget
    # a task gives up goes to another only once its senders report the lower rate.
    in_force: dict[str, float] = field(default_factory=dict)
    events: Callable[[Mapping[str, Any], str, str, str], None] = post_event
    # Every task this process reconciles, to wake them all when the degraded tiers change.
    tasks: dict[str, TaskState] = field(default_factory=dict)
    # The chart's degradedTiers, which the degrade ConfigMap overrides tier by tier.
    degrade_base: Mapping[str, Degrade] = field(default_factory=dict)
    # Nudges the notification sender (notifier.py) when notifications were recorded.
    wake_notifier: Callable[[], None] = lambda: None

    def forget_share(self, key: str) -> None:
        """The task takes no part in the send budget any more (settled, or deleted)."""
        for part in (self.demands, self.weights, self.in_force):
            part.pop(key, None)


@dataclass
class TaskState:
    """Per-task memory of this operator process (lost on restart, rebuilt from status)."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    tracker: RateTracker = field(default_factory=RateTracker)
    validation: Validation = field(default_factory=Validation)
    validated_generation: int | None = None
    validated_at: float = 0.0
    probed_at: float = 0.0
    # What this process last wrote: the API server may not have echoed it back yet.
    status: dict[str, Any] = field(default_factory=dict)
    control: dict[str, Any] | None = None
    # The API problem shown on the task now: one Warning Event per distinct problem.
    api_problem: ApiProblem | None = None
    # A problem seen once and not shown yet (see `reconcile`).
    suspected: ApiProblem | None = None
    # The worker Deployment the API server refused, as (template hash, replicas): the same
    # body would be refused again, so it is not sent again until it changes.
    rejected: tuple[tuple[str, int], ApiProblem] | None = None
    # When to look at the task next (wakeups.py), and the nudge that makes its watcher
    # read it again after a reconcile it did not run itself (an update).
    wakeup: Wakeup | None = None
    rearm: asyncio.Event = field(default_factory=asyncio.Event)
    # Set when an operator-wide setting changed (a tier degraded): reconcile at once, even
    # if a reconcile running now, with the old setting, sets a later wake-up.
    due_now: bool = False
    # This task's last share of the send budget (None: no budget, or not running).
    allocated: float | None = None


def runtime_of(memo: kopf.Memo) -> Runtime:
    rt = memo.get("runtime")
    if not isinstance(rt, Runtime):
        raise kopf.TemporaryError("operator runtime not initialised yet", delay=1)
    return rt


def task_state(memo: kopf.Memo) -> TaskState:
    state = memo.get("task")
    if not isinstance(state, TaskState):
        state = TaskState()
        memo["task"] = state
    return state


def task_key(meta: Mapping[str, Any]) -> str:
    return f"{meta['namespace']}/{meta['name']}"


def _parse(ts: Any) -> datetime | None:
    if not ts:
        return None
    if isinstance(ts, datetime):
        return ts if ts.tzinfo else ts.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(ts).replace("Z", "+00:00"))


def _template_hash(deployment: Mapping[str, Any]) -> str:
    text = json.dumps(deployment["spec"]["template"], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# -- facts ------------------------------------------------------------------------------


async def _validate_if_due(
    rt: Runtime,
    state: TaskState,
    spec: Mapping[str, Any],
    meta: Mapping[str, Any],
    *,
    run_starts: bool = False,
) -> tuple[Validation, bool]:
    """The validation to decide with, and whether it was made just now. `run_starts`: a
    run is about to start, so everything it needs from the API (ConfigMaps, Secrets, the
    workers' ServiceAccount, URLs) is read again, whatever the generation: a cron firing
    must not trust a ConfigMap that was there when the spec was last changed."""
    now = time.monotonic()
    generation = int(meta.get("generation") or 0)
    due = (
        run_starts
        or generation != state.validated_generation
        or (
            not state.validation.ok
            and not state.validation.permanent
            and now - state.validated_at >= REVALIDATE_SECONDS
        )
    )
    if not due:
        return state.validation, False
    probe = (
        run_starts
        or generation != state.validated_generation
        or now - state.probed_at >= REPROBE_SECONDS
    )
    state.validation = await validate(
        spec, meta["namespace"], rt.kube, rt.settings, probe_urls=probe
    )
    if probe:
        state.probed_at = now
    state.validated_generation = generation
    state.validated_at = now
    return state.validation, True


@dataclass(frozen=True)
class RunFacts:
    run_doc: dict[str, Any] | None
    totals: RunTotals
    heartbeats: list[dict[str, Any]]
    leased: list[dict[str, Any]]
    # The store's time when the facts were read: heartbeats and leases are judged on the
    # clock they were written on, never the operator's own (pushtask/clock.py).
    now: datetime
    clicks: ClickTotals | None = None  # a run that tracks link clicks
    conversions: ConversionTotals | None = None  # a run that tracks conversions


async def _run_facts(store: Store, run_id: str, running: bool) -> RunFacts:
    await store.sync_clock(max_age=CLOCK_READ_SECONDS)
    run_doc = await store.get_run(run_id, ("spec", "stage", "failure", "control"))
    if run_doc is not None and running:
        # Idempotent steps any party may take: the operator takes them too, so a run
        # whose last worker died right after finishing a split still moves on.
        run_doc["stage"] = await store.advance(run_id)
    # Independent reads: side by side, one round trip's wait instead of five.
    totals, beats, leased, clicks, converted = await asyncio.gather(
        store.totals(run_id),
        store.heartbeats(run_id),
        store.leases(run_id),
        store.click_totals(run_id) if tracks_links(run_doc) else _nothing(),
        store.conversion_totals(run_id) if tracks_conversions(run_doc) else _nothing(),
    )
    return RunFacts(run_doc, totals, beats, leased, store.now(), clicks, converted)


async def _nothing() -> None:
    """A read not needed, in a gather of reads."""


async def _judge_ended_run(store: Store, run_id: str, facts: RunFacts) -> None:
    """The workers judge the error budget at their heartbeats: a run whose last send came
    between two of them (a small run, every send refused) is judged here, before it can
    read as Finished (the failure comes first in the transition)."""
    doc = facts.run_doc
    if not doc or doc.get("stage") != "done" or doc.get("failure"):
        return
    budget = read_spec(doc["spec"]).delivery.failure_threshold
    reason = facts.totals.budget_spent(budget.ratio, budget.min_sample)
    if reason is None:
        return
    if await store.fail_run(run_id, reason):
        log.info("run %s failed at its end: %s", run_id, reason)
    doc["failure"] = {"reason": reason}


def _sending_rates(facts: RunFacts) -> list[float]:
    """The task rates its live senders report sending by (rateshare.py's beats)."""
    return [
        float(hb["sendingRate"])
        for hb in facts.heartbeats
        if hb.get("sendingRate") and hb.get("sendingUntil") and hb["sendingUntil"] > facts.now
    ]


def _last_firing(status: Mapping[str, Any], meta: Mapping[str, Any]) -> datetime | None:
    """The last cron firing handled, run or skipped (else the task's creation): firings
    after it are due."""
    handled = [_parse(status.get(k)) for k in ("lastFiredAt", "lastSkippedAt")]
    return max((t for t in handled if t), default=None) or _parse(meta.get("creationTimestamp"))


def _fair_rate(
    rt: Runtime, key: str, *, demand: float | None, prospective: float, weight: float
) -> float | None:
    """This task's part of the operator-wide budget (None when there is no budget).

    `demand` is what the task can use now: the other tasks are allocated by it (None: it
    is not running and takes no part). Its own rate is the share it gets with
    `prospective`, what it would use once sending: a run still building its audience
    starts at its share, never at its full rate."""
    if demand is None:
        rt.demands.pop(key, None)
        rt.weights.pop(key, None)
        return None
    rt.demands[key] = demand
    rt.weights[key] = weight
    if rt.settings.send_budget <= 0:
        return None
    weights = rt.weights if rt.settings.fair_share_by_priority else None
    demands = {**rt.demands, key: prospective}
    return fairshare.max_min_fair(rt.settings.send_budget, demands, weights).get(key)


def _settled(spec: PushTaskSpec, status: Mapping[str, Any], meta: Mapping[str, Any]) -> bool:
    """A run that is over and a spec already reconciled: nothing to read or write.

    Finished/Stopped/Failed tasks are most tasks on a busy cluster; their timers must not
    query MongoDB and the API server every few seconds. A spec change (new generation),
    a raised run or a cron schedule (the next firing) wakes them up. A task stopped or
    failed before its first run has no run to raise past: it is settled too (it reconciled
    every tick: 1,000 tasks at rest, 900 of them stopped before their startAt, kept the
    operator at 0.72 CPU seconds a second).
    """
    workers = status.get("workers") or {}
    ran = int(status.get("run") or 0)
    return (
        status.get("phase") in TERMINAL_PHASES
        # ...and its workers are gone, so the status shows them gone too.
        and not workers.get("ready")
        and not workers.get("live")
        and status.get("observedGeneration") == meta.get("generation")
        and (ran == 0 or spec.run <= ran)
        and spec.schedule.cron is None
    )


# -- the reconcile ------------------------------------------------------------------------


async def reconcile(
    rt: Runtime,
    body: Mapping[str, Any],
    memo: kopf.Memo,
    logger: logging.Logger | logging.LoggerAdapter[Any] = log,
) -> Plan | None:
    """Bring one task in line; None when it is settled (nothing was read or written) or an
    API refusal stopped it (kube.py's policy: shown on the task, looked at next tick)."""
    state = task_state(memo)
    rt.tasks[task_key(body["metadata"])] = state
    async with state.lock:
        state.wakeup = None  # unless this reconcile gets to the end: again after a tick
        state.due_now = False
        try:
            plan = await _reconcile(rt, body, state, logger)
        except KubeApiError as exc:
            if exc.problem != state.suspected:
                # Shown when the next tick sees it again: an API server that has just
                # started answers 403 until its RBAC caches are filled (devstack's restart).
                state.suspected = exc.problem
                log.info("%s (looking again at the next tick)", exc.problem.message)
                return None
            await _show_api_problem(rt, body, state, exc.problem)
            return None
        state.suspected = None
        return plan


async def _show_api_problem(
    rt: Runtime, body: Mapping[str, Any], state: TaskState, problem: ApiProblem
) -> None:
    """A condition and one Warning Event for an API error that retrying will not fix; the
    progress timer looks again at its own pace (no kopf back-off, no traceback).

    Logged with the module's logger: kopf posts its per-object logger's warnings as Events
    too, which would repeat the one Event on every tick.
    """
    meta = body["metadata"]
    status = {**dict(body.get("status") or {}), **state.status}
    previous = list(status.get("conditions") or [])
    generation = int(meta.get("generation") or 0)
    conditions = with_api_problem(previous, problem, generation=generation, now=datetime.now(UTC))
    if problem != state.api_problem:
        rt.events(body, "Warning", problem.reason, problem.message)
        log.warning("%s", problem.message)
        state.api_problem = problem
    if conditions == previous:
        return
    try:
        await rt.kube.patch_status(meta["namespace"], meta["name"], {"conditions": conditions})
    except (KubeApiError, kopf.TemporaryError) as exc:
        # The status itself may be what is refused: the Event and the log still say it.
        log.warning("could not show it in the status either: %s", exc)
    else:
        state.status = {**state.status, "conditions": conditions}


async def _apply_worker_deployment(
    rt: Runtime, state: TaskState, desired: Mapping[str, Any], key: tuple[str, int]
) -> ApiProblem | None:
    """Apply the Deployment unless the API server already refused this very body (a 422
    is the same on every resend: no retry storm); the refusal is the result."""
    if state.rejected is not None and state.rejected[0] == key:
        return state.rejected[1]
    try:
        await rt.kube.apply_deployment(desired)
    except DeploymentRejected as exc:
        state.rejected = (key, exc.problem)
        return exc.problem
    state.rejected = None
    return None


@dataclass
class Snapshot:
    """What one reconcile read, beside the `Observed` it decides on: what applying the
    plan needs (the spec as stored, the run's facts, the Deployment as it is)."""

    meta: Mapping[str, Any]
    raw: dict[str, Any]  # the spec as stored (JSON form): what validation checks, a run freezes
    spec: PushTaskSpec
    status: dict[str, Any]
    now: datetime
    since: datetime  # the last cron firing handled (schedule facts count from it)
    validation: Validation = field(default_factory=Validation)
    fresh: bool = False  # validated by this reconcile
    run: RunFacts | None = None
    deployment: dict[str, Any] | None = None
    inline: dict[str, str] | None = None  # the ConfigMaps a run starting now freezes

    @property
    def key(self) -> str:
        return task_key(self.meta)

    @property
    def run_id(self) -> str | None:
        return self.status.get("runId")

    @property
    def running(self) -> bool:
        return self.status.get("phase") in RUNNING_PHASES

    @property
    def stage(self) -> str | None:
        return ((self.run.run_doc if self.run else None) or {}).get("stage")


@dataclass(frozen=True)
class Share:
    """This task's part of the operator-wide send budget, as this reconcile settled it."""

    fair: float | None  # what decide gives the run's control block (None: no budget)
    allocated: float | None  # the rate in force while running (metrics)
    handing_over: bool  # its due share is still in other tasks' hands
    releasing: bool  # its senders still report more than it is allocated


async def _reconcile(
    rt: Runtime,
    body: Mapping[str, Any],
    state: TaskState,
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> Plan | None:
    """Gather the facts, decide once, apply: one small step each."""
    snap = _read_body(body, state)
    if _settled(snap.spec, snap.status, snap.meta):
        _rest(rt, state, snap)
        window = conversion_window(snap.raw)
        if still_tracked(snap.status, snap.now, window):
            await _refresh_tracking(rt, state, snap)
        return None
    observed = await _gather(rt, state, snap)
    observed = await _ready_for_a_new_run(rt, state, snap, observed)
    share = _share_budget(rt, state, snap, observed)
    plan = decide(dataclasses.replace(observed, fair_rate=share.fair))
    applied = await _apply(rt, state, snap, observed, plan, logger)
    await _publish(rt, state, body, snap, observed, plan, applied, share, logger)
    return plan


# -- 1. gather the facts --------------------------------------------------------------------


def _read_body(body: Mapping[str, Any], state: TaskState) -> Snapshot:
    meta = body["metadata"]
    raw: dict[str, Any] = json.loads(json.dumps(dict(body["spec"]), default=str))
    # Ours first: the watch stream may not have echoed our last status patch yet.
    status: dict[str, Any] = {**dict(body.get("status") or {}), **state.status}
    now = datetime.now(UTC)
    return Snapshot(
        meta=meta,
        raw=raw,
        spec=read_spec(raw),
        status=status,
        now=now,
        since=_last_firing(status, meta) or now,
    )


def _rest(rt: Runtime, state: TaskState, snap: Snapshot) -> None:
    """A settled task takes no part in the budget and sleeps until its next event."""
    rt.forget_share(snap.key)
    state.wakeup = next_wakeup(
        Phase(snap.status["phase"]),
        snap.spec.schedule,
        now=snap.now,
        since=snap.since,
        tick=rt.settings.progress_interval,
        settled=True,
    )


async def _refresh_tracking(rt: Runtime, state: TaskState, snap: Snapshot) -> None:
    """A settled run that tracks clicks or conversions: those, which keep coming after the
    run ended, are all this reads (a few counter documents) and all it may write."""
    # The next look first: a store that fails this read is tried again at the same pace.
    soon = Wakeup(snap.now + timedelta(seconds=CLICKS_REFRESH_SECONDS), "Tracking")
    if state.wakeup is None or state.wakeup.at is None or (soon.at and state.wakeup.at > soon.at):
        state.wakeup = soon
    run_id = str(snap.status["runId"])
    sent = int((snap.status.get("counts") or {}).get("sent") or 0)
    clicks, conversions = await asyncio.gather(
        rt.store.click_totals(run_id) if snap.status.get("clicks") is not None else _nothing(),
        rt.store.conversion_totals(run_id)
        if snap.status.get("conversions") is not None
        else _nothing(),
    )
    fields: dict[str, Any] = {}
    if clicks is not None:
        fields.update(click_fields(clicks, sent))
    if conversions is not None:
        fields["conversions"] = conversions.status(sent)
    patch = status_patch(snap.status, fields)
    if patch:
        await rt.kube.patch_status(snap.meta["namespace"], snap.meta["name"], patch)
        state.status = {**state.status, **patch}


async def _gather(rt: Runtime, state: TaskState, snap: Snapshot) -> Observed:
    """The independent reads side by side (the API server's validation facts, the run's
    facts in MongoDB, the worker Deployment), then what the decision observes."""
    settings = rt.settings
    name = snap.meta["name"]
    (snap.validation, snap.fresh), snap.run, snap.deployment = await asyncio.gather(
        _validate_if_due(rt, state, snap.raw, snap.meta),
        _run_facts_judged(rt.store, snap.run_id, snap.running),
        rt.kube.read_deployment(snap.meta["namespace"], worker_deployment_name(name)),
    )
    view = DeploymentView.from_status(snap.deployment)
    progress: Progress | None = None
    if snap.run is not None and snap.run_id is not None:
        progress = compute_progress(
            totals=snap.run.totals,
            run_doc=snap.run.run_doc,
            heartbeats=snap.run.heartbeats,
            leased_splits=snap.run.leased,
            deployment=view,
            tracker=state.tracker,
            run_id=snap.run_id,
            now=snap.run.now,
            lease_seconds=settings.lease_seconds,
            clicks=snap.run.clicks,
            conversions=snap.run.conversions,
        )
    sched = schedule_facts(snap.spec, snap.since, snap.now)
    return Observed(
        generation=int(snap.meta.get("generation") or 0),
        spec=snap.spec,
        status=snap.status,
        validation=snap.validation,
        progress=progress,
        deployment=view,
        start_due=sched.start_due,
        in_window=sched.in_window,
        recurring=sched.recurring,
        degrade=settings.degrade_for(snap.spec.priority),
        tier=settings.tier_of(snap.spec.priority),
        next_event=sched.next_event,
        due_firing=sched.due_firing,
        now=snap.now,
    )


async def _run_facts_judged(store: Store, run_id: str | None, running: bool) -> RunFacts | None:
    if not run_id:
        return None
    facts = await _run_facts(store, run_id, running)
    if running:
        await _judge_ended_run(store, run_id, facts)
    return facts


async def _ready_for_a_new_run(
    rt: Runtime, state: TaskState, snap: Snapshot, observed: Observed
) -> Observed:
    """A run about to start reads the API facts it needs again and copies its ConfigMaps;
    one that is gone holds the run with the same condition as at creation."""
    if not next_transition(observed).new_run:
        return observed
    validation = snap.validation
    if not snap.fresh:
        validation, _ = await _validate_if_due(rt, state, snap.raw, snap.meta, run_starts=True)
    if validation.ok:
        try:
            snap.inline = await configmap_contents(snap.raw, snap.meta["namespace"], rt.kube)
        except SourceGone as gone:  # deleted since it was validated, a moment ago
            validation = state.validation = gone.validation
    snap.validation = validation
    return dataclasses.replace(observed, validation=validation)


# -- 2. the budget share, then decide -------------------------------------------------------


def _share_budget(rt: Runtime, state: TaskState, snap: Snapshot, observed: Observed) -> Share:
    """This task's share of the budget in the phase it is entering (a run starting or
    resuming now gets its share in its first control block). No await in here: two tasks
    must not both be granted the same budget that a third is still giving up."""
    settings, key, rate = rt.settings, snap.key, snap.spec.rate.per_second
    entering = next_transition(observed)
    if entering.phase in RUNNING_PHASES and not snap.running:
        state.tracker = RateTracker()  # resumed: the paused stretch says nothing
    wants = demand(
        entering,
        snap.spec,
        in_window=observed.in_window,
        sending=snap.stage == "delivery",
        achieved=state.tracker.rate() if state.tracker.measured() else None,
        allocated=state.allocated,
    )
    weight = float(max(1, snap.spec.priority))
    fair = _fair_rate(rt, key, demand=wants, prospective=wants or rate, weight=weight)
    reported = _sending_rates(snap.run) if snap.run is not None else []
    handing_over = False
    if fair is not None:
        others = [v for k, v in rt.in_force.items() if k != key]
        granted = fairshare.grantable(fair, settings.send_budget, others)
        handing_over = granted < fair
        fair = granted
    state.allocated = fair
    allocated = effective_rate(rate, fair) if entering.phase in RUNNING_PHASES else None
    releasing = settings.send_budget > 0 and max(reported, default=0.0) > (allocated or 0.0)
    if settings.send_budget > 0 and (allocated is not None or reported):
        rt.in_force[key] = fairshare.in_force(allocated, reported)
    else:
        rt.in_force.pop(key, None)
    if handing_over:
        # The budget it is due is still in other tasks' hands: they look now (and lower
        # their allocations); this one looks again in a moment.
        for other_key, other in rt.tasks.items():
            if other_key != key and other_key in rt.in_force:
                other.due_now = True
                other.rearm.set()
    return Share(fair, allocated, handing_over, releasing)


# -- 3. apply the plan ----------------------------------------------------------------------


async def _apply(
    rt: Runtime,
    state: TaskState,
    snap: Snapshot,
    observed: Observed,
    plan: Plan,
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> Applied:
    run_id, frozen, started_run = snap.run_id, None, None
    if snap.run is not None:
        frozen = (snap.run.run_doc or {}).get("spec")
    if plan.new_run and plan.run is not None:
        run_id = await _start_run(rt, state, snap, plan, logger)
        frozen, started_run = snap.raw, run_id
    if run_id:
        await _write_control(rt, state, run_id, plan)
    for worker in plan.forget_workers:
        await rt.store.forget_worker(worker)
    refused = await _own_deployment(rt, state, snap, observed.deployment, plan, run_id, frozen)
    skip_samples: list[str] | None = None
    if started_run is None and run_id and snap.run is not None and snap.run.totals.skipped:
        skip_samples = await rt.store.skip_samples(run_id)
    return Applied(
        selector=selector_string(snap.meta["name"]),
        deployment_replicas=int(((snap.deployment or {}).get("status") or {}).get("replicas") or 0),
        started_run=started_run,
        skip_samples=skip_samples,
        refused=refused,
    )


async def _start_run(
    rt: Runtime,
    state: TaskState,
    snap: Snapshot,
    plan: Plan,
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> str:
    """Freeze the spec into a new run in MongoDB (idempotent: the id is the run's own)."""
    assert plan.run is not None
    meta = snap.meta
    task = TaskRef(namespace=meta["namespace"], name=meta["name"], uid=meta["uid"])
    new_id = run_id_for(task, plan.run)
    if snap.run_id and snap.run_id != new_id:
        # The old run is over: its workers stop at their next heartbeat.
        await rt.store.set_control(snap.run_id, state="Stopped", cancelInflight=False)
    inline = snap.inline
    if inline is None:  # not read before deciding (cannot happen: decided from the same facts)
        inline = await configmap_contents(snap.raw, meta["namespace"], rt.kube)
    rate_now = plan.control["ratePerSecond"] if plan.control else snap.spec.rate.per_second
    planned = plan_run(
        task,
        plan.run,
        snap.raw,
        inline=inline,
        labels=meta.get("labels") or {},
        rate_per_second=rate_now,
        now=snap.now,
    )
    created = await rt.store.create_run(planned.run_doc, planned.splits)
    logger.info("run %s %s", new_id, "created" if created else "already existed")
    pruned = await rt.store.prune_runs(task.uid, keep=rt.settings.run_retention)
    if pruned:
        logger.info("ledgers of older runs deleted: %s", ", ".join(pruned))
    state.tracker = RateTracker()
    state.control = None
    return new_id


async def _write_control(rt: Runtime, state: TaskState, run_id: str, plan: Plan) -> None:
    """The run's control block: desired state, live rate, cancellation of in-flight sends;
    written only when it changes."""
    if plan.control is not None and plan.control != state.control:
        await rt.store.set_control(run_id, **plan.control)
        state.control = dict(plan.control)


async def _own_deployment(
    rt: Runtime,
    state: TaskState,
    snap: Snapshot,
    view: DeploymentView,
    plan: Plan,
    run_id: str | None,
    frozen: Mapping[str, Any] | None,
) -> ApiProblem | None:
    """The worker Deployment: created with the first run, patched only when it changes."""
    if not run_id:
        return None
    desired = build_worker_deployment(
        snap.meta, frozen or snap.raw, run_id, rt.settings, replicas=plan.replicas, run=plan.run
    )
    thash = _template_hash(desired)
    desired["metadata"]["annotations"][TEMPLATE_HASH_ANNOTATION] = thash
    current = snap.deployment
    annotations = ((current or {}).get("metadata") or {}).get("annotations") or {}
    if (
        current is None
        or view.desired != plan.replicas
        or annotations.get(TEMPLATE_HASH_ANNOTATION) != thash
        or annotations.get(RUN_ID_ANNOTATION) != run_id
    ):
        return await _apply_worker_deployment(rt, state, desired, (thash, plan.replicas))
    state.rejected = None
    return None


# -- 4. publish: the status, Events, metrics, the next wake-up -------------------------------


async def _publish(
    rt: Runtime,
    state: TaskState,
    body: Mapping[str, Any],
    snap: Snapshot,
    observed: Observed,
    plan: Plan,
    applied: Applied,
    share: Share,
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> None:
    meta, settings = snap.meta, rt.settings
    namespace, name = meta["namespace"], meta["name"]
    new_status = compose_status(
        snap.status, plan, observed.progress, applied, recurring=observed.recurring, now=snap.now
    )
    written = status_fields(new_status)
    # Before the status shows the change: a crash in between records it again next time.
    await _record_notifications(rt, snap, plan, written)
    # ONE status patch, and only when something changed.
    patch = status_patch(snap.status, written)
    if patch:
        await rt.kube.patch_status(namespace, name, patch)
        state.status = {**state.status, **written}

    for ev in plan.events:
        rt.events(body, ev.type, ev.reason, ev.message)
        logger.info("%s: %s", ev.reason, ev.message)
    refused = applied.refused
    if refused is not None and refused != state.api_problem:
        rt.events(body, "Warning", refused.reason, refused.message)
        log.warning("%s", refused.message)  # not kopf's logger: it would post a 2nd Event
    state.api_problem = refused  # a reconcile that got this far ended any other problem

    metrics.observe(
        namespace,
        name,
        plan.phase.value,
        new_status,
        limit=snap.spec.rate.per_second,
        allocation=share.allocated,
        delivering=snap.stage == "delivery",
        in_window=observed.in_window,
    )
    metrics.observe_budget(settings.send_budget, rt.demands)
    waiting = not snap.validation.ok and not snap.validation.permanent
    state.wakeup = next_wakeup(
        plan.phase,
        snap.spec.schedule,
        now=snap.now,
        since=_last_firing(written, meta) or snap.since,
        tick=settings.progress_interval,
        revalidate=REVALIDATE_SECONDS if waiting else None,
    )
    if share.handing_over or share.releasing:
        # Budget changing hands: the senders report within a rate beat; look again soon.
        soon = Wakeup(snap.now + timedelta(seconds=HANDOVER_SECONDS), "BudgetHandover")
        if state.wakeup.at is None or (soon.at is not None and state.wakeup.at > soon.at):
            state.wakeup = soon


async def _record_notifications(
    rt: Runtime, snap: Snapshot, plan: Plan, written: Mapping[str, Any]
) -> None:
    """A run's phase change that spec.notify asks to hear of goes into the store's outbox
    (notify.py decides what; ids are per run, phase and target, so recording it again is
    a no-op). The sender delivers it in the background: nothing here waits on a receiver."""
    before = current_phase(snap.status)
    run_id = snap.run_id
    if plan.run is None or not run_id or before is None:
        return
    if not notify.wanted(snap.spec, before, plan.transition):
        return
    status = PushTaskStatus.model_validate({**snap.status, **written})
    counts = status.counts or Counts()
    samples: list[tuple[str, str]] = []
    if counts.failed:
        samples = await rt.store.failure_samples(run_id, limit=notify.FAILURE_SAMPLE)
    summary = notify.RunSummary(counts, status.started_at, status.finished_at, samples)
    task = {k: str(snap.meta[k]) for k in ("namespace", "name", "uid")}
    change = notify.PhaseChange(task, plan.run, run_id, before, plan.transition, snap.now)
    docs = notify.notifications(change, snap.spec, summary)
    if await rt.store.record_notifications(docs):
        rt.wake_notifier()


# -- entry points (called from main.py's registrations) ------------------------------------


async def on_change(body: Mapping[str, Any], memo: kopf.Memo, logger: Any) -> None:
    """create / resume / update: react at once instead of waiting for the next tick."""
    rt = runtime_of(memo)
    try:
        await reconcile(rt, body, memo, logger)
    except PyMongoError as exc:
        # Store outages are waited out, never counted against the task.
        raise kopf.TemporaryError(f"MongoDB unavailable: {exc}", delay=10) from exc
    finally:
        task_state(memo).rearm.set()  # the watcher sleeps until the new wake-up


async def on_tick(body: Mapping[str, Any], memo: kopf.Memo, logger: Any) -> None:
    rt = runtime_of(memo)
    try:
        await reconcile(rt, body, memo, logger)
    except PyMongoError as exc:
        logger.warning("MongoDB unavailable, status not updated this tick: %s", exc)


async def watch(body: Mapping[str, Any], memo: kopf.Memo, logger: Any) -> None:
    """A task's wake-ups (kopf daemon, cancelled by kopf when the task is deleted or the
    operator stops): reconcile at the next event `wakeups.next_wakeup` names, and sleep
    until then. `body` is kopf's live view of the object."""
    rt = runtime_of(memo)
    state = task_state(memo)
    while True:
        state.rearm.clear()  # before reading `wakeup`: a nudge from now on is not lost
        now = datetime.now(UTC)
        wake = state.wakeup
        delay = rt.settings.progress_interval if wake is None else wake.seconds(now)
        if state.due_now:
            delay = 0.0
        if await _nudged_within(state.rearm, delay):
            continue  # a reconcile elsewhere moved the wake-up: sleep again from there
        try:
            await on_tick(body, memo, logger)
        except kopf.TemporaryError as exc:  # an API error the policy retries (kube.py)
            logger.warning("%s", exc)
            state.wakeup = Wakeup(datetime.now(UTC) + timedelta(seconds=exc.delay or 1), "Retry")
        except kopf.PermanentError as exc:
            logger.error("%s", exc)


async def _nudged_within(event: asyncio.Event, seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True


def apply_degrade(rt: Runtime, view: DegradeView) -> list[str]:
    """The degrade ConfigMap changed: new degraded tiers, every task looked at now. The
    entries that were ignored, one message each."""
    live, problems = degrade.parse(view.data, rt.settings.tiers)
    tiers = degrade.effective(rt.degrade_base, live)
    if tiers != dict(rt.settings.degraded_tiers):
        shown = ", ".join(f"{t} ({m})" for t, m in sorted(tiers.items())) or "none"
        log.info("degraded tiers now: %s", shown)
        rt.settings = dataclasses.replace(rt.settings, degraded_tiers=tiers)
        for state in rt.tasks.values():
            state.due_now = True
            state.rearm.set()
    for problem in problems:
        log.warning("degrade ConfigMap: %s (entry ignored)", problem)
    return problems


async def on_degrade(rt: Runtime, view: DegradeView) -> None:
    """apply_degrade, then a Warning Event on the ConfigMap per ignored entry (who edited
    it sees why in `kubectl describe`)."""
    problems = apply_degrade(rt, view)
    if view.meta is None:
        return
    for problem in problems:
        try:
            await rt.kube.post_event(
                view.meta, "ConfigMap", "Warning", "InvalidDegrade", f"{problem}; entry ignored"
            )
        except Exception as exc:  # a courtesy: the tiers are applied either way
            log.warning("could not post the Event on the degrade ConfigMap: %s", exc)


LEDGER_WAIT_SECONDS = 10.0


async def on_test_template(body: Mapping[str, Any], memo: kopf.Memo, nonce: str) -> None:
    """`kubectl push test` of a task without a worker Deployment asked for its workers' pod
    template (testsend.TEMPLATE_REQUEST = `nonce`): answer with the PodTemplate. An API
    refusal (RBAC without podtemplates) is an Event on the task: the tool waiting for the
    answer says to look there. Outages are retried by kopf (TemporaryError)."""
    rt = runtime_of(memo)
    template = build_test_pod_template(
        body["metadata"], dict(body.get("spec") or {}), rt.settings, nonce
    )
    try:
        await rt.kube.apply_pod_template(template)
    except KubeApiError as exc:
        rt.events(body, "Warning", exc.problem.reason, f"test send: {exc.problem.message}")


async def on_delete(body: Mapping[str, Any], memo: kopf.Memo) -> None:
    """Forget the task and delete its runs' ledgers (the garbage collector removes its
    Deployment).

    The task's finalizer stays until the ledgers are deleted: with MongoDB away, a
    condition says why the task waits, and kopf retries (TemporaryError), so no run data
    is left behind in the store with nobody to delete it."""
    rt = runtime_of(memo)
    meta = body["metadata"]
    key = task_key(meta)
    rt.forget_share(key)
    rt.tasks.pop(key, None)
    try:
        await rt.store.delete_task_runs(str(meta["uid"]))
    except PyMongoError as exc:
        await _show_deletion_waits(rt, body, memo, exc)
        raise kopf.TemporaryError(
            f"run data not deleted yet (MongoDB unavailable: {exc}); retrying",
            delay=LEDGER_WAIT_SECONDS,
        ) from exc
    metrics.forget(meta["namespace"], meta["name"])


async def _show_deletion_waits(
    rt: Runtime, body: Mapping[str, Any], memo: kopf.Memo, exc: PyMongoError
) -> None:
    """Ready False, reason LedgerNotDeleted, on the task waiting in deletion (shown once;
    the Warning Event is kopf's, one per retry)."""
    meta = body["metadata"]
    state = task_state(memo)
    status = {**dict(body.get("status") or {}), **state.status}
    previous = list(status.get("conditions") or [])
    problem = ApiProblem(
        "LedgerNotDeleted",
        "deleting: the runs' data in MongoDB cannot be deleted yet; the finalizer stays "
        f"until it is (retried every {LEDGER_WAIT_SECONDS:.0f}s): {str(exc)[:300]}",
        retried=True,
    )
    generation = int(meta.get("generation") or 0)
    now = datetime.now(UTC)
    conditions = with_api_problem(previous, problem, generation=generation, now=now)
    if _reasons(conditions) == _reasons(previous):
        return
    try:
        await rt.kube.patch_status(meta["namespace"], meta["name"], {"conditions": conditions})
    except (KubeApiError, kopf.TemporaryError) as error:
        log.warning("could not show the waiting deletion in the status: %s", error)
    else:
        state.status = {**state.status, "conditions": conditions}


def _reasons(conditions: list[dict[str, Any]]) -> list[tuple[Any, Any]]:
    return [(c.get("type"), c.get("reason")) for c in conditions]
