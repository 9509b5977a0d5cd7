"""A frequency cap across campaigns (issue 26, item 5): real worker processes, a real
MongoDB-wire server, one webhook sink per campaign counting what each user received.

`{kind: recentlySent, within, selector}` leaves out whoever the runs of the matching tasks
sent anything to in the window, read from those runs' ledgers. What a careful operator
would try: overlapping campaigns of several tasks (only the selected ones cap), the window
edge, a campaign stopped midway (what it sent caps, what it did not send does not), and
the retention that prunes a run (a pruned run caps no more: documented).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from pushtask.store import Store
from tests.support.sink import SinkThread
from tests.support.workers import (
    WorkerProcs,
    create_run,
    recipient_statuses,
    set_control,
    spec_for,
    totals,
)

pytestmark = pytest.mark.integration

USERS = [f"u{i:03d}" for i in range(200)]
GROWTH = {"team": "growth"}


@pytest.fixture
def sinks() -> Iterator[list[SinkThread]]:
    opened: list[SinkThread] = []
    yield opened
    for s in opened:
        s.__exit__(None, None, None)


def new_sink(sinks: list[SinkThread]) -> SinkThread:
    s = SinkThread(secret="s3cret")
    s.__enter__()
    sinks.append(s)
    return s


def campaign(
    uri: str,
    tmp: Path,
    sink: SinkThread,
    users: list[str],
    *,
    labels: dict[str, str] | None = None,
    exclude: list[dict[str, Any]] | None = None,
    name: str = "t",
) -> tuple[str, Any]:
    """One run from creation to its end, by two worker processes."""
    spec = spec_for(users, url=sink.url, exclude=exclude, shards=4, workers=2)
    run_id, task = create_run(uri, spec, name, labels=labels)
    with WorkerProcs(uri, run_id, tmp / name) as workers:
        workers.start_many(2)
        assert set(workers.wait(120).values()) == {0}, workers.logs()
    return run_id, task


def received(sink: SinkThread) -> set[str]:
    counts = sink.delivered_counts()
    assert all(n == 1 for n in counts.values()), "a campaign sent someone twice"
    return {u for u in counts if u}


def cap(within: str = "24h", **selector: Any) -> dict[str, Any]:
    return {"kind": "recentlySent", "within": within, "selector": selector}


def test_overlapping_campaigns_cap_only_what_the_selector_names(
    uri: str, sinks: list[SinkThread], tmp_path: Path
) -> None:
    growth, ops = new_sink(sinks), new_sink(sinks)
    campaign(uri, tmp_path, growth, USERS[:100], labels=GROWTH, name="growth")
    campaign(uri, tmp_path, ops, USERS[50:150], labels={"team": "ops"}, name="ops")
    assert received(growth) == set(USERS[:100]) and received(ops) == set(USERS[50:150])

    capped = new_sink(sinks)
    run_id, _ = campaign(
        uri, tmp_path, capped, USERS, exclude=[cap(matchLabels=GROWTH)], name="capped"
    )
    assert received(capped) == set(USERS[100:]), "only the growth campaign's 100 are capped"
    t = totals(uri, run_id)
    assert (t.stage, t.total, t.sent, t.excluded, t.duplicates) == ("done", 100, 100, 100, 0), t

    # An empty selector: every task of the namespace, the capped campaign's own run too.
    everyone = new_sink(sinks)
    run_id, _ = campaign(uri, tmp_path, everyone, USERS, exclude=[cap()], name="everyone")
    assert received(everyone) == set(), "all 200 were sent something within the day"
    t = totals(uri, run_id)
    assert (t.stage, t.total, t.excluded) == ("done", 0, 200), t
    print(
        "frequency cap, overlapping: growth 100, ops 100 (50 shared), capped by growth: "
        f"{len(received(capped))} sent, capped by all: {len(received(everyone))} sent"
    )


def shift_back(uri: str, run_id: str, by: timedelta) -> int:
    """Move every result time of a run (and its end) `by` into the past: the run as it
    would stand after that much time. Returns the results moved."""
    client: MongoClient[dict[str, Any]] = MongoClient(uri, serverSelectionTimeoutMS=5000)
    moved = 0
    try:
        db = client.get_default_database()
        for doc in db["chunks"].find({"run": run_id}, {"ok": 1, "res": 1}):
            sets: dict[str, Any] = {}
            for key, batch in (doc.get("ok") or {}).items():
                sets[f"ok.{key}.t"] = batch["t"] - by
                moved += len(batch["p"])
            for key, entry in (doc.get("res") or {}).items():
                sets[f"res.{key}.t"] = entry["t"] - by
                moved += 1
            if sets:
                db["chunks"].update_one({"_id": doc["_id"]}, {"$set": sets})
        run = db["runs"].find_one({"_id": run_id}, {"doneAt": 1}) or {}
        db["runs"].update_one({"_id": run_id}, {"$set": {"doneAt": run["doneAt"] - by}})
    finally:
        client.close()
    return moved


def test_a_send_just_outside_the_window_does_not_cap_and_just_inside_does(
    uri: str, sinks: list[SinkThread], tmp_path: Path
) -> None:
    first = new_sink(sinks)
    run_id, _ = campaign(uri, tmp_path, first, USERS[:100], labels=GROWTH, name="first")
    assert shift_back(uri, run_id, timedelta(hours=25)) == 100

    outside = new_sink(sinks)
    campaign(uri, tmp_path, outside, USERS, exclude=[cap("24h", matchLabels=GROWTH)], name="o")
    assert received(outside) == set(USERS), "sent 25 h ago: outside a 24 h cap"

    inside = new_sink(sinks)
    campaign(uri, tmp_path, inside, USERS, exclude=[cap("26h", matchLabels=GROWTH)], name="i")
    assert received(inside) == set(USERS[100:]), "sent 25 h ago: inside a 26 h cap"


def test_a_campaign_stopped_midway_caps_what_it_sent_and_nothing_else(
    uri: str, sinks: list[SinkThread], tmp_path: Path
) -> None:
    slow = new_sink(sinks)
    spec = spec_for(USERS, url=slow.url, shards=4, workers=1, rate=40)
    run_id, _ = create_run(uri, spec, "slow", labels=GROWTH)
    with WorkerProcs(uri, run_id, tmp_path / "slow") as workers:
        workers.start_many(1)
        deadline = time.monotonic() + 60
        while len(slow.requests) < 40:
            assert time.monotonic() < deadline, workers.logs()
            time.sleep(0.1)
        set_control(uri, run_id, state="Stopped", cancelInflight=False)
        assert set(workers.wait(60).values()) == {0}, workers.logs()
    statuses = recipient_statuses(uri, run_id)
    sent = {u for u, s in statuses.items() if s in ("sent", "unknown")}
    assert 40 <= len(sent) < len(USERS), statuses
    assert received(slow) == sent, "the ledger and the sink agree on who was sent to"
    t = totals(uri, run_id)
    assert t.stage != "done" and t.pending > 0, t  # the stopped run never ended

    capped = new_sink(sinks)
    campaign(uri, tmp_path, capped, USERS, exclude=[cap(matchLabels=GROWTH)], name="capped")
    assert received(capped) == set(USERS) - sent
    assert not received(capped) & received(slow), "nobody got both campaigns"
    print(f"frequency cap, a run stopped midway: {len(sent)} sent by it, capped; rest sent")


def test_a_pruned_run_caps_no_more(uri: str, sinks: list[SinkThread], tmp_path: Path) -> None:
    """Retention deletes a run's ledger (PUSHTASK_RUN_RETENTION, and a deleted task's runs):
    what it sent can no longer cap. docs/operations.md says so."""
    first = new_sink(sinks)
    _, task = campaign(uri, tmp_path, first, USERS[:100], labels=GROWTH, name="first")

    async def prune() -> list[str]:
        store = Store.connect(uri)
        try:
            return await store.prune_runs(task.uid, keep=0)
        finally:
            await store.close()

    assert len(asyncio.run(prune())) == 1
    after = new_sink(sinks)
    campaign(uri, tmp_path, after, USERS, exclude=[cap(matchLabels=GROWTH)], name="after")
    assert received(after) == set(USERS)
