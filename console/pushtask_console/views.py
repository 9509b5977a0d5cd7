"""What the page shows, as plain JSON-able dicts (pure: no I/O, no clock of its own).

The console's handlers fetch objects (PushTasks, Events, heartbeats, ledger entries) and
pass them here; the page renders these dicts as text, so nothing here escapes anything.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import yaml
from pydantic import ValidationError

from pushtask.models import API_VERSION, KIND, PushTaskSpec, describe_errors
from pushtask_client.actions import lookup_note, progress_line, run_over
from pushtask_client.taskapi import event_time
from pushtask_client.testsend import TestSendReport

HISTORY_SECONDS = 600  # the rate chart's window


def summary(task: Mapping[str, Any]) -> dict[str, Any]:
    """One row of the list (and the head of a task's page): progress_line plus the few
    fields the page needs to draw a bar and pick buttons."""
    p = progress_line(task)
    meta = task.get("metadata") or {}
    spec = task.get("spec") or {}
    total, done = p["total"], p["done"]
    return {
        **p,
        "uid": meta.get("uid", ""),
        "created": meta.get("creationTimestamp", ""),
        "state": spec.get("state") or "Started",
        "desiredWorkers": int(spec.get("workers") or 1),
        "percent": round(100.0 * done / total, 1) if total else 0.0,
        "over": run_over(task),
    }


def detail(task: Mapping[str, Any]) -> dict[str, Any]:
    """A task's page: its summary, its counts, conditions, skip samples and what it sends."""
    status = task.get("status") or {}
    spec = task.get("spec") or {}
    message = spec.get("message") or {}
    template = message.get("template") or {}
    conditions = [
        {
            "type": str(c.get("type", "")),
            "status": str(c.get("status", "")),
            "reason": str(c.get("reason", "")),
            "message": str(c.get("message", "")),
        }
        for c in status.get("conditions") or []
    ]
    return {
        "summary": summary(task),
        "counts": {k: int(v or 0) for k, v in (status.get("counts") or {}).items()},
        "conditions": conditions,
        "skipSamples": [str(s) for s in status.get("skipSamples") or []],
        "channel": str(message.get("channel", "")),
        "template": {k: str(v) for k, v in template.items() if isinstance(v, str | int)},
        "rate": (spec.get("rate") or {}).get("perSecond"),
    }


def event_rows(events: Iterable[Any], limit: int = 20) -> list[dict[str, str]]:
    """The newest `limit` Events (kubernetes client objects), newest first."""
    rows = [
        {
            "time": event_time(e),
            "type": str(e.type or ""),
            "reason": str(e.reason or ""),
            "message": str(e.message or "").strip(),
        }
        for e in events
    ]
    return rows[-limit:][::-1]


def worker_rows(heartbeats: Sequence[Mapping[str, Any]], now: datetime) -> list[dict[str, Any]]:
    """Workers of a run by their last heartbeat: id, seconds since, the unit they hold."""
    rows = []
    for hb in heartbeats:
        seen = hb.get("lastSeen")
        age = round((now - seen).total_seconds(), 1) if isinstance(seen, datetime) else None
        rows.append({"id": str(hb.get("_id", "")), "age": age, "lease": str(hb.get("lease") or "")})
    return sorted(rows, key=lambda r: r["id"])


def recipient_view(state: Any, stage: str | None, user: str, run: int) -> dict[str, Any]:
    """The answer to "what happened to this user" (state: records.RecipientState or None;
    stage None: the run is not in the store)."""
    note = lookup_note(state is not None, stage, run)
    if note is not None or state is None:
        return {"user": user, "run": run, "found": False, "note": note}
    return {
        "user": str(state.user),
        "run": run,
        "found": True,
        "status": str(state.status),
        "attempts": int(state.attempts),
        "error": str(state.error or ""),
        "at": state.at.isoformat() if state.at else "",
        "worker": str(state.worker or ""),
    }


def failure_rows(samples: Iterable[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"user": user, "error": error} for user, error in samples]


def link_rows(targets: Sequence[str], clickers: Mapping[int, int]) -> list[dict[str, Any]]:
    """A tracked run's links, by index: each target and how many recipients clicked it."""
    return [
        {"link": i, "target": target, "clickers": int(clickers.get(i, 0))}
        for i, target in enumerate(targets)
    ]


class History:
    """Per task, the last HISTORY_SECONDS of (time, rate, sent): the rate chart's points.

    Kept in memory by the console (a restart starts an empty chart); keyed by uid and
    run, so a new run starts a new line."""

    def __init__(self, seconds: float = HISTORY_SECONDS) -> None:
        self.seconds = seconds
        self._points: dict[str, list[tuple[float, float, int]]] = {}

    @staticmethod
    def key(s: Mapping[str, Any]) -> str:
        return f"{s['uid']}/{s['run']}"

    def add(self, now: float, summaries: Iterable[Mapping[str, Any]]) -> None:
        live = set()
        for s in summaries:
            k = self.key(s)
            live.add(k)
            points = self._points.setdefault(k, [])
            points.append((now, float(s["rate"]), int(s["sent"])))
            while points and points[0][0] < now - self.seconds:
                points.pop(0)
        for gone in set(self._points) - live:  # deleted tasks, earlier runs
            del self._points[gone]

    def points(self, s: Mapping[str, Any]) -> list[list[float]]:
        return [[t, rate, sent] for t, rate, sent in self._points.get(self.key(s), [])]


# -- the create form ------------------------------------------------------------------


class FormError(Exception):
    """A manifest the console will not send on, with its errors as [{field, message}]."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{e['field']}: {e['message']}" for e in errors))
        self.errors = errors


def split_line(line: str) -> dict[str, str]:
    """ "spec.workers: Input should be ..." as {field, message}."""
    field, sep, message = line.partition(": ")
    if not sep or " " in field:
        return {"field": "", "message": line}
    return {"field": field, "message": message}


def parse_manifest(text: str, default_namespace: str) -> tuple[dict[str, Any], str]:
    """The PushTask in the form's YAML and its namespace; FormError naming each problem
    (a YAML error by its line, a spec error by its field path)."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise FormError([{"field": "yaml", "message": f"{where}{problem}"}]) from None
    if not isinstance(doc, dict):
        raise FormError([{"field": "yaml", "message": "expected one PushTask document"}])
    errors: list[dict[str, str]] = []
    if doc.get("apiVersion") != API_VERSION:
        errors.append({"field": "apiVersion", "message": f"must be {API_VERSION}"})
    if doc.get("kind") != KIND:
        errors.append({"field": "kind", "message": f"must be {KIND}"})
    meta = doc.get("metadata")
    if not isinstance(meta, dict) or not meta.get("name"):
        errors.append({"field": "metadata.name", "message": "a name is required"})
        meta = {}
    try:
        PushTaskSpec.model_validate(doc.get("spec") or {})
    except ValidationError as error:
        errors += [split_line(line) for line in describe_errors(error, "spec")]
    if errors:
        raise FormError(errors)
    return doc, str(meta.get("namespace") or default_namespace)


# -- the test form ----------------------------------------------------------------------


def parse_test_form(to: Any, attrs: Any) -> tuple[list[str], Any]:
    """The "Send a test" form: recipients (comma-separated, or a list) and attributes
    (JSON text or already an object/list; empty: none). FormError by field."""
    users = [str(u) for u in to] if isinstance(to, list) else str(to or "").split(",")
    users = [u.strip() for u in users if u.strip()]
    errors: list[dict[str, str]] = []
    if not users:
        errors.append({"field": "to", "message": "name at least one user"})
    if isinstance(attrs, str):
        text = attrs.strip()
        try:
            attrs = json.loads(text) if text else None
        except json.JSONDecodeError as error:
            errors.append({"field": "attrs", "message": f"not JSON: {error}"})
    if errors:
        raise FormError(errors)
    return users, attrs


def report_view(report: TestSendReport) -> dict[str, Any]:
    """The results of a test send, a row per recipient."""
    return {
        "delivered": report.delivered,
        "pod": report.pod,
        "results": [
            {"user": o.user, "outcome": o.outcome, "attempts": o.attempts,
             "status": o.status, "detail": o.detail}
            for o in report.outcomes
        ],
    }  # fmt: skip
