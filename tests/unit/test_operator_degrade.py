"""Tiers degraded live: the ConfigMap's entries, and what a change does to the tasks."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from pushtask_operator import handlers
from pushtask_operator.degrade import DegradeView, effective, parse
from pushtask_operator.settings import DEFAULT_TIERS, OperatorSettings


def test_entries_name_a_tier_and_a_mode() -> None:
    live, problems = parse({"low": "graceful", "normal": " Immediate "}, DEFAULT_TIERS)
    assert live == {"low": "graceful", "normal": "immediate"} and problems == []


def test_off_lifts_what_the_chart_degrades() -> None:
    live, _ = parse({"low": "off"}, DEFAULT_TIERS)
    assert live == {"low": None}
    assert effective({"low": "graceful", "normal": "immediate"}, live) == {"normal": "immediate"}
    assert effective({"low": "graceful"}, {}) == {"low": "graceful"}


def test_a_bad_entry_is_named_and_ignored_the_others_apply() -> None:
    live, problems = parse({"lo": "graceful", "normal": "later", "low": "immediate"}, DEFAULT_TIERS)
    assert live == {"low": "immediate"}
    assert problems == [
        "unknown tier 'lo'; tiers are critical, low, normal",
        "tier 'normal': 'later' is not one of graceful, immediate, off",
    ]


def runtime(**settings: Any) -> handlers.Runtime:
    return handlers.Runtime(
        settings=OperatorSettings(**settings),
        store=cast(Any, None),
        kube=cast(Any, None),
        degrade_base=dict(settings.get("degraded_tiers") or {}),
    )


def test_a_change_wakes_every_task_at_once() -> None:
    async def go() -> None:
        rt = runtime()
        a, b = handlers.TaskState(), handlers.TaskState()
        rt.tasks.update({"ns/a": a, "ns/b": b})
        meta = {"name": "pt-degrade", "namespace": "ops", "uid": "u1"}
        handlers.apply_degrade(rt, DegradeView({"low": "immediate"}, meta))
        assert rt.settings.degrade_for(100) == "immediate" and rt.settings.degrade_for(500) is None
        assert a.due_now and b.due_now and a.rearm.is_set() and b.rearm.is_set()
        # The same tiers again (another key edited, say): nobody is woken.
        a.due_now = b.due_now = False
        a.rearm.clear()
        ignored = handlers.apply_degrade(rt, DegradeView({"low": "immediate", "x": "off"}, meta))
        assert not a.due_now and not a.rearm.is_set()
        assert ignored == ["unknown tier 'x'; tiers are critical, low, normal"]
        # The ConfigMap deleted: back to what the chart says.
        handlers.apply_degrade(rt, DegradeView({}, None))
        assert rt.settings.degraded_tiers == {} and a.due_now

    asyncio.run(go())


def test_the_chart_default_holds_until_the_configmap_overrides_it() -> None:
    rt = runtime(degraded_tiers={"low": "graceful"})
    handlers.apply_degrade(rt, DegradeView({}, None))
    assert rt.settings.degrade_for(0) == "graceful"
    handlers.apply_degrade(rt, DegradeView({"low": "off"}, {"name": "d", "namespace": "n"}))
    assert rt.settings.degrade_for(0) is None
