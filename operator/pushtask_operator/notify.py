"""Completion notifications, decided (pure: no I/O): which phase changes are reported,
to whom, with what; and how long a failed send waits before the next attempt.

A run's phase change is reported when the run was under way (Started, Paused, Reboot)
and enters a phase a `spec.notify` entry lists: Finished, Failed, Stopped, or Paused when
nobody asked for the pause (a degraded tier: reason `Degraded`; a spent failure budget
fails the run, so it is reported as Failed). A pause a person asked for is not news to
them. The handler records what `notifications()` returns in the store's outbox before it
writes the status; `notifier.py` sends it. One document per (run, phase, target): its id
is the Standard Webhooks `webhook-id` and the e-mail's Message-ID, so a receiver that saw
it already can drop a repeat (an operator that dies between a 2xx and marking the
notification sent sends it once more: at least once).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pushtask.models import Counts, Notification, PushTaskSpec
from pushtask.states import ACTIVE_PHASES, Phase, Transition

# Reasons of states.transition for a pause a person asked for (spec.state: Paused).
PAUSED_BY_PERSON = "PausedByUser"
# How many distinct failure reasons a notification lists, from how many failed recipients.
TOP_REASONS = 3
FAILURE_SAMPLE = 50
# Retries: exponential back-off from 10 s, at most 10 min apart, given up after an hour.
FIRST_DELAY = 10.0
MAX_DELAY = 600.0
GIVE_UP_AFTER = timedelta(hours=1)


@dataclass(frozen=True)
class RunSummary:
    """What a notification tells about the run, as the status shows it after the change."""

    counts: Counts
    started_at: datetime | None = None
    finished_at: datetime | None = None
    # (user, error) of a few failed recipients: store.failure_samples.
    failure_samples: Sequence[tuple[str, str]] = ()


def reported(before: Phase | None, t: Transition, phases: Sequence[str]) -> bool:
    """True when the change from `before` to `t` is one `phases` asks to be told of."""
    if before is None or before not in ACTIVE_PHASES or t.phase is before:
        return False  # not a run's phase change (first sight, Ready, a terminal phase)
    if t.phase is Phase.PAUSED and t.reason == PAUSED_BY_PERSON:
        return False
    return t.phase.value in phases


def wanted(spec: PushTaskSpec, before: Phase | None, t: Transition) -> list[Notification]:
    """The `spec.notify` entries the change from `before` to `t` is reported to."""
    return [n for n in spec.notify if reported(before, t, n.phases)]


def top_reasons(
    samples: Sequence[tuple[str, str]], limit: int = TOP_REASONS
) -> list[dict[str, Any]]:
    """The most frequent errors among the sampled failed recipients, most frequent first."""
    counted = Counter(error for _, error in samples)
    return [{"reason": r, "sampled": n} for r, n in counted.most_common(limit)]


def _iso(ts: datetime | None) -> str | None:
    return None if ts is None else ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class PhaseChange:
    """One run's phase change, as a notification names it: the task ({namespace, name,
    uid}: Events about the sends are posted on it), the run, the phases and when."""

    task: dict[str, str]
    run: int
    run_id: str
    before: Phase
    transition: Transition
    at: datetime


def payload(change: PhaseChange, summary: RunSummary) -> dict[str, Any]:
    """The notification's JSON body (a webhook's body; an e-mail says the same in text)."""
    task, t = change.task, change.transition
    return {
        "type": f"pushtask.run.{t.phase.value.lower()}",
        "task": {"namespace": task["namespace"], "name": task["name"]},
        "run": change.run,
        "runId": change.run_id,
        "phase": t.phase.value,
        "previousPhase": change.before.value,
        "reason": t.reason,
        "message": t.message,
        "counts": summary.counts.model_dump(),
        "topFailureReasons": top_reasons(summary.failure_samples),
        "failureSampleSize": len(summary.failure_samples),
        "startedAt": _iso(summary.started_at),
        "finishedAt": _iso(summary.finished_at),
        "at": _iso(change.at),
    }


def target_of(n: Notification, spec: PushTaskSpec) -> dict[str, Any]:
    """What the sender needs to reach one entry, frozen with the notification (a spec
    edited later does not redirect it). Secret values are never stored: only their refs."""
    if n.webhook is not None:
        return {"webhook": n.webhook.model_dump(by_alias=True, mode="json", exclude_none=True)}
    assert n.email is not None and spec.message.smtp is not None  # the models' rule
    smtp = spec.message.smtp.model_dump(by_alias=True, mode="json", exclude_none=True)
    return {"email": {"to": list(n.email.to), "smtp": smtp}}


def notification_id(run_id: str, phase: Phase, target: dict[str, Any]) -> str:
    """Deterministic per (run, phase, target): the same phase change recorded twice (a
    reconcile repeated after a failed status patch) is one notification."""
    digest = hashlib.sha256(json.dumps(target, sort_keys=True).encode()).hexdigest()[:16]
    return f"{run_id}.{phase.value.lower()}.{digest}"


def notifications(
    change: PhaseChange, spec: PushTaskSpec, summary: RunSummary
) -> list[dict[str, Any]]:
    """The outbox documents of one phase change (empty when nobody asked to be told)."""
    body = payload(change, summary)
    phase = change.transition.phase
    docs = []
    for n in wanted(spec, change.before, change.transition):
        target = target_of(n, spec)
        docs.append(
            {
                "_id": notification_id(change.run_id, phase, target),
                "run": change.run_id,
                "task": dict(change.task),
                "phase": phase.value,
                "target": target,
                "payload": body,
                "created": change.at,
                "nextAt": change.at,
            }
        )
    return docs


def retry_delay(attempts: int) -> float:
    """Seconds before the next attempt after `attempts` failed ones (1, 2, ...)."""
    return min(MAX_DELAY, FIRST_DELAY * 2 ** max(0, attempts - 1))


def next_attempt(created: datetime, attempts: int, now: datetime) -> datetime | None:
    """When to try again after `attempts` failed attempts, or None: give up (the next
    attempt would come more than GIVE_UP_AFTER after the phase change)."""
    at = now + timedelta(seconds=retry_delay(attempts))
    return None if at - created > GIVE_UP_AFTER else at


def email_text(body: dict[str, Any]) -> tuple[str, str]:
    """(subject, plain-text body) of an e-mail notification: the same facts as the JSON."""
    task = f"{body['task']['namespace']}/{body['task']['name']}"
    subject = f"PushTask {task} run {body['run']}: {body['phase']}"
    c = body["counts"]
    lines = [
        f"PushTask {task}, run {body['run']} ({body['runId']}): "
        f"{body['previousPhase']} -> {body['phase']}",
        f"Reason: {body['reason']}: {body['message']}",
        "",
        "Recipients: "
        + ", ".join(f"{k} {c.get(k, 0)}" for k in ("audience", "sent", "failed", "skipped"))
        + f", unknown {c.get('unknown', 0)}, pending {c.get('pending', 0)}",
    ]
    if body["topFailureReasons"]:
        lines += ["", f"Top failure reasons (of {body['failureSampleSize']} sampled failures):"]
        lines += [f"  {r['sampled']} x {r['reason']}" for r in body["topFailureReasons"]]
    lines += ["", f"Started: {body['startedAt'] or '-'}", f"Ended:   {body['finishedAt'] or '-'}"]
    lines += [f"At:      {body['at']}"]
    return subject, "\n".join(lines) + "\n"
