"""The console's pure parts: what the page shows of a task, its workers, a recipient, and
the create form's errors named by field."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pushtask.records import RecipientState
from pushtask_console import views


def task(phase: str = "Started", **counts: int) -> dict[str, Any]:
    return {
        "metadata": {"name": "sale", "namespace": "shop", "uid": "u-1", "resourceVersion": "7"},
        "spec": {
            "workers": 3,
            "state": "Started",
            "rate": {"perSecond": 50},
            "message": {"channel": "webhook", "template": {"title": "Hi", "body": "<script>x"}},
        },
        "status": {
            "phase": phase,
            "run": 2,
            "rate": 12.5,
            "counts": {"audience": 200, **counts},
            "workers": {"live": 2, "desired": 3},
            "skipSamples": ["row 3: no id"],
            "conditions": [{"type": "Ready", "status": "False", "reason": "Running"}],
        },
    }


def test_summary_has_the_bar_and_the_buttons_inputs() -> None:
    s = views.summary(task(sent=90, failed=5, skipped=5))
    assert (s["name"], s["namespace"], s["phase"], s["run"]) == ("sale", "shop", "Started", 2)
    assert (s["done"], s["total"], s["percent"]) == (100, 200, 50.0)
    assert (s["uid"], s["state"], s["desiredWorkers"], s["workers"]) == ("u-1", "Started", 3, "2/3")
    assert s["over"] is False
    assert views.summary(task("Finished", sent=200))["over"] is True
    assert views.summary({"metadata": {"name": "new"}})["percent"] == 0.0  # no status yet


def test_summary_carries_the_clicks_of_a_tracked_run() -> None:
    tracked = task("Finished", sent=200)
    tracked["status"].update(clicks=14, clickers=10, clickThrough="5.0%")
    s = views.summary(tracked)
    assert (s["clicks"], s["clickers"], s["clickThrough"]) == (14, 10, "5.0%")
    assert views.summary(task("Finished", sent=200))["clicks"] is None  # not tracked
    tracked["status"]["conversions"] = [{"event": "purchase", "count": 4, "rate": "2.0%"}]
    assert views.summary(tracked)["conversions"] == tracked["status"]["conversions"]


def test_summary_carries_the_users_left_out_of_the_audience() -> None:
    s = views.summary(task("Finished", sent=200, excluded=750, duplicates=3))
    assert (s["excluded"], s["duplicates"], s["total"]) == (750, 3, 200)
    s = views.summary(task("Finished", sent=200))  # a status from before the counts
    assert (s["excluded"], s["duplicates"]) == (0, 0)


def test_link_rows_name_each_target_and_its_clickers() -> None:
    rows = views.link_rows(("https://a.example", "https://b.example"), {1: 4})
    assert rows == [
        {"link": 0, "target": "https://a.example", "clickers": 0},
        {"link": 1, "target": "https://b.example", "clickers": 4},
    ]


def test_detail_keeps_the_template_as_text() -> None:
    d = views.detail(task(sent=1))
    assert d["template"] == {"title": "Hi", "body": "<script>x"}
    assert d["skipSamples"] == ["row 3: no id"]
    assert d["conditions"][0]["reason"] == "Running" and d["channel"] == "webhook"
    assert d["counts"]["sent"] == 1 and d["rate"] == 50


def test_workers_by_heartbeat_age() -> None:
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    beats = [
        {"_id": "w-b", "lastSeen": now - timedelta(seconds=2.5), "lease": "r/c/1"},
        {"_id": "w-a", "lastSeen": now - timedelta(seconds=30), "lease": None},
    ]
    assert views.worker_rows(beats, now) == [
        {"id": "w-a", "age": 30.0, "lease": ""},
        {"id": "w-b", "age": 2.5, "lease": "r/c/1"},
    ]


@dataclass
class Event:
    type: str
    reason: str
    message: str
    last_timestamp: datetime


def test_events_newest_first_and_bounded() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    events = [Event("Normal", f"R{i}", f" m{i} ", t0 + timedelta(seconds=i)) for i in range(30)]
    rows = views.event_rows(events, limit=3)
    assert [r["reason"] for r in rows] == ["R29", "R28", "R27"]
    assert rows[0]["message"] == "m29" and rows[0]["time"] == "2026-01-01 00:00:29"


def test_recipient_answers() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    state = RecipientState("r", "<b>u</b>", "sent", 1, None, at, "w-1", "c", 0, None)
    shown = views.recipient_view(state, "delivery", "<b>u</b>", 2)
    assert shown["found"] and (shown["status"], shown["attempts"], shown["user"]) == (
        "sent",
        1,
        "<b>u</b>",
    )
    assert views.recipient_view(None, "done", "x", 2)["note"] == "not in the audience of run 2"
    assert "still being built" in views.recipient_view(None, "audience", "x", 2)["note"]
    assert views.recipient_view(None, None, "x", 9)["note"] == "run 9 is not in the store"


def test_history_is_a_window_per_run() -> None:
    h = views.History(seconds=10)
    s1 = views.summary(task(sent=10))
    for t in range(15):
        h.add(1000.0 + t, [s1])
    points = h.points(s1)
    assert len(points) == 11 and points[0][0] == 1004.0 and points[-1][1:] == [12.5, 10]
    h.add(1020.0, [])  # the task is gone: its line goes too
    assert h.points(s1) == []


MANIFEST = """
apiVersion: pushtask.dev/v1alpha1
kind: PushTask
metadata: {name: sale}
spec:
  workers: %s
  audience: {sources: [{kind: inline, users: [a, b]}]}
  message:
    channel: webhook
    webhook: {url: "http://127.0.0.1:9/"}
    template: {title: T, body: B}
"""


def test_a_valid_manifest_and_its_namespace() -> None:
    doc, ns = views.parse_manifest(MANIFEST % 2, "shop")
    assert ns == "shop" and doc["spec"]["workers"] == 2
    doc, ns = views.parse_manifest(
        MANIFEST.replace("{name: sale}", "{name: s, namespace: x}") % 1, "shop"
    )
    assert ns == "x"


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        (MANIFEST % 0, "spec.workers", "greater than or equal to 1"),
        (MANIFEST % "2\n  bogus: 1", "spec.bogus", "xtra"),
        ("kind: [", "yaml", "line 1"),
        ("- a\n- b", "yaml", "one PushTask"),
        (MANIFEST.replace("{name: sale}", "{}") % 1, "metadata.name", "required"),
        (MANIFEST.replace("kind: PushTask", "kind: Pod") % 1, "kind", "PushTask"),
    ],
)
def test_form_errors_name_the_field(text: str, field: str, words: str) -> None:
    with pytest.raises(views.FormError) as caught:
        views.parse_manifest(text, "shop")
    errors = {e["field"]: e["message"] for e in caught.value.errors}
    assert field in errors, errors
    assert words.lower() in errors[field].lower(), errors
