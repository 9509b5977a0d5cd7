"""The seven-state machine of a PushTask: one pure function over (phase, desired, facts).

The operator gathers `Facts` from the cluster and MongoDB, calls `transition()`, writes the
result to `status.phase` and posts it as an Event with its reason. Nothing here does I/O.

Decisions beyond the table in DESIGN.md (each is tested):

- Ready means "no run under way". Entering Started from Ready always begins a fresh run
  (`Transition.new_run`): the first start, or a cron firing. Paused -> Started resumes the
  same run and never sets `new_run`.
- Stopped, Finished and Failed end a run. Only a raised `spec.run` (`Facts.run_raised`)
  leaves them: to Started when the start is due, else Ready; with `spec.state: Paused` the
  new run waits in Ready; with `spec.state: Stopped` nothing starts.
- A cron task (`Facts.recurring`) goes back to Ready after a run Finishes or Fails, where it
  waits for the next firing (Ready is "waiting for startAt or the next cron firing"). The
  end of the run is still its own transition and Event. A Stopped cron task stays Stopped
  (no further firings) until `spec.run` is raised. `spec.state: Stopped` on a Finished cron
  task moves it to Stopped so that "no more firings" is visible.
- While a run is under way the precedence is: failure > finished > Stopped > raised run >
  Paused > degraded tier > lost worker. A failure or a complete run is a fact about the
  run; a person's Stop cannot undo it, and a raised run is taken up on the next call.
- Outside a send window the phase stays Started (workers hold without failing); only the
  reason tells.
- The function is one step, one Event. For a cron task the operator computes `start_due`
  as "a firing after status.lastFiredAt is due", so Finished -> Ready does not start a new
  run at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Phase(StrEnum):
    """`status.phase`: the product's seven states."""

    READY = "Ready"
    STARTED = "Started"
    PAUSED = "Paused"
    STOPPED = "Stopped"
    FINISHED = "Finished"
    FAILED = "Failed"
    REBOOT = "Reboot"


class DesiredState(StrEnum):
    """`spec.state`: what a person asks for."""

    STARTED = "Started"
    PAUSED = "Paused"
    STOPPED = "Stopped"


#: Phases in which a run is under way (its run document exists and may change).
ACTIVE_PHASES = frozenset({Phase.STARTED, Phase.PAUSED, Phase.REBOOT})
#: Phases in which workers run and send (every other phase scales them to zero).
RUNNING_PHASES = frozenset({Phase.STARTED, Phase.REBOOT})
#: Phases that end a run. Members equal their strings: `"Finished" in TERMINAL_PHASES`.
TERMINAL_PHASES = frozenset({Phase.STOPPED, Phase.FINISHED, Phase.FAILED})


@dataclass(frozen=True)
class Facts:
    """What the operator observed; every field defaults to the uneventful value.

    `finished` and `failure` describe the run under way; they are ignored in Ready and in
    the terminal phases (the operator need not clear them between cron firings).
    """

    start_due: bool = True  # startAt reached, or a cron firing is due (no schedule: True)
    in_window: bool = True  # now is inside a send window (no windows: True)
    run_raised: bool = False  # spec.run > status.run: a new run is asked for
    recurring: bool = False  # spec.schedule.cron is set
    finished: bool = False  # every recipient of the run has a final result
    failure: str | None = None  # the run failed: error budget spent, permanent error
    worker_lost: bool = False  # a worker vanished mid-run holding leases
    deployment_whole: bool = True  # ready replicas == desired replicas
    stale_leases: bool = False  # some lease has expired and is not reclaimed yet
    # Why the task's priority tier is degraded at a peak ("": it is not).
    degraded: str = ""


# The reason of a task held or paused because its priority tier is degraded.
DEGRADED = "Degraded"

# A terminal phase that stays put: nothing happened (the operator keeps the old cause).
RUN_OVER = "RunOver"


@dataclass(frozen=True)
class Transition:
    """The next phase, a CamelCase reason (Event reason) and a human message."""

    phase: Phase
    reason: str
    message: str
    new_run: bool = False  # the operator must begin a fresh run (status.run = spec.run)


def scales_to_zero(phase: Phase) -> bool:
    """True when the worker Deployment must have no replicas in `phase`."""
    # Ready: no worker runs before the start; Reboot keeps workers to finish reclaiming.
    return phase not in RUNNING_PHASES


def _start_or_wait(desired: DesiredState, facts: Facts, *, reason: str, what: str) -> Transition:
    """A new run is asked for: start it now, or wait in Ready."""
    if desired is DesiredState.PAUSED:
        return Transition(Phase.READY, "StartHeld", f"{what}; held: spec.state is Paused")
    if facts.degraded:
        return Transition(Phase.READY, DEGRADED, f"{what}; held: {facts.degraded}")
    if not facts.start_due:
        wait = "the next cron firing" if facts.recurring else "schedule.startAt"
        return Transition(Phase.READY, "WaitingForStart", f"{what}; waiting for {wait}")
    return Transition(Phase.STARTED, reason, f"{what}; run started", new_run=True)


def _raised(desired: DesiredState, facts: Facts) -> Transition:
    return _start_or_wait(desired, facts, reason="NewRun", what="spec.run raised")


def transition(phase: Phase, desired: DesiredState, facts: Facts) -> Transition:
    """The next phase of a task in `phase` whose spec asks for `desired`, given `facts`."""
    if phase is Phase.READY:
        if desired is DesiredState.STOPPED:
            return Transition(Phase.STOPPED, "StoppedByUser", "stopped before the run started")
        return _start_or_wait(desired, facts, reason="StartTimeReached", what="start due")

    if phase in ACTIVE_PHASES:
        if facts.failure is not None:
            return Transition(Phase.FAILED, "RunFailed", facts.failure)
        if facts.finished:
            return Transition(Phase.FINISHED, "RunFinished", "every recipient has a result")
        if desired is DesiredState.STOPPED:
            return Transition(Phase.STOPPED, "StoppedByUser", "spec.state is Stopped; run over")
        if facts.run_raised:
            return _raised(desired, facts)
        if desired is DesiredState.PAUSED:
            return Transition(Phase.PAUSED, "PausedByUser", "spec.state is Paused")
        if facts.degraded:
            return Transition(Phase.PAUSED, DEGRADED, f"paused: {facts.degraded}")
        if phase is Phase.STARTED and facts.worker_lost:
            return Transition(Phase.REBOOT, "WorkerLost", "a worker was lost; reclaiming leases")
        if phase is Phase.REBOOT and not (facts.deployment_whole and not facts.stale_leases):
            return Transition(Phase.REBOOT, "Reclaiming", "waiting for workers and stale leases")
        if not facts.in_window:
            return Transition(Phase.STARTED, "OutsideSendWindow", "holding until a send window")
        reason = {Phase.STARTED: "Running", Phase.PAUSED: "Resumed", Phase.REBOOT: "Recovered"}
        return Transition(Phase.STARTED, reason[phase], "run under way")

    # Terminal: Stopped, Finished, Failed. The run is over.
    if facts.run_raised and desired is not DesiredState.STOPPED:
        return _raised(desired, facts)
    if phase is Phase.STOPPED:
        return Transition(Phase.STOPPED, RUN_OVER, "stopped; raise spec.run to start a new run")
    if facts.recurring:
        if desired is DesiredState.STOPPED:
            return Transition(Phase.STOPPED, "StoppedByUser", "no further cron firings")
        return Transition(Phase.READY, "AwaitingNextFiring", f"last run {phase.value.lower()}")
    return Transition(phase, RUN_OVER, f"run {phase.value.lower()}; raise spec.run to rerun")
