"""The store and its fenced leases against a real MongoDB-wire server (FerretDB)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pymongo import ASCENDING, MongoClient

from pushtask.leases import EPOCH, Lease, LeaseLost, claim, now_utc, release, renew
from pushtask.planning import TaskRef, plan_run, shard_of
from pushtask.store import Outcome, Store

pytestmark = pytest.mark.integration
T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]


def run(coro: Awaitable[T]) -> T:
    async def wrapped() -> T:
        return await coro

    return asyncio.run(wrapped())


@pytest.fixture(params=["mongo_uri", "ferretdb_uri"], ids=["mongo-java-server", "ferretdb"])
def uri(request: pytest.FixtureRequest) -> str:
    """Each store behaviour is checked on both MongoDB-wire servers devstack runs."""
    return str(request.getfixturevalue(request.param))


@pytest.fixture
def db_name(uri: str) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    MongoClient(uri).drop_database(name)


def spec(users: list[Any], shards: int = 4, exclude: list[str] | None = None) -> dict[str, Any]:
    return {
        "audience": {
            "shards": shards,
            "sources": [{"kind": "inline", "users": users}],
            "exclude": [{"kind": "inline", "users": exclude}] if exclude else [],
        },
        "rate": {"perSecond": 100},
    }


async def new_store(uri: str, db: str) -> Store:
    store = Store.connect(uri, db)
    await store.ensure_indexes()
    return store


async def delivery_run(store: Store, shards: int, per_shard: int) -> str:
    """A run already past its audience stage: shards pending, recipients inserted."""
    plan = plan_run(TaskRef("ns", "race", uuid.uuid4().hex), 1, spec(["x"], shards), now=now_utc())
    run_id = plan.run["_id"]
    await store.create_run(
        {**plan.run, "stage": "delivery"}, [s for s in plan.splits if s["kind"] == "delivery"]
    )
    await store.splits.update_many({"run": run_id}, {"$set": {"status": "pending"}})
    docs = [
        {
            "run": run_id,
            "user": f"u{s}-{i}",
            "shard": s,
            "status": "pending",
            "token": 0,
            "due": EPOCH,
        }
        for s in range(shards)
        for i in range(per_shard)
    ]
    await store.recipients.insert_many(docs)
    return run_id


async def claim_shard(store: Store, run_id: str) -> Lease:
    """The lease of the first free delivery shard of the run (there must be one)."""
    got = await claim(store.splits, run_id=run_id, kind="delivery", owner="w", ttl=30)
    assert got is not None
    return got[1]


def test_indexes_are_idempotent_and_users_unique_per_run(uri: str, db_name: str) -> None:
    async def scenario() -> None:
        store = await new_store(uri, db_name)
        await store.ensure_indexes()  # a second start must not fail
        plan = plan_run(TaskRef("ns", "t", "uid-1234567"), 1, spec(["a", "b"]), now=now_utc())
        assert await store.create_run(plan.run, plan.splits) is True
        assert await store.create_run(plan.run, plan.splits) is False
        assert await store.splits.count_documents({"run": plan.run["_id"]}) == len(plan.splits)
        got = await claim(store.splits, run_id=plan.run["_id"], kind="audience", owner="w1", ttl=30)
        assert got is not None
        _, lease = got
        rows = [
            {"run": plan.run["_id"], "user": u, "shard": shard_of(u, 4)}
            for u in ["a", "b", "a", "c"]
        ]
        assert await store.add_recipients(lease, rows) == 3  # "a" twice: one recipient
        assert await store.add_recipients(lease, rows) == 0  # a re-read adds nobody
        split = await store.splits.find_one({"_id": lease.split_id})
        assert split is not None and split["counters"]["inserted"] == 3
        await store.close()

    run(scenario())


def test_claim_hands_each_split_to_one_holder(uri: str, db_name: str) -> None:
    async def scenario() -> None:
        store = await new_store(uri, db_name)
        run_id = await delivery_run(store, shards=3, per_shard=1)
        got = [
            await claim(store.splits, run_id=run_id, kind="delivery", owner=f"w{i}", ttl=30)
            for i in range(4)
        ]
        ids = [g[1].split_id for g in got if g]
        assert len(ids) == 3 and len(set(ids)) == 3
        assert got[3] is None  # nothing left to claim while the leases are fresh
        await store.close()

    run(scenario())


def test_expired_lease_is_reclaimed_and_old_holder_changes_nothing(uri: str, db_name: str) -> None:
    async def scenario() -> None:
        store = await new_store(uri, db_name)
        run_id = await delivery_run(store, shards=1, per_shard=10)
        got = await claim(store.splits, run_id=run_id, kind="delivery", owner="old", ttl=0.5)
        assert got is not None
        _, old = got
        moved = await store.take_batch(old, run_id, 0, limit=4)
        assert len(moved.recipients) == 4
        # The old holder stalls past its lease; a new holder takes the shard over.
        await asyncio.sleep(1.0)
        got = await claim(store.splits, run_id=run_id, kind="delivery", owner="new", ttl=30)
        assert got is not None
        _, new = got
        assert new.split_id == old.split_id and new.token == old.token + 1
        # A late result of the old holder, before the new one settled what it left in doubt:
        # refused, and the recipients stay inflight under the old token.
        with pytest.raises(LeaseLost):
            await store.record_outcomes(
                old, moved, [Outcome(d["_id"], "sent") for d in moved.recipients]
            )
        with pytest.raises(LeaseLost):
            await store.requeue(old, moved)
        inflight = await store.recipients.count_documents(
            {"run": run_id, "status": "inflight", "token": old.token}
        )
        assert inflight == 4
        assert await store.settle_in_doubt(new, run_id, 0, "AtMostOnce") == 4
        before = {d["_id"]: d for d in await store.recipients.find({"run": run_id}).to_list()}
        split_before = await store.splits.find_one({"_id": new.split_id})

        with pytest.raises(LeaseLost):
            await renew(store.splits, old)
        with pytest.raises(LeaseLost):
            await store.take_batch(old, run_id, 0, limit=4)
        with pytest.raises(LeaseLost):
            await store.record_outcomes(
                old, moved, [Outcome(d["_id"], "sent") for d in moved.recipients]
            )
        with pytest.raises(LeaseLost):
            await store.checkpoint(old, {"offset": 99})
        with pytest.raises(LeaseLost):
            await store.recount_shard(old, run_id, 0)
        assert await release(store.splits, old, done=True) is False

        after = {d["_id"]: d for d in await store.recipients.find({"run": run_id}).to_list()}
        assert after == before
        assert await store.splits.find_one({"_id": new.split_id}) == split_before
        statuses = sorted(d["status"] for d in after.values())
        assert statuses == ["pending"] * 6 + ["unknown"] * 4
        await store.close()

    run(scenario())


@pytest.mark.parametrize(
    ("guarantee", "expected"), [("AtMostOnce", "unknown"), ("AtLeastOnce", "pending")]
)
def test_in_doubt_recipients_follow_the_guarantee(
    uri: str, db_name: str, guarantee: Any, expected: str
) -> None:
    async def scenario() -> None:
        store = await new_store(uri, db_name)
        run_id = await delivery_run(store, shards=1, per_shard=3)
        _, first = await claim(
            store.splits, run_id=run_id, kind="delivery", owner="a", ttl=0.3
        ) or (None, None)
        assert first is not None
        await store.take_batch(first, run_id, 0, limit=3)
        await asyncio.sleep(0.5)
        got = await claim(store.splits, run_id=run_id, kind="delivery", owner="b", ttl=30)
        assert got is not None
        assert await store.settle_in_doubt(got[1], run_id, 0, guarantee) == 3
        assert {d["status"] async for d in store.recipients.find({"run": run_id})} == {expected}
        await store.close()

    run(scenario())


def test_finalize_audience_applies_exclusions_and_unblocks_delivery(uri: str, db_name: str) -> None:
    async def scenario() -> None:
        store = await new_store(uri, db_name)
        users = [f"u{i}" for i in range(50)]
        plan = plan_run(
            TaskRef("ns", "f", "uid-abcdefgh"),
            1,
            spec(users, 4, exclude=["u1", "u2"]),
            now=now_utc(),
        )
        run_id = plan.run["_id"]
        await store.create_run(plan.run, plan.splits)
        assert await store.finalize_audience(run_id) is False  # audience splits still open
        while got := await claim(store.splits, run_id=run_id, kind="audience", owner="w", ttl=30):
            doc, lease = got
            source = doc["source"]
            if source["exclude"]:
                await store.add_excluded(lease, run_id, ["u1", "u2"])
            else:
                rows = [{"run": run_id, "user": u, "shard": shard_of(u, 4)} for u in users]
                await store.add_recipients(lease, rows)
            assert await release(store.splits, lease, done=True)
        assert await store.finalize_audience(run_id) is True
        assert await store.finalize_audience(run_id) is True  # idempotent
        assert await store.recipients.count_documents({"run": run_id}) == 48
        shards = await store.splits.find({"run": run_id, "kind": "delivery"}).to_list()
        assert {s["status"] for s in shards} == {"pending"}
        assert sum(s["total"] for s in shards) == 48
        totals = await store.totals(run_id)
        assert totals.stage == "delivery" and totals.audience == 48 and totals.pending == 48
        await store.close()

    run(scenario())


@pytest.fixture
def race_db(mongo_uri: str) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    MongoClient(mongo_uri).drop_database(name)


def test_eight_processes_racing_with_random_kills_complete_each_split_once(
    mongo_uri: str, race_db: str
) -> None:
    # On mongo-java-server only: FerretDB's per-document updates make this take many minutes.
    db_name = race_db
    shards, per_shard, procs = 64, 30, 8
    setup = Store.connect(mongo_uri, db_name)
    run_id = run(_setup_race(setup, shards, per_shard))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def start(i: int) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "tests.integration.racer", mongo_uri, db_name, run_id, f"w{i}"]
        return subprocess.Popen(cmd, cwd=ROOT, env=env)

    workers = {i: start(i) for i in range(procs)}
    rng = random.Random(7)
    kills = 0
    deadline = time.monotonic() + 240
    try:
        # Kill a random worker every few tenths of a second and start it again, while work remains.
        while kills < 16 and any(p.poll() is None for p in workers.values()):
            time.sleep(rng.uniform(0.1, 0.5))
            i = rng.randrange(procs)
            if workers[i].poll() is None:
                workers[i].send_signal(signal.SIGKILL)
                workers[i].wait()
                kills += 1
                workers[i] = start(i)
        for p in workers.values():
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for p in workers.values():
            if p.poll() is None:
                p.kill()
    assert kills >= 8, "the race must have killed workers mid-run to mean anything"
    assert all(p.returncode == 0 for p in workers.values())

    client: MongoClient[dict[str, Any]] = MongoClient(mongo_uri)
    db = client[db_name]
    splits = list(db.splits.find({"run": run_id}))
    assert len(splits) == shards
    assert all(s["status"] == "done" and s["completions"] == 1 for s in splits)
    assert list(db.violations.find()) == []  # no recipient went inflight under two tokens
    statuses: dict[str, int] = {}
    for r in db.recipients.find({"run": run_id}, {"status": 1}):
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    assert set(statuses) <= {"sent", "unknown"}
    assert statuses.get("sent", 0) + statuses.get("unknown", 0) == shards * per_shard
    sent_ids = {r["_id"] for r in db.recipients.find({"run": run_id, "status": "sent"}, {"_id": 1})}
    audited = {a["_id"] for a in db.audit.find({}, {"_id": 1})}
    assert sent_ids <= audited
    totals = run(_totals(mongo_uri, db_name, run_id))
    assert (totals.sent, totals.unknown) == (statuses.get("sent", 0), statuses.get("unknown", 0))
    client.close()


async def _setup_race(store: Store, shards: int, per_shard: int) -> str:
    await store.ensure_indexes()
    run_id = await delivery_run(store, shards, per_shard)
    await store.close()
    return run_id


async def _totals(uri: str, db: str, run_id: str) -> Any:
    store = Store.connect(uri, db)
    try:
        return await store.totals(run_id)
    finally:
        await store.close()


def test_totals_before_and_after_delivery(uri: str, db_name: str) -> None:
    async def scenario() -> None:
        store = await new_store(uri, db_name)
        run_id = await delivery_run(store, shards=2, per_shard=5)
        await store.splits.update_many({"run": run_id}, {"$set": {"total": 5}})
        while got := await claim(store.splits, run_id=run_id, kind="delivery", owner="w", ttl=30):
            doc, lease = got
            batch = await store.take_batch(lease, run_id, doc["index"], limit=100)
            outcomes = [
                Outcome(r["_id"], "sent" if i % 5 else "failed", None if i % 5 else "HTTP 400")
                for i, r in enumerate(batch.recipients)
            ]
            await store.record_outcomes(lease, batch, outcomes)
            assert await store.shard_state(run_id, doc["index"]) == (False, None)
            assert await release(store.splits, lease, done=True)
        assert await store.finish_if_done(run_id)
        totals = await store.totals(run_id)
        assert (totals.stage, totals.sent, totals.failed, totals.attempted) == ("done", 8, 2, 10)
        assert totals.audience == 10 and totals.pending == 0 and totals.splits_open == 0
        await store.close()

    run(scenario())


def test_not_yet_due_recipients_are_not_taken(uri: str, db_name: str) -> None:
    async def scenario() -> None:
        store = await new_store(uri, db_name)
        run_id = await delivery_run(store, shards=1, per_shard=4)
        later = now_utc() + timedelta(hours=1)
        await store.recipients.update_many(
            {"run": run_id, "user": {"$in": ["u0-0", "u0-1"]}}, {"$set": {"due": later}}
        )
        lease = await claim_shard(store, run_id)
        batch = await store.take_batch(lease, run_id, 0, limit=10)
        assert sorted(r["user"] for r in batch.recipients) == ["u0-2", "u0-3"]
        await store.record_outcomes(
            lease, batch, [Outcome(r["_id"], "sent") for r in batch.recipients]
        )
        open_left, first_due = await store.shard_state(run_id, 0)
        assert (
            open_left and first_due is not None and abs((first_due - later).total_seconds()) < 0.01
        )
        await store.close()

    run(scenario())


def test_ensure_indexes_drops_the_superseded_take_index(uri: str, db_name: str) -> None:
    async def scenario() -> None:
        store = Store.connect(uri, db_name)
        old = [("run", ASCENDING), ("shard", ASCENDING), ("status", ASCENDING), ("due", ASCENDING)]
        await store.recipients.create_index(old, name="run_shard_status_due")
        await store.ensure_indexes()
        names = set(await store.recipients.index_information())
        assert "run_shard_status_due" not in names
        assert {"run_user_unique", "run_shard_status_due_id"} <= names
        await store.close()

    run(scenario())


def test_batches_are_taken_earliest_due_first(uri: str, db_name: str) -> None:
    async def scenario() -> None:
        store = await new_store(uri, db_name)
        run_id = await delivery_run(store, shards=1, per_shard=6)
        base = now_utc() - timedelta(hours=1)
        # Due times against insertion order; u0-4 and u0-5 share one across a batch boundary,
        # so the first batch must stop at u0-4 (the smaller _id) and leave u0-5.
        minutes = {"u0-0": 50, "u0-1": 40, "u0-2": 10, "u0-3": 30, "u0-4": 20, "u0-5": 20}
        for user, m in minutes.items():
            await store.recipients.update_one(
                {"run": run_id, "user": user}, {"$set": {"due": base + timedelta(minutes=m)}}
            )
        lease = await claim_shard(store, run_id)
        taken = []
        for _ in range(3):
            batch = await store.take_batch(lease, run_id, 0, limit=2)
            taken.append(sorted(r["user"] for r in batch.recipients))
        assert taken == [["u0-2", "u0-4"], ["u0-3", "u0-5"], ["u0-0", "u0-1"]]
        await store.close()

    run(scenario())


def test_outcomes_of_part_of_a_batch_and_requeue(uri: str, db_name: str) -> None:
    async def scenario() -> None:
        store = await new_store(uri, db_name)
        run_id = await delivery_run(store, shards=1, per_shard=6)
        lease = await claim_shard(store, run_id)
        batch = await store.take_batch(lease, run_id, 0, limit=6)
        ids = [r["_id"] for r in batch.recipients]
        # Results for two recipients only: the other four must stay in flight.
        counted = await store.record_outcomes(
            lease, batch, [Outcome(ids[0], "sent"), Outcome(ids[1], "failed", "HTTP 400")]
        )
        assert counted == {"sent": 1, "failed": 1}
        statuses = {d["_id"]: d["status"] async for d in store.recipients.find({"run": run_id})}
        assert [statuses[i] for i in ids] == ["sent", "failed"] + ["inflight"] * 4
        # A batch moved but never sent goes back to pending as it was.
        assert await store.requeue(lease, batch) == 4
        docs = await store.recipients.find({"_id": {"$in": ids[2:]}}).to_list()
        assert {(d["status"], d["attempts"]) for d in docs} == {("pending", 0)}
        again = await store.take_batch(lease, run_id, 0, limit=10)
        assert sorted(r["_id"] for r in again.recipients) == sorted(ids[2:])
        await store.close()

    run(scenario())
