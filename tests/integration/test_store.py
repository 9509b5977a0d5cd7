"""The chunked ledger's store operations and fenced leases against real MongoDB-wire servers.

Each behaviour runs on both servers devstack has (mongo-java-server and FerretDB); the
race runs on mongo-java-server only (FerretDB's per-document updates make it take minutes).
"""

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
from pymongo import MongoClient
from pymongo.collection import Collection

from pushtask import ledger
from pushtask.leases import LeaseLost, now_utc
from pushtask.planning import TaskRef, plan_run
from pushtask.records import Result
from pushtask.store import Store
from tests.support.ledger_steps import record, seal_all, stage_audience

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


def spec(
    sources: list[list[Any]], exclude: list[list[str]] | None = None, buckets: int = 4
) -> dict[str, Any]:
    return {
        "audience": {
            "shards": buckets,
            "sources": [{"kind": "inline", "users": users} for users in sources],
            "exclude": [{"kind": "inline", "users": users} for users in exclude or []],
        },
        "rate": {"perSecond": 100},
    }


async def new_store(uri: str, db: str) -> Store:
    store = Store.connect(uri, db)
    await store.ensure_indexes()
    return store


async def planned(
    store: Store, sources: list[list[Any]], exclude: list[list[str]] | None = None, **kw: Any
) -> str:
    chunk_size = kw.pop("chunk_size", ledger.CHUNK_SIZE)
    task = TaskRef("ns", "t", kw.pop("uid", uuid.uuid4().hex))
    plan = plan_run(
        task, kw.pop("run", 1), spec(sources, exclude, **kw), now=now_utc(), chunk_size=chunk_size
    )
    assert await store.create_run(plan.run_doc, plan.splits) is True
    return str(plan.run_doc["_id"])


async def sealed_run(store: Store, sources: list[list[Any]], **kw: Any) -> str:
    run_id = await planned(store, sources, **kw)
    await stage_audience(store, run_id)
    assert await store.advance(run_id) == "seal"
    await seal_all(store, run_id)
    assert await store.advance(run_id) == "delivery"
    return run_id


async def chunk_users(store: Store, run_id: str) -> list[str]:
    return [user async for user, _ in store.statuses(run_id)]


def test_indexes_and_run_creation_are_idempotent(uri: str, db_name: str) -> None:
    async def scenario() -> None:
        store = await new_store(uri, db_name)
        await store.ensure_indexes()  # a second start must not fail
        plan = plan_run(TaskRef("ns", "t", "uid-1234567"), 1, spec([["a", "b"]]), now=now_utc())
        assert await store.create_run(plan.run_doc, plan.splits) is True
        assert await store.create_run(plan.run_doc, plan.splits) is False
        totals = await store.totals(plan.run_doc["_id"])
        assert totals.splits_open == len(plan.splits) == 1
        await store.close()

    run(scenario())


@pytest.mark.parametrize("sizes", [True, False], ids=["split sizes", "staged by 0.1.0"])
def test_shards_are_planned_from_the_splits_own_bucket_counts(
    uri: str, db_name: str, sizes: bool
) -> None:
    """The audience splits count their staged rows per bucket, so planning the shards
    reads those few documents, not the staging; a run staged by 0.1.0 (no counts on its
    splits) is planned from the staging as before. Both give the same sizes."""

    async def scenario() -> None:
        store = await new_store(uri, db_name)
        users = [f"u{i:03d}" for i in range(300)]
        run_id = await planned(store, [users[:200], users[100:]], exclude=[users[:10]])
        await stage_audience(store, run_id, sizes=sizes)
        from_staging = await store._staged_sizes_from_staging(run_id)
        assert sum(from_staging.values()) == 400  # both sources, duplicates included
        assert await store._staged_sizes(run_id) == from_staging
        splits = store.db["splits"].find({"run": run_id, "kind": "audience"})
        assert all(
            ("sizes" in d) == sizes for d in await splits.to_list() if not d["source"]["exclude"]
        )
        await store.close()

    run(scenario())


