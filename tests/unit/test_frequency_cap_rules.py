"""The frequency cap's pure parts (issue 26, item 5): the model, which runs count, which
users of a chunk were sent to in the window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from pushtask import frequencycap, ledger
from pushtask.leases import DONE, LEASED
from pushtask.models import PushTaskSpec, RecentlySentSource, format_duration, parse_duration
from pushtask.planning import TaskRef, plan_run

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def cap(**extra: Any) -> dict[str, Any]:
    return {"kind": "recentlySent", "within": "24h", **extra}


def spec(exclude: list[dict[str, Any]], sources: list[dict[str, Any]] | None = None) -> dict:
    return {
        "audience": {
            "sources": sources or [{"kind": "inline", "users": ["a"]}],
            "exclude": exclude,
        },
        "message": {
            "channel": "webhook",
            "webhook": {"url": "http://sink.example/hook"},
            "template": {"title": "t", "body": "b"},
        },
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("24h", timedelta(hours=24)),
        ("90m", timedelta(minutes=90)),
        ("7d", timedelta(days=7)),
        ("1d12h", timedelta(days=1, hours=12)),
        ("1h30m15s", timedelta(hours=1, minutes=30, seconds=15)),
    ],
)
def test_a_window_reads_like_a_duration_and_writes_back_the_same(
    text: str, expected: timedelta
) -> None:
    assert parse_duration(text) == expected
    source = RecentlySentSource.model_validate(cap(within=text))
    assert source.within == expected
    dumped = source.model_dump(by_alias=True, mode="json")["within"]
    assert parse_duration(dumped) == expected
    assert format_duration(expected) == dumped


@pytest.mark.parametrize("text", ["", "h", "24", "1w", "-1h", "1.5h", "24 h x"])
def test_a_window_that_is_no_duration_is_refused(text: str) -> None:
    with pytest.raises(ValidationError, match="is not a duration"):
        RecentlySentSource.model_validate(cap(within=text))


@pytest.mark.parametrize("text", ["30s", "0m", "91d", "2200h"])
def test_a_window_outside_a_minute_to_ninety_days_is_refused(text: str) -> None:
    with pytest.raises(ValidationError, match="between 1m and 90d"):
        RecentlySentSource.model_validate(cap(within=text))


def test_recently_sent_is_an_exclusion_only() -> None:
    PushTaskSpec.model_validate(spec([cap()]))
    with pytest.raises(ValidationError, match="recentlySent is an exclusion only"):
        PushTaskSpec.model_validate(spec([], sources=[cap()]))


def test_a_selector_requirement_takes_values_exactly_when_its_operator_needs_them() -> None:
    good = [
        {"key": "team", "operator": "In", "values": ["growth"]},
        {"key": "pushtask.dev/tier", "operator": "Exists"},
    ]
    PushTaskSpec.model_validate(spec([cap(selector={"matchExpressions": good})]))
    for bad in (
        {"key": "team", "operator": "In"},
        {"key": "team", "operator": "Exists", "values": ["x"]},
    ):
        with pytest.raises(ValidationError, match="needs values"):
            PushTaskSpec.model_validate(spec([cap(selector={"matchExpressions": [bad]})]))
    with pytest.raises(ValidationError, match="a key is a label key"):
        PushTaskSpec.model_validate(spec([cap(selector={"matchLabels": {"bad key": "x"}})]))


LABELS = {"team": "growth", "tier": "promo"}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ({}, True),
        (None, True),
        ({"matchLabels": {"team": "growth"}}, True),
        ({"matchLabels": {"team": "growth", "tier": "promo"}}, True),
        ({"matchLabels": {"team": "ops"}}, False),
        ({"matchLabels": {"region": "eu"}}, False),
        ({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["promo", "x"]}]}, True),
        ({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["x"]}]}, False),
        ({"matchExpressions": [{"key": "region", "operator": "In", "values": ["eu"]}]}, False),
        ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["promo"]}]}, False),
        ({"matchExpressions": [{"key": "region", "operator": "NotIn", "values": ["eu"]}]}, True),
        ({"matchExpressions": [{"key": "team", "operator": "Exists"}]}, True),
        ({"matchExpressions": [{"key": "region", "operator": "Exists"}]}, False),
        ({"matchExpressions": [{"key": "region", "operator": "DoesNotExist"}]}, True),
        ({"matchExpressions": [{"key": "team", "operator": "DoesNotExist"}]}, False),
        (
            {
                "matchLabels": {"team": "growth"},
                "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["promo"]}],
            },
            False,
        ),
    ],
)
def test_label_selectors_match_as_kubernetes_matches_them(
    selector: dict[str, Any] | None, expected: bool
) -> None:
    assert frequencycap.matches(selector, LABELS) is expected


def test_a_run_without_labels_matches_only_an_empty_selector() -> None:
    assert frequencycap.matches({}, None)
    assert not frequencycap.matches({"matchLabels": {"team": "growth"}}, None)


def test_the_window_starts_within_before_the_run_was_created() -> None:
    run_doc = {"created": T0}
    assert frequencycap.window_start(run_doc, cap(within="24h")) == T0 - timedelta(hours=24)
    assert frequencycap.window_start(run_doc, cap(within="90m")) == T0 - timedelta(minutes=90)


def test_a_run_freezes_its_task_labels() -> None:
    validated = PushTaskSpec.model_validate(spec([cap()])).model_dump(
        by_alias=True, mode="json", exclude_none=True
    )
    plan = plan_run(TaskRef("ns", "t", "uid"), 1, validated, labels=LABELS, now=T0)
    assert plan.run_doc["task"]["labels"] == LABELS
    assert plan.run_doc["spec"]["audience"]["exclude"][0]["within"] == "1d"
    assert plan_run(TaskRef("ns", "t", "uid"), 1, validated, now=T0).run_doc["task"]["labels"] == {}


def chunk(**fields: Any) -> dict[str, Any]:
    return {"users": [f"u{i}" for i in range(10)], "hi": 0, "status": DONE, **fields}


def test_sent_since_reads_both_result_encodings_against_the_window() -> None:
    since = T0 - timedelta(hours=24)
    doc = chunk(
        hi=10,
        ok={
            "1_0": {"t": since - timedelta(seconds=1), "w": "w", "p": [0, 1]},  # just outside
            "1_2": {"t": since, "w": "w", "p": [2, 3]},  # at the edge: counts
        },
        res={
            "4": ledger.result_entry("sent", 2, T0, "w", None),  # sent on a retry
            "5": ledger.result_entry("unknown", 0, T0, "w", "in doubt"),  # perhaps delivered
            "6": ledger.result_entry("failed", 3, T0, "w", "HTTP 400"),  # never delivered
            "7": ledger.result_entry("sent", 1, since - timedelta(days=1), "w", None),  # old
            "8": ledger.result_entry("handed back", 0, T0, "w", None),  # to be sent again
        },
    )
    assert ledger.sent_since(doc, since) == ["u2", "u3", "u4", "u5"]


def test_sent_since_counts_what_a_present_holder_started_and_nothing_of_an_ended_one() -> None:
    since = T0 - timedelta(hours=1)
    results = {"ok": {"1_0": {"t": T0, "w": "w", "p": [0, 1]}}}
    at_work = chunk(hi=5, status=LEASED, **results)
    assert ledger.sent_since(at_work, since) == ["u0", "u1", "u2", "u3", "u4"]
    # The same positions in a chunk nobody holds (its run stopped long ago): no time to go by.
    left = chunk(hi=5, status=DONE, **results)
    assert ledger.sent_since(left, since) == ["u0", "u1"]


def test_sent_since_reads_naive_times_as_utc() -> None:
    naive = T0.replace(tzinfo=None)
    doc = chunk(ok={"1_0": {"t": naive, "w": "w", "p": [0]}})
    assert ledger.sent_since(doc, T0 - timedelta(minutes=1)) == ["u0"]
    assert ledger.sent_since(doc, T0 + timedelta(minutes=1)) == []
