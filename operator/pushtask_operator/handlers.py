"""The operator's handlers: gather facts, call the pure modules, apply the plan.

Every entry point (create, resume, update, the timer) ends in `reconcile()`, which runs
under a per-task lock so an update and a timer tick never act on the same task at once.
One reconcile: validate (when due) → read the run's progress from MongoDB and the worker
Deployment → `reconcile.decide()` → create the run document if a run starts → write the
run's control block → own the Deployment → `reconcile.compose_status()` → ONE status
patch → an Event per transition. The decisions and the status are the pure modules'; this
one only reads facts and applies what they return.
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
from pushtask import schedule as schedule_mod
from pushtask.models import PushTaskSpec
from pushtask.naming import worker_deployment_name
from pushtask.planning import TaskRef, plan_run, run_id_for
from pushtask.states import RUNNING_PHASES, TERMINAL_PHASES, Phase
from pushtask.store import Store
from pushtask_operator import degrade, metrics
from pushtask_operator.degrade import DegradeView
from pushtask_operator.deployment import (
    RUN_ID_ANNOTATION,
    build_worker_deployment,
    selector_string,
)
from pushtask_operator.kube import DeploymentRejected, Kube, KubeApiError
from pushtask_operator.progress import DeploymentView, Progress, RateTracker, compute_progress
from pushtask_operator.reconcile import (
    ApiProblem,
    Applied,
    Observed,
    Plan,
    Validation,
    compose_status,
    decide,
    effective_rate,
    read_spec,
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
    totals: Any
    heartbeats: list[dict[str, Any]]
    leased: list[dict[str, Any]]
    # The store's time when the facts were read: heartbeats and leases are judged on the
    # clock they were written on, never the operator's own (pushtask/clock.py).
    now: datetime


async def _run_facts(store: Store, run_id: str, running: bool) -> RunFacts:
    await store.sync_clock(max_age=CLOCK_READ_SECONDS)
    run_doc = await store.get_run(run_id, ("spec", "stage", "failure", "control"))
    if run_doc is not None and running:
        # Idempotent steps any party may take: the operator takes them too, so a run
        # whose last worker died right after finishing a split still moves on.
        run_doc["stage"] = await store.advance(run_id)
    totals = await store.totals(run_id)
    beats, leased = await store.heartbeats(run_id), await store.leases(run_id)
    return RunFacts(run_doc, totals, beats, leased, store.now())


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


def _schedule_facts(spec: PushTaskSpec, since: datetime, now: datetime) -> tuple[bool, bool, bool]:
    """(start_due, in_window, recurring) from spec.schedule; `since`: the last firing."""
    sched = spec.schedule
    return (
        schedule_mod.start_due(sched, now, since),
        schedule_mod.in_window(sched, now),
        sched.cron is not None,
    )


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


async def _reconcile(
    rt: Runtime,
    body: Mapping[str, Any],
    state: TaskState,
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> Plan | None:
    settings = rt.settings
    meta = body["metadata"]
    # The spec as stored (JSON form): what validation checks and a new run freezes.
    raw: dict[str, Any] = json.loads(json.dumps(dict(body["spec"]), default=str))
    spec = read_spec(raw)
    name, namespace = meta["name"], meta["namespace"]
    # Ours first: the watch stream may not have echoed our last status patch yet.
    status: dict[str, Any] = {**dict(body.get("status") or {}), **state.status}
    now = datetime.now(UTC)
    key = task_key(meta)

    since = _last_firing(status, meta) or now
    if _settled(spec, status, meta):
        # A settled task takes no part in the budget: neither its demand nor its weight.
        rt.demands.pop(key, None)
        rt.weights.pop(key, None)
        rt.in_force.pop(key, None)
        phase_now = Phase(status["phase"])
        state.wakeup = next_wakeup(
            phase_now,
            spec.schedule,
            now=now,
            since=since,
            tick=settings.progress_interval,
            settled=True,
        )
        return None

    validation, fresh = await _validate_if_due(rt, state, raw, meta)

    run_id: str | None = status.get("runId")
    running = status.get("phase") in RUNNING_PHASES
    facts = await _run_facts(rt.store, run_id, running) if run_id else None
    if facts is not None and run_id is not None and running:
        await _judge_ended_run(rt.store, run_id, facts)
    deployment = await rt.kube.read_deployment(namespace, worker_deployment_name(name))
    view = DeploymentView.from_status(deployment)

    progress: Progress | None = None
    if facts is not None and run_id is not None:
        progress = compute_progress(
            totals=facts.totals,
            run_doc=facts.run_doc,
            heartbeats=facts.heartbeats,
            leased_splits=facts.leased,
            deployment=view,
            tracker=state.tracker,
            run_id=run_id,
            now=facts.now,
            lease_seconds=settings.lease_seconds,
        )

    start_due, in_window, recurring = _schedule_facts(spec, since, now)
    rate = spec.rate.per_second
    observed = Observed(
        generation=int(meta.get("generation") or 0),
        spec=spec,
        status=status,
        validation=validation,
        progress=progress,
        deployment=view,
        start_due=start_due,
        in_window=in_window,
        recurring=recurring,
        degrade=settings.degrade_for(spec.priority),
        tier=settings.tier_of(spec.priority),
        next_event=schedule_mod.next_event(spec.schedule, now, since),
        due_firing=schedule_mod.due_firing(spec.schedule, since, now),
        now=now,
    )
    plan = decide(observed)
    inline: dict[str, str] | None = None
    if plan.new_run:
        # A run starts: the API facts it needs are read now, and its ConfigMaps copied;
        # one that is gone holds the run with the same condition as at creation.
        if not fresh:
            validation, _ = await _validate_if_due(rt, state, raw, meta, run_starts=True)
        if validation.ok:
            try:
                inline = await configmap_contents(raw, namespace, rt.kube)
            except SourceGone as gone:  # deleted since it was validated, a moment ago
                validation = state.validation = gone.validation
        observed = dataclasses.replace(observed, validation=validation)
        plan = decide(observed)
    # The budget share of the phase the task is entering (a run starting or resuming now
    # gets its share in its first control block), then the plan again with it.
    stage = ((facts.run_doc if facts else None) or {}).get("stage")
    demand: float | None = None
    if plan.phase in RUNNING_PHASES:
        if not running:  # resumed: the paused stretch says nothing of what it achieves
            state.tracker = RateTracker()
        measured = state.tracker.measured() and not plan.new_run
        demand = fairshare.demand_now(
            rate,
            in_window=in_window,
            sending=stage == "delivery" and not plan.new_run,
            achieved=state.tracker.rate() if measured else None,
            allocated=state.allocated,
        )
    prospective = demand if demand else rate
    weight = float(max(1, spec.priority))
    fair = _fair_rate(rt, key, demand=demand, prospective=prospective, weight=weight)
    # No await from here to the bookkeeping below: two tasks must not both be granted the
    # same budget that a third is still giving up.
    reported = _sending_rates(facts) if facts is not None else []
    handing_over = False
    if fair is not None:
        others = [v for k, v in rt.in_force.items() if k != key]
        granted = fairshare.grantable(fair, settings.send_budget, others)
        handing_over = granted < fair
        fair = granted
    state.allocated = fair
    if fair is not None:
        plan = decide(dataclasses.replace(observed, fair_rate=fair))
    allocated = effective_rate(rate, fair) if plan.phase in RUNNING_PHASES else None
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

    frozen: Mapping[str, Any] | None = (facts.run_doc or {}).get("spec") if facts else None
    started_run: str | None = None
    if plan.new_run and plan.run is not None:
        task = TaskRef(namespace=namespace, name=name, uid=meta["uid"])
        new_id = run_id_for(task, plan.run)
        if run_id and run_id != new_id:
            # The old run is over: its workers stop at their next heartbeat.
            await rt.store.set_control(run_id, state="Stopped", cancelInflight=False)
        if inline is None:  # not read above (cannot happen: decided from the same facts)
            inline = await configmap_contents(raw, namespace, rt.kube)
        rate_now = plan.control["ratePerSecond"] if plan.control else rate
        planned = plan_run(task, plan.run, raw, inline=inline, rate_per_second=rate_now, now=now)
        created = await rt.store.create_run(planned.run, planned.splits)
        logger.info("run %s %s", new_id, "created" if created else "already existed")
        pruned = await rt.store.prune_runs(task.uid, keep=settings.run_retention)
        if pruned:
            logger.info("ledgers of older runs deleted: %s", ", ".join(pruned))
        run_id, frozen, started_run = new_id, raw, new_id
        state.tracker = RateTracker()
        state.control = None

    # The run's control block: desired state, live rate, cancellation of in-flight sends.
    if run_id and plan.control is not None and plan.control != state.control:
        await rt.store.set_control(run_id, **plan.control)
        state.control = dict(plan.control)

    for worker in plan.forget_workers:
        await rt.store.forget_worker(worker)

    # The worker Deployment: created with the first run, patched only when it changes.
    replicas = plan.replicas
    refused: ApiProblem | None = None
    if run_id:
        desired = build_worker_deployment(
            meta, frozen or raw, run_id, settings, replicas=replicas, run=plan.run
        )
        thash = _template_hash(desired)
        desired["metadata"]["annotations"][TEMPLATE_HASH_ANNOTATION] = thash
        annotations = ((deployment or {}).get("metadata") or {}).get("annotations") or {}
        if (
            deployment is None
            or view.desired != replicas
            or annotations.get(TEMPLATE_HASH_ANNOTATION) != thash
            or annotations.get(RUN_ID_ANNOTATION) != run_id
        ):
            refused = await _apply_worker_deployment(rt, state, desired, (thash, replicas))
        else:
            state.rejected = None

    skip_samples: list[str] | None = None
    if started_run is None and progress is not None and progress.counts.skipped and run_id:
        skip_samples = await rt.store.skip_samples(run_id)
    applied = Applied(
        selector=selector_string(name),
        deployment_replicas=int(((deployment or {}).get("status") or {}).get("replicas") or 0),
        started_run=started_run,
        skip_samples=skip_samples,
        refused=refused,
    )
    new_status = compose_status(status, plan, progress, applied, recurring=recurring, now=now)

    # ONE status patch, and only when something changed.
    patch = status_patch(status, new_status)
    if patch:
        await rt.kube.patch_status(namespace, name, patch)
        state.status = {**state.status, **status_fields(new_status)}

    for ev in plan.events:
        rt.events(body, ev.type, ev.reason, ev.message)
        logger.info("%s: %s", ev.reason, ev.message)
    if refused is not None and refused != state.api_problem:
        rt.events(body, "Warning", refused.reason, refused.message)
        log.warning("%s", refused.message)  # not kopf's logger: it would post a 2nd Event
    state.api_problem = refused  # a reconcile that got this far ended any other problem

    metrics.observe(
        namespace,
        name,
        plan.phase.value,
        new_status,
        limit=rate,
        allocation=allocated,
        delivering=stage == "delivery",
        in_window=in_window,
    )
    metrics.observe_budget(settings.send_budget, rt.demands)
    waiting = not validation.ok and not validation.permanent
    state.wakeup = next_wakeup(
        plan.phase,
        spec.schedule,
        now=now,
        since=_last_firing(status_fields(new_status), meta) or since,
        tick=settings.progress_interval,
        revalidate=REVALIDATE_SECONDS if waiting else None,
    )
    if handing_over or releasing:
        # Budget changing hands: the senders report within a rate beat; look again soon.
        soon = Wakeup(now + timedelta(seconds=HANDOVER_SECONDS), "BudgetHandover")
        if state.wakeup.at is None or (soon.at is not None and state.wakeup.at > soon.at):
            state.wakeup = soon
    return plan


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


async def on_delete(body: Mapping[str, Any], memo: kopf.Memo) -> None:
    """Forget the task and delete its runs' ledgers (the garbage collector removes its
    Deployment).

    The task's finalizer stays until the ledgers are deleted: with MongoDB away, a
    condition says why the task waits, and kopf retries (TemporaryError), so no run data
    is left behind in the store with nobody to delete it."""
    rt = runtime_of(memo)
    meta = body["metadata"]
    key = task_key(meta)
    rt.demands.pop(key, None)
    rt.weights.pop(key, None)
    rt.in_force.pop(key, None)
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