def test_a_re_read_flush_is_refused_and_counted_once(uri: str, db_name: str) -> None:
    async def scenario() -> None:
        store = await new_store(uri, db_name)
        run_id = await planned(store, [["a", "b", "c"]])
        got = await store.claim_split(run_id, "audience", "old", 0.3)
        assert got is not None
        flush = ledger.Flush(4)
        for u in ("a", "b", "c"):
            flush.add(u, None, None)
        staging = flush.documents(run_id, got[1].unit_id, 0)
        # The old holder wrote part of its flush, then stalled before its checkpoint.
        await store.flush_staging(got[1], run_id, staging[:1], [], cursor=None, counters={})
        await asyncio.sleep(0.5)
        again = await store.claim_split(run_id, "audience", "new", 30)
        assert again is not None and again[1].token == got[1].token + 1
        # The reclaimer re-reads from the last checkpoint: the same ids, refused as duplicates.
        await store.flush_staging(
            again[1],
            run_id,
            staging,
            [(7, "bad row", "x")],
            cursor={"seq": 1},
            counters={"inserted": 3, "skipped": 1},
        )
        with pytest.raises(LeaseLost):  # the old holder writes nothing more
            await store.flush_staging(
                got[1], run_id, staging, [], cursor={"seq": 1}, counters={"inserted": 3}
            )
        assert await store.release(again[1], done=True)
        totals = await store.totals(run_id)
        assert (totals.inserted, totals.skipped) == (3, 1)
        assert await store.skip_samples(run_id) == ["bad row"]
        assert await store.advance(run_id) == "seal"
        await seal_all(store, run_id)
        assert sorted(await chunk_users(store, run_id)) == ["a", "b", "c"]
        await store.close()

    run(scenario())


def test_overlapping_sources_duplicates_and_exclusions_seal_to_unique_recipients(
    uri: str, db_name: str
) -> None:
    async def scenario() -> None:
        store = await new_store(uri, db_name)
        first = [f"u{i:03d}" for i in range(120)] + ["u001", "u002"]  # repeats in one source
        second = [{"id": f"u{i:03d}", "n": i} for i in range(100, 150)]  # overlaps the first
        run_id = await planned(
            store, [first, second], exclude=[["u005", "u149", "stranger"]], chunk_size=16
        )
        assert await store.advance(run_id) == "audience"  # audience splits still open
        await stage_audience(store, run_id)
        assert await store.advance(run_id) == "seal"
        assert await store.advance(run_id) == "seal"  # idempotent; shards not sealed yet
        await seal_all(store, run_id)
        assert await store.db["staging"].count_documents({"run": run_id}) > 0
        assert await store.advance(run_id) == "delivery"
        assert await store.db["staging"].count_documents({"run": run_id}) == 0  # served
        users = await chunk_users(store, run_id)
        expected = {f"u{i:03d}" for i in range(150)} - {"u005", "u149"}
        assert len(users) == len(set(users)) == len(expected)
        assert set(users) == expected
        totals = await store.totals(run_id)
        assert totals.total == totals.audience == totals.pending == len(expected)
        assert totals.inserted == len(first) + len(second)  # rows read, before dedup
        # Each seal split recorded its share: u005 and u149 left out ("stranger" was never
        # in the audience); u001, u002 repeated and u100..u119 in both sources, kept once.
        assert (totals.excluded, totals.duplicates) == (2, 2 + 20)
        assert totals.inserted == totals.total + totals.excluded + totals.duplicates
        # The first row of a user wins: u100 came plain from the first source.
        state = await store.recipient(run_id, "u100")
        assert state is not None and state.status == "pending"
        assert await store.recipient(run_id, "u005") is None  # excluded: not in the audience
        await store.close()

    run(scenario())


