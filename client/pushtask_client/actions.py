"""What a person may do to a PushTask, as patches (pure; `kubectl push` and the console).

Each action reads the task as it is and returns the spec patch that does it, `None` when
the task already is so (nothing to change), or raises `Refused` when the phase does not
allow it (resume a Finished run, say), with the words to show. The patch carries the
resourceVersion it was computed from: the API server refuses it (409) if the task
changed in between, and the caller reads it again and recomputes (optimistic
concurrency), so `restart` twice from two terminals is two new runs, never one lost.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pushtask.states import TERMINAL_PHASES, DesiredState, Phase

ACTIONS = ("pause", "resume", "stop", "restart", "scale")


class Refused(Exception):
    """The state machine does not allow this action now."""


@dataclass(frozen=True)
class Change:
    """A patch of the PushTask and what it changes, in words (`spec.state Started -> Paused`)."""

    patch: dict[str, Any]
    what: str


def _phase(task: Mapping[str, Any]) -> Phase | None:
    raw = (task.get("status") or {}).get("phase")
    try:
        return Phase(raw) if raw else None
    except ValueError:
        return None


def _spec(task: Mapping[str, Any]) -> Mapping[str, Any]:
    return task.get("spec") or {}


def _versioned(task: Mapping[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    version = (task.get("metadata") or {}).get("resourceVersion")
    meta = {"resourceVersion": version} if version else {}
    return {"metadata": meta, "spec": spec}


def plan(action: str, task: Mapping[str, Any], workers: int | None = None) -> Change | None:
    """The change `action` makes to `task` (None: it is already so)."""
    name = (task.get("metadata") or {}).get("name", "?")
    spec = _spec(task)
    state = DesiredState(spec.get("state") or DesiredState.STARTED)
    phase = _phase(task)
    over = phase in TERMINAL_PHASES
    shown = phase.value if phase else "new"

    def to_state(target: DesiredState) -> Change | None:
        if state is target:
            return None
        return Change(_versioned(task, {"state": target.value}), f"spec.state {state} -> {target}")

    if action == "pause":
        if over:
            raise Refused(f"{name} is {shown}: there is no run to pause (restart starts one)")
        return to_state(DesiredState.PAUSED)
    if action == "resume":
        if over:
            raise Refused(
                f"{name} is {shown}: resume continues a paused run; restart starts a new one"
            )
        return to_state(DesiredState.STARTED)
    if action == "stop":  # always allowed: on a cron task it also ends the firings
        return to_state(DesiredState.STOPPED)
    if action == "restart":
        run = int(spec.get("run") or 1)
        patch = {"state": DesiredState.STARTED.value, "run": run + 1}
        return Change(_versioned(task, patch), f"spec.run {run} -> {run + 1} (a new run)")
    if action == "scale":
        if workers is None or workers < 1:
            raise Refused(f"{name}: workers must be at least 1")
        now = int(spec.get("workers") or 1)
        if now == workers:
            return None
        return Change(_versioned(task, {"workers": workers}), f"spec.workers {now} -> {workers}")
    raise ValueError(f"unknown action {action!r}")


def progress_line(task: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers `list` and `status` show, from a PushTask object."""
    status = task.get("status") or {}
    counts = status.get("counts") or {}
    total = int(counts.get("audience") or 0)
    done = sum(int(counts.get(k) or 0) for k in ("sent", "failed", "skipped", "unknown"))
    workers = status.get("workers") or {}
    meta = task.get("metadata") or {}
    return {
        "namespace": meta.get("namespace", ""),
        "name": meta.get("name", ""),
        "phase": status.get("phase", "-"),
        "reason": status.get("reason", ""),
        "run": status.get("run", _spec(task).get("run", 1)),
        "sent": int(counts.get("sent") or 0),
        "failed": int(counts.get("failed") or 0),
        "skipped": int(counts.get("skipped") or 0),
        "unknown": int(counts.get("unknown") or 0),
        # Left out of the audience: users audience.exclude removed, rows of a user repeated.
        "excluded": int(counts.get("excluded") or 0),
        "duplicates": int(counts.get("duplicates") or 0),
        "done": done,
        "total": total,
        "rate": float(status.get("rate") or 0.0),
        "eta": status.get("eta") or "-",
        "workers": f"{workers.get('live', 0)}/{workers.get('desired', 0)}",
        "message": status.get("message") or "",
        # A run that tracks link clicks (spec.message.tracking.links); None otherwise.
        "clicks": status.get("clicks"),
        "clickers": status.get("clickers"),
        "clickThrough": status.get("clickThrough") or "",
        # A run that tracks conversions: [{event, count, rate}] by name; None otherwise.
        "conversions": status.get("conversions"),
    }


def lookup_note(found: bool, stage: str | None, run: int) -> str | None:
    """What to say instead of a recipient's record (None: there is a record to show).
    `stage` is the run's stage in the store, None when the run is not there any more."""
    if stage is None:
        return f"run {run} is not in the store"
    if found:
        return None
    if stage in ("audience", "seal"):
        return f"run {run}'s audience is still being built; ask again soon"
    return f"not in the audience of run {run}"


def run_over(task: Mapping[str, Any]) -> bool:
    """The run `status --watch` follows has ended (or never will start by itself)."""
    phase = _phase(task)
    status = task.get("status") or {}
    if phase in TERMINAL_PHASES:
        return True
    # A cron task back in Ready after a run: that run is over.
    return phase is Phase.READY and status.get("reason") == "AwaitingNextFiring"
