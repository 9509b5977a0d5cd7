"""The seven-state machine: every (phase, desired) pair against every scenario of facts.

`TABLE[(phase, desired)]` gives the outcome of the uneventful facts ("base") and the
scenarios that change it; every scenario not listed must give the base outcome, so a fact
that is irrelevant to a pair is tested to be irrelevant. No-op pairs are explicit rows.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import replace
from typing import Any

import pytest

from pushtask.states import (
    ACTIVE_PHASES,
    TERMINAL_PHASES,
    DesiredState,
    Facts,
    Phase,
    scales_to_zero,
    transition,
)

R, S, P, X, F, E, B = (
    Phase.READY, Phase.STARTED, Phase.PAUSED, Phase.STOPPED, Phase.FINISHED, Phase.FAILED,
    Phase.REBOOT,
)  # fmt: skip
DS, DP, DX = DesiredState.STARTED, DesiredState.PAUSED, DesiredState.STOPPED

SCENARIOS: dict[str, Facts] = {
    "base": Facts(),
    "not_due": Facts(start_due=False),
    "raised": Facts(run_raised=True),
    "raised_not_due": Facts(run_raised=True, start_due=False),
    "raised_degraded": Facts(run_raised=True, degraded="tier low degraded (graceful)"),
    "failure": Facts(failure="error budget spent: 60% of 200 sends failed"),
    "finished": Facts(finished=True),
    "worker_lost": Facts(worker_lost=True, deployment_whole=False, stale_leases=True),
    "deployment_short": Facts(deployment_whole=False),
    "stale_leases": Facts(stale_leases=True),
    "degraded": Facts(degraded="tier low degraded (graceful)"),
    "outside_window": Facts(in_window=False),
    "recurring": Facts(recurring=True, start_due=False),
    "recurring_due": Facts(recurring=True),
}

Expected = tuple[Phase, str]
NEW_RUN_REASONS = {"StartTimeReached", "NewRun"}

_ENDED = {"failure": (E, "RunFailed"), "finished": (F, "RunFinished")}
_RAISED_HELD = {"raised": (R, "StartHeld"), "raised_not_due": (R, "StartHeld"),
                "raised_degraded": (R, "StartHeld")}  # fmt: skip
_RAISED_STARTS = {
    "raised": (S, "NewRun"),
    "raised_not_due": (R, "WaitingForStart"),
    "raised_degraded": (R, "Degraded"),
}

TABLE: dict[tuple[Phase, DesiredState], dict[str, Expected]] = {
    # Ready: no run under way. Starting from Ready always begins a new run.
    (R, DS): {
        "base": (S, "StartTimeReached"),
        "not_due": (R, "WaitingForStart"),
        "raised_not_due": (R, "WaitingForStart"),
        "raised_degraded": (R, "Degraded"),
        "degraded": (R, "Degraded"),
        "recurring": (R, "WaitingForStart"),
    },
    (R, DP): {"base": (R, "StartHeld")},  # paused before the start: held, nothing to pause
    (R, DX): {"base": (X, "StoppedByUser")},
    # Started: a run under way.
    (S, DS): {
        "base": (S, "Running"),
        **_ENDED,
        **_RAISED_STARTS,
        "worker_lost": (B, "WorkerLost"),
        "degraded": (P, "Degraded"),
        "outside_window": (S, "OutsideSendWindow"),
    },
    (S, DP): {"base": (P, "PausedByUser"), **_ENDED, **_RAISED_HELD},
    (S, DX): {"base": (X, "StoppedByUser"), **_ENDED},
    # Paused -> Started resumes the same run.
    (P, DS): {
        "base": (S, "Resumed"),
        **_ENDED,
        **_RAISED_STARTS,
        "degraded": (P, "Degraded"),
        "outside_window": (S, "OutsideSendWindow"),
    },
    (P, DP): {"base": (P, "PausedByUser"), **_ENDED, **_RAISED_HELD},
    (P, DX): {"base": (X, "StoppedByUser"), **_ENDED},
    # Reboot -> Started once the Deployment is whole and no lease is stale.
    (B, DS): {
        "base": (S, "Recovered"),
        **_ENDED,
        **_RAISED_STARTS,
        "worker_lost": (B, "Reclaiming"),
        "deployment_short": (B, "Reclaiming"),
        "stale_leases": (B, "Reclaiming"),
        "degraded": (P, "Degraded"),
        "outside_window": (S, "OutsideSendWindow"),
    },
    (B, DP): {"base": (P, "PausedByUser"), **_ENDED, **_RAISED_HELD},
    (B, DX): {"base": (X, "StoppedByUser"), **_ENDED},
    # Stopped ends the run: only a raised spec.run starts again; cron does not fire.
    (X, DS): {"base": (X, "RunOver"), **_RAISED_STARTS},
    (X, DP): {"base": (X, "RunOver"), **_RAISED_HELD},
    (X, DX): {"base": (X, "RunOver")},  # a raised run waits while spec.state is Stopped
    # Finished / Failed: a raised run starts again; a cron task waits for its next firing.
    **{
        (done, DS): {
            "base": (done, "RunOver"),
            **_RAISED_STARTS,
            "recurring": (R, "AwaitingNextFiring"),
            "recurring_due": (R, "AwaitingNextFiring"),
        }
        for done in (F, E)
    },
    **{
        (done, DP): {
            "base": (done, "RunOver"),
            **_RAISED_HELD,
            "recurring": (R, "AwaitingNextFiring"),
            "recurring_due": (R, "AwaitingNextFiring"),
        }
        for done in (F, E)
    },
    **{
        (done, DX): {
            "base": (done, "RunOver"),  # nothing to stop; a raised run waits too
            "recurring": (X, "StoppedByUser"),  # no further firings, visibly
            "recurring_due": (X, "StoppedByUser"),
        }
        for done in (F, E)
    },
}

CASES = [
    pytest.param(phase, desired, scenario, id=f"{phase.value}-{desired.value}-{scenario}")
    for (phase, desired) in TABLE
    for scenario in SCENARIOS
]


def test_table_covers_every_pair() -> None:
    assert set(TABLE) == set(itertools.product(Phase, DesiredState))
    for rows in TABLE.values():
        assert "base" in rows and set(rows) <= set(SCENARIOS)


@pytest.mark.parametrize(("phase", "desired", "scenario"), CASES)
def test_transition(phase: Phase, desired: DesiredState, scenario: str) -> None:
    rows = TABLE[(phase, desired)]
    want_phase, want_reason = rows.get(scenario, rows["base"])
    t = transition(phase, desired, SCENARIOS[scenario])
    assert (t.phase, t.reason) == (want_phase, want_reason)
    assert t.message
    # A fresh run begins exactly when Started is entered from no run, or on a raised run.
    assert t.new_run == (t.phase is S and t.reason in NEW_RUN_REASONS)


def test_failure_message_is_the_failure() -> None:
    facts = SCENARIOS["failure"]
    assert transition(S, DS, facts).message == facts.failure


def test_resume_keeps_the_run() -> None:
    t = transition(P, DS, Facts())
    assert (t.phase, t.new_run) == (S, False)


_BOOLS = ("start_due", "in_window", "run_raised", "recurring", "finished", "worker_lost",
          "deployment_whole", "stale_leases", "degraded")  # fmt: skip


def _every_facts() -> list[Facts]:
    out = []
    for values in itertools.product((False, True), repeat=len(_BOOLS)):
        kwargs: dict[str, Any] = dict(zip(_BOOLS, values, strict=True))
        base = Facts(**kwargs)
        out += [base, replace(base, failure="boom")]
    return out


ALL_FACTS = _every_facts()


@pytest.mark.parametrize("desired", list(DesiredState))
@pytest.mark.parametrize("phase", list(Phase))
def test_invariants_over_every_combination_of_facts(phase: Phase, desired: DesiredState) -> None:
    for facts in ALL_FACTS:
        t = transition(phase, desired, facts)
        assert isinstance(t.phase, Phase)
        assert re.fullmatch(r"[A-Z][A-Za-z]+", t.reason), t
        assert transition(phase, desired, facts) == t  # pure
        if t.new_run:
            assert t.phase is S and desired is DS
        if desired is DX:
            # Stopped never starts anything.
            assert t.phase is not S
        if phase in TERMINAL_PHASES and not facts.run_raised:
            # The run is over: only a cron task returns to Ready, nothing starts.
            assert t.phase in (phase, R, X) and not t.new_run
            if t.phase is R:
                assert facts.recurring and phase is not X
        if phase in ACTIVE_PHASES and facts.failure is not None:
            assert t.phase is E
        if t.phase is B:
            assert phase in (S, B)  # only a running task can lose a worker


@pytest.mark.parametrize(
    ("phase", "zero"),
    [(R, True), (S, False), (P, True), (X, True), (F, True), (E, True), (B, False)],
)
def test_scales_to_zero(phase: Phase, zero: bool) -> None:
    assert scales_to_zero(phase) is zero


# Every edge the machine can take, and so, by omission, every edge it never takes (for
# example Ready -> Finished, Paused -> Reboot, Finished -> Failed, Stopped -> Paused).
EDGES: dict[Phase, set[Phase]] = {
    R: {R, S, X},  # a run starts, waits, or is stopped before it started
    S: {S, P, X, F, E, B, R},  # R: a raised spec.run held (Paused, degraded, not due)
    P: {P, S, X, F, E, R},  # never Reboot: no worker runs while Paused
    X: {X, S, R},  # only a raised spec.run leaves Stopped
    F: {F, S, R, X},  # a new run, a cron task's next firing, or a Stop of a cron task
    E: {E, S, R, X},
    B: {B, S, P, X, F, E, R},
}


@pytest.mark.parametrize("phase", list(Phase))
def test_only_the_listed_edges_are_ever_taken(phase: Phase) -> None:
    taken = {transition(phase, d, f).phase for d in DesiredState for f in ALL_FACTS}
    assert taken == EDGES[phase], (
        f"{phase}: unlisted {taken - EDGES[phase]}, never {EDGES[phase] - taken}"
    )