def test_a_sealer_killed_mid_seal_is_replaced_and_the_chunks_are_the_same(
    uri: str, db_name: str
) -> None:
    async def scenario() -> None:
        store = await new_store(uri, db_name)
        users = [f"u{i:04d}" for i in range(300)]
        run_id = await planned(store, [users], chunk_size=25, buckets=8)
        await stage_audience(store, run_id)
        assert await store.advance(run_id) == "seal"
        got = await store.claim_split(run_id, "seal", "dying", 0.3)
        assert got is not None
        doc, dying = got
        # What the dying sealer would write, of which it got three chunks out before the kill.
        seal_docs = await store.db["staging"].find({"run": run_id}).sort("_id", 1).to_list()
        recipients = ledger.seal(seal_docs).recipients
        expected = ledger.cut_chunks(run_id, doc["index"], recipients, size=25)
        await store.db["chunks"].insert_many(expected[:3])
        # One of those is already being delivered when the seal is taken over.
        chunk = await store.claim_chunk(run_id, "early", 30)
        assert chunk is not None
        await record(store, chunk[1], results=[Result(0, "sent")], hi=4)
        await asyncio.sleep(0.5)
        await seal_all(store, run_id)  # the replacement seals the whole shard again
        assert await store.advance(run_id) == "delivery"
        users_after = await chunk_users(store, run_id)
        assert sorted(users_after) == users  # every user once, none lost, none twice
        ids = [c["_id"] async for c in store.db["chunks"].find({"run": run_id}, {"_id": 1})]
        assert sorted(ids) == [c["_id"] for c in expected]
        kept = await store.recipient(run_id, expected[chunk[0]["n"]]["users"][0])
        assert kept is not None and kept.status == "sent"  # the early chunk was not replaced
        with pytest.raises(LeaseLost):
            await store.seal_shard(dying, run_id, doc, 25)
        await store.close()

    run(scenario())


def test_each_chunk_goes_to_one_holder_and_an_old_holder_changes_nothing(
    uri: str, db_name: str
) -> None:
    async def scenario() -> None:
        store = await new_store(uri, db_name)
        run_id = await sealed_run(store, [[f"u{i}" for i in range(30)]], chunk_size=10)
        got = [await store.claim_chunk(run_id, f"w{i}", 30) for i in range(4)]
        ids = [g[1].unit_id for g in got if g]
        assert len(ids) == 3 and len(set(ids)) == 3
        assert got[3] is None  # nothing left to claim while the leases are fresh
        assert all(len(g[0]["users"]) == 10 for g in got if g)  # the reply carries them

        store2 = await new_store(uri, db_name + "b")
        run2 = await sealed_run(store2, [[f"v{i}" for i in range(10)]], chunk_size=10)
        first = await store2.claim_chunk(run2, "old", 0.3)
        assert first is not None
        old = await record(
            store2, first[1], results=[Result(0, "sent"), Result(1, "failed", "HTTP 400")], hi=6
        )
        await asyncio.sleep(0.5)
        second = await store2.claim_chunk(run2, "new", 30)
        assert second is not None
        doc, new = second
        assert new.unit_id == old.unit_id and new.token == old.token + 1
        assert doc["hi"] == 6 and ledger.in_doubt(doc) == [2, 3, 4, 5]
        with pytest.raises(LeaseLost):
            await record(store2, old, results=[Result(2, "sent")], hi=8)
        with pytest.raises(LeaseLost):
            await store2.renew(old)
        await record(store2, new, doc["counters"], unknown=[2, 3, 4, 5], hi=6)
        states = {u: await store2.recipient(run2, u) for u in ("v0", "v1", "v2", "v7")}
        assert {u: s.status for u, s in states.items() if s} == {
            "v0": "sent",
            "v1": "failed",
            "v2": "unknown",
            "v7": "pending",
        }
        assert states["v1"] is not None and states["v1"].error == "HTTP 400"
        assert states["v0"] is not None and states["v0"].worker == "old"
        totals = await store2.totals(run2)
        assert (totals.sent, totals.failed, totals.unknown, totals.attempted) == (1, 1, 4, 2)
        await store.close()
        await store2.close()
        MongoClient(uri).drop_database(db_name + "b")

    run(scenario())


def test_a_chunk_done_finishes_the_run_and_totals_add_up(uri: str, db_name: str) -> None:
    async def scenario() -> None:
        store = await new_store(uri, db_name)
        run_id = await sealed_run(store, [[f"u{i}" for i in range(10)]], chunk_size=5)
        while got := await store.claim_chunk(run_id, "w", 30):
            doc, lease = got
            results = [
                Result(p, "sent" if p % 5 else "failed", None if p % 5 else "HTTP 400")
                for p in range(doc["size"])
            ]
            await record(store, lease, results=results, hi=doc["size"], end="done")
        assert await store.advance(run_id) == "done"
        totals = await store.totals(run_id)
        assert (totals.stage, totals.sent, totals.failed, totals.attempted) == ("done", 8, 2, 10)
        assert totals.audience == 10 and totals.pending == 0 and totals.splits_open == 0
        await store.close()

    run(scenario())


def test_a_chunk_resting_until_its_next_recipient_is_due_is_not_claimed(
    uri: str, db_name: str
) -> None:
    async def scenario() -> None:
        store = await new_store(uri, db_name)
        run_id = await sealed_run(store, [["a", "b"]])
        _, lease = await store.claim_chunk(run_id, "w", 30) or (None, None)
        assert lease is not None
        later = now_utc() + timedelta(hours=1)
        await record(store, lease, results=[Result(0, "sent")], hi=1, end="queued", due=later)
        assert await store.claim_chunk(run_id, "w", 30) is None
        soon = later - timedelta(seconds=1)
        assert await store.claim_chunk(run_id, "w", 30, now=soon) is None
        # Taken ahead when it falls due within `ahead` (its lanes wait for the due time).
        assert await store.claim_chunk(run_id, "w", 30, now=soon, ahead=2)
        await store.close()

    run(scenario())


def test_hand_backs_are_reopened_for_the_next_holder(uri: str, db_name: str) -> None:
    async def scenario() -> None:
        store = await new_store(uri, db_name)
        run_id = await sealed_run(store, [["a", "b", "c"]])
        _, lease = await store.claim_chunk(run_id, "w", 30) or (None, None)
        assert lease is not None
        await record(
            store,
            lease,
            results=[Result(0, "sent"), Result(1, "handed back", "handed back at shutdown", 2)],
            hi=2,
            end="queued",
        )
        state = await store.recipient(run_id, "b")
        assert state is not None and (state.status, state.attempts) == ("handed back", 2)
        again = await store.claim_chunk(run_id, "w2", 30)
        assert again is not None and ledger.handed_back(again[0]) == [1]
        await record(store, again[1], again[0]["counters"], reopen=[1], hi=3)
        reread = await store.claim_chunk(run_id, "w3", 30, now=now_utc() + timedelta(minutes=1))
        assert reread is not None and ledger.in_doubt(reread[0]) == [1, 2]
        await store.close()

    run(scenario())


def test_a_run_left_by_version_0_1_0_goes_on_after_an_upgrade(uri: str, db_name: str) -> None:
    """0.1.0 stored "pending" for a queued unit and for a hand-back: a claim still takes
    such a chunk, and its hand-back is sent again (a rolling upgrade loses nothing)."""

    async def scenario() -> None:
        store = await new_store(uri, db_name)
        run_id = await sealed_run(store, [["a", "b", "c"]])
        chunks: Collection[dict[str, Any]] = MongoClient(uri)[db_name]["chunks"]
        legacy = {"s": "pending", "n": 2, "t": now_utc(), "w": "old", "e": "handed back"}
        changed = chunks.update_many(
            {"run": run_id},
            {"$set": {"status": "pending", "hi": 2, "res.1": legacy, "ok.1_0": {"p": [0]}}},
        )
        assert changed.modified_count == 1
        got = await store.claim_chunk(run_id, "new", 30)
        assert got is not None and ledger.handed_back(got[0]) == [1]
        state = await store.recipient(run_id, "b")
        assert state is not None and (state.status, state.attempts) == ("handed back", 2)
        await record(store, got[1], got[0]["counters"], reopen=[1], hi=2, end="queued")
        after = chunks.find_one({"run": run_id}, {"status": 1})
        assert after is not None and after["status"] == "queued"
        await store.close()

    run(scenario())


def test_first_attempt_sends_are_recorded_as_one_list_a_write_and_a_retry_changes_nothing(
    uri: str, db_name: str
) -> None:
    async def scenario() -> None:
        store = await new_store(uri, db_name)
        run_id = await sealed_run(store, [["a", "b", "c", "d", "e"]])
        doc, lease = await store.claim_chunk(run_id, "w", 30) or (None, None)
        assert doc is not None and lease is not None
        results = [Result(0, "sent"), Result(1, "sent", None, 2), Result(2, "failed", "HTTP 400")]
        counters = ledger.tally({}, (r.status for r in results))
        for _ in range(2):  # the same write again, as after a reply lost in an outage
            lease = await store.write_chunk(lease, results=results, counters=counters, hi=4)
        lease = await store.write_chunk(
            lease, results=[Result(3, "sent")], counters=ledger.tally(counters, ["sent"]), hi=4
        )
        stored = MongoClient(uri)[db_name]["chunks"].find_one({"run": run_id})
        assert stored is not None
        assert sorted(p for b in stored["ok"].values() for p in b["p"]) == [0, 3]
        assert sorted(stored["res"]) == ["1", "2"]  # only what is not a first-attempt send
        got = {u: await store.recipient(run_id, u) for u in "abcde"}
        assert {u: (s.status, s.attempts) for u, s in got.items() if s} == {
            "a": ("sent", 1),
            "b": ("sent", 2),
            "c": ("failed", 1),
            "d": ("sent", 1),
            "e": ("pending", 0),
        }
        assert got["a"] is not None and got["a"].worker == "w" and got["a"].at is not None
        assert dict([s async for s in store.statuses(run_id)]) == {
            "a": "sent",
            "b": "sent",
            "c": "failed",
            "d": "sent",
            "e": "pending",
        }
        totals = await store.totals(run_id)
        assert (totals.sent, totals.failed, totals.attempted) == (3, 1, 4)
        await store.close()

    run(scenario())


def test_rate_beats_register_senders_and_read_the_allocated_rate(uri: str, db_name: str) -> None:
    async def scenario() -> None:
        store = await new_store(uri, db_name)
        await store.sync_clock()
        run_id = await sealed_run(store, [["a", "b"]])
        await store.set_control(run_id, ratePerSecond=300)
        later = store.now() + timedelta(seconds=10)
        senders, rate = await store.rate_beat(run_id, "w1", later)
        assert (senders, rate) == ({"w1": 1}, 300.0)
        senders, _ = await store.rate_beat(run_id, "w2", later)
        assert senders == {"w1": 1, "w2": 1}
        senders, _ = await store.rate_beat(run_id, "w1", later)
        assert senders == {"w1": 2, "w2": 1}  # each beat counts: the join barrier reads it
        # A registration that lapsed (its holder stopped beating) no longer counts...
        await store.rate_beat(run_id, "w3", store.now() - timedelta(seconds=1))
        # ...nor one that left.
        assert await store.rate_beat(run_id, "w2", None) == ({}, None)
        senders, _ = await store.rate_beat(run_id, "w1", later)
        assert set(senders) == {"w1"}
        await store.set_control(run_id, ratePerSecond=None)
        assert (await store.rate_beat(run_id, "w1", later))[1] is None
        await store.close()

    run(scenario())


def test_the_store_clock_is_read_from_the_server(uri: str, db_name: str) -> None:
    async def scenario() -> None:
        store = await new_store(uri, db_name)
        assert not store.clock.synced
        server_time = await store._server_time()
        assert server_time is not None  # hello's localTime, or a $currentDate stamp
        await store.sync_clock()
        assert store.clock.synced
        # The server runs on this machine: its clock is this one's, to within a second.
        assert abs((store.now() - now_utc()).total_seconds()) < 1.0
        read_at = store._clock_read_at
        await store.sync_clock(max_age=60)  # read a moment ago: not read again
        assert store._clock_read_at == read_at
        await store.close()

    run(scenario())


def test_only_the_newest_runs_of_a_task_are_kept(uri: str, db_name: str) -> None:
    async def scenario() -> None:
        store = await new_store(uri, db_name)
        runs = []
        for n in range(1, 5):
            run_id = await sealed_run(store, [["a", "b"]], uid="uid-same-task", run=n)
            runs.append(run_id)
            await asyncio.sleep(0.01)  # distinct creation times
        other = await sealed_run(store, [["a"]], uid="uid-other-task")
        assert await store.prune_runs("uid-same-task", keep=3) == [runs[0]]
        assert await store.get_run(runs[0]) is None
        assert await store.recipient(runs[0], "a") is None  # its ledger went with it
        assert (await store.totals(runs[0])).splits_open == 0
        assert await store.recipient(runs[1], "a") is not None
        assert sorted(await store.delete_task_runs("uid-same-task")) == sorted(runs[1:])
        assert await store.recipient(other, "a") is not None  # another task is left alone
        await store.close()

    run(scenario())


@pytest.fixture
def race_db(mongo_uri: str) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    MongoClient(mongo_uri).drop_database(name)


def test_eight_processes_racing_with_random_kills_send_each_recipient_at_most_once(
    mongo_uri: str, race_db: str
) -> None:
    """Real ChunkDelivery in eight processes killed at random: an audit collection keyed by
    (chunk, position) records each send, so a duplicate key would be a recipient sent twice."""
    chunks, per_chunk, procs = 64, 30, 8
    setup = Store.connect(mongo_uri, race_db)
    users = [f"u{i:05d}" for i in range(chunks * per_chunk)]

    async def prepare() -> str:
        await setup.ensure_indexes()
        run_id = await sealed_run(setup, [users[:5000]], chunk_size=per_chunk, buckets=1)
        await setup.close()
        return run_id

    run_id = run(prepare())
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def start(i: int) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "tests.integration.racer", mongo_uri, race_db, run_id, f"w{i}"]
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
    db = client[race_db]
    assert list(db.violations.find()) == []  # no recipient was sent twice
    done = list(db.chunks.find({"run": run_id}, {"status": 1, "completions": 1}))
    assert len(done) == chunks
    assert all(c["status"] == "done" and c["completions"] == 1 for c in done)
    statuses = run(_statuses(Store.connect(mongo_uri, race_db), run_id))
    assert len(statuses) == chunks * per_chunk
    assert set(statuses.values()) <= {"sent", "unknown"}
    sent = {u for u, s in statuses.items() if s == "sent"}
    audited = {a["user"] for a in db.audit.find({}, {"user": 1})}
    assert sent <= audited  # every "sent" was really sent
    unknown = [u for u, s in statuses.items() if s == "unknown"]
    # Each kill leaves at most one window (the racer's: 4) in doubt.
    assert len(unknown) <= kills * 4
    totals = run(_totals(Store.connect(mongo_uri, race_db), run_id))
    assert (totals.sent, totals.unknown) == (len(sent), len(unknown))
    client.close()


async def _statuses(store: Store, run_id: str) -> dict[str, str]:
    try:
        return {u: s async for u, s in store.statuses(run_id)}
    finally:
        await store.close()


async def _totals(store: Store, run_id: str) -> Any:
    try:
        return await store.totals(run_id)
    finally:
        await store.close()


def test_failure_samples_name_the_user_and_the_error(uri: str, db_name: str) -> None:
    """What the console shows beside the counts: a few failed recipients with their error."""

    async def scenario() -> None:
        store = await new_store(uri, db_name)
        run_id = await sealed_run(store, [[f"u{i}" for i in range(10)]], chunk_size=5)
        assert await store.failure_samples(run_id) == []
        while got := await store.claim_chunk(run_id, "w", 30):
            doc, lease = got
            results = [
                Result(p, "failed", f"HTTP 400 for {doc['users'][p]}")
                if p in (1, 3)
                else Result(p, "sent")
                for p in range(doc["size"])
            ]
            await record(store, lease, results=results, hi=doc["size"], end="done")
        samples = await store.failure_samples(run_id)
        assert len(samples) == 4
        assert all(error == f"HTTP 400 for {user}" for user, error in samples)
        assert len(await store.failure_samples(run_id, limit=3)) == 3
        await store.close()

    run(scenario())
