"""The MongoDB store shared by the operator and the workers.

Only what a plain replica set and FerretDB both serve: find-and-modify, bulk writes,
unique indexes, `$inc` and simple aggregation. Every write a worker makes on behalf of
a split is filtered by that split's fencing token (see leases.py), so a worker that lost
its lease changes nothing.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from pymongo import ASCENDING, AsyncMongoClient, InsertOne, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError
from pymongo.uri_parser import parse_uri

from pushtask.leases import EPOCH, Lease, LeaseLost, fenced_update, now_utc, renew

DEFAULT_DB = "pushtask"
Guarantee = Literal["AtMostOnce", "AtLeastOnce"]
FINAL_STATUSES = ("sent", "failed", "unknown")
COUNTER_FIELDS = ("inserted", "skipped", "sent", "failed", "unknown", "attempted")
DUPLICATE_KEY = 11000
# Delivery takes recipients in this order; the index serves it after the equality fields
# (run, shard, status), so a batch costs its own size, not its shard's.
TAKE_ORDER = [("due", ASCENDING), ("_id", ASCENDING)]
TAKE_INDEX = [("run", ASCENDING), ("shard", ASCENDING), ("status", ASCENDING), *TAKE_ORDER]


@dataclass(frozen=True)
class Outcome:
    """The result of one recipient's sends: final (sent, failed), or pending again when
    its retries were cut short by the worker shutting down (a later holder retries it)."""

    recipient_id: Any
    status: Literal["sent", "failed", "pending"]
    error: str | None = None


@dataclass
class Batch:
    """Recipients one take_batch moved to inflight, under one token and one tag."""

    run_id: str
    shard: int
    id: str
    token: int
    recipients: list[dict[str, Any]]

    def filter(self) -> dict[str, Any]:
        # run/shard/status lead, so MongoDB answers it from TAKE_INDEX.
        return {
            "run": self.run_id,
            "shard": self.shard,
            "status": "inflight",
            "batch": self.id,
            "token": self.token,
        }


@dataclass(frozen=True)
class RunTotals:
    """Counters of a run summed over its splits (what status.counts is made of)."""

    stage: str
    inserted: int
    skipped: int
    sent: int
    failed: int
    unknown: int
    attempted: int
    total: int  # recipients after exclusions, known once the audience is finalized
    splits_open: int

    @property
    def audience(self) -> int:
        recipients = self.total if self.stage != "audience" else self.inserted
        return recipients + self.skipped

    @property
    def pending(self) -> int:
        return max(0, self.audience - self.skipped - self.sent - self.failed - self.unknown)


def _inserted_count(error: BulkWriteError, attempted: int) -> int:
    """Inserted documents of an unordered bulk insert whose only errors are duplicates.

    Counted as attempted minus failed: servers disagree on `nInserted` here
    (mongo-java-server counts the failed documents too).
    """
    details = error.details
    errors = details.get("writeErrors", [])
    if any(e.get("code") != DUPLICATE_KEY for e in errors) or details.get("writeConcernErrors"):
        raise error
    return attempted - len(errors)


class Store:
    def __init__(self, client: AsyncMongoClient[dict[str, Any]], db_name: str = DEFAULT_DB) -> None:
        self.client = client
        self.db: AsyncDatabase[dict[str, Any]] = client[db_name]
        self.runs: AsyncCollection[dict[str, Any]] = self.db["runs"]
        self.splits: AsyncCollection[dict[str, Any]] = self.db["splits"]
        self.recipients: AsyncCollection[dict[str, Any]] = self.db["recipients"]
        self.skips: AsyncCollection[dict[str, Any]] = self.db["skips"]
        self.excluded: AsyncCollection[dict[str, Any]] = self.db["excluded"]
        self.workers: AsyncCollection[dict[str, Any]] = self.db["workers"]

    @classmethod
    def connect(cls, uri: str, db_name: str | None = None, **client_options: Any) -> Store:
        """A store on `uri`; the database is `db_name`, else the URI's, else `pushtask`."""
        name = db_name or parse_uri(uri).get("database") or DEFAULT_DB
        options: dict[str, Any] = {"tz_aware": True, "serverSelectionTimeoutMS": 5000}
        options.update(client_options)
        return cls(AsyncMongoClient(uri, **options), name)

    @staticmethod
    async def _exists(coll: AsyncCollection[dict[str, Any]], query: dict[str, Any]) -> bool:
        # find_one stops at the first match; count_documents(limit=1) scans on some servers.
        return await coll.find_one(query, {"_id": 1}) is not None

    async def close(self) -> None:
        await self.client.close()

    async def ensure_indexes(self) -> None:
        """Create every index the core path relies on; safe to call on every start."""
        await self.recipients.create_index(
            [("run", ASCENDING), ("user", ASCENDING)], unique=True, name="run_user_unique"
        )
        await self.recipients.create_index(TAKE_INDEX, name="run_shard_status_due_id")
        # Superseded by run_shard_status_due_id (it could not serve the take's order): a store
        # set up by an earlier version would otherwise keep paying for it on every write.
        if "run_shard_status_due" in await self.recipients.index_information():
            await self.recipients.drop_index("run_shard_status_due")
        await self.splits.create_index(
            [
                ("run", ASCENDING),
                ("kind", ASCENDING),
                ("status", ASCENDING),
                ("leaseUntil", ASCENDING),
            ],
            name="split_claim",
        )
        await self.excluded.create_index(
            [("run", ASCENDING), ("user", ASCENDING)], unique=True, name="run_user_unique"
        )
        await self.skips.create_index([("run", ASCENDING)], name="run")
        await self.workers.create_index(
            [("run", ASCENDING), ("lastSeen", ASCENDING)], name="run_seen"
        )

    # -- runs -------------------------------------------------------------------------

    async def create_run(self, run: dict[str, Any], splits: Sequence[dict[str, Any]]) -> bool:
        """Insert a planned run; True if it is new. Safe to repeat after a crash midway."""
        created = True
        try:
            await self.runs.insert_one(run)
        except DuplicateKeyError:
            created = False
        await self.add_splits(splits)
        return created

    async def add_splits(self, splits: Sequence[dict[str, Any]]) -> int:
        """Insert splits that do not exist yet (also used to expand a planning split)."""
        if not splits:
            return 0
        try:
            result = await self.splits.insert_many(list(splits), ordered=False)
            return len(result.inserted_ids)
        except BulkWriteError as error:
            return _inserted_count(error, len(splits))

    async def get_run(
        self, run_id: str, fields: Sequence[str] | None = None
    ) -> dict[str, Any] | None:
        """The run document, or only `fields` of it (the frozen spec can be megabytes)."""
        projection = dict.fromkeys(fields, 1) if fields is not None else None
        return await self.runs.find_one({"_id": run_id}, projection)

    async def set_control(self, run_id: str, **control: Any) -> None:
        """Operator → workers: desired state, live rate, cancellation of in-flight sends."""
        await self.runs.update_one(
            {"_id": run_id}, {"$set": {f"control.{k}": v for k, v in control.items()}}
        )

    async def fail_run(self, run_id: str, reason: str, now: datetime | None = None) -> bool:
        """Record the first failure reason of a run; later ones are ignored."""
        result = await self.runs.update_one(
            {"_id": run_id, "failure": None},
            {"$set": {"failure": {"reason": reason, "at": now or now_utc()}}},
        )
        return result.modified_count == 1

    async def delete_run(self, run_id: str) -> None:
        """Drop every document of a run (cleanup on request, never in the core path)."""
        for coll in (self.recipients, self.skips, self.excluded, self.splits, self.workers):
            await coll.delete_many({"run": run_id})
        await self.runs.delete_one({"_id": run_id})

    async def totals(self, run_id: str) -> RunTotals:
        """Sum the split counters of a run.

        Summed here rather than with one `$group` of several accumulators: FerretDB 1.24
        returns 0 for every accumulator after the first. A run has at most a few thousand
        splits, so this stays cheap.
        """
        run = await self.runs.find_one({"_id": run_id}, {"stage": 1})
        sums: dict[str, int] = defaultdict(int)
        async for split in self.splits.find(
            {"run": run_id}, {"status": 1, "total": 1, "counters": 1}
        ):
            counters = split.get("counters") or {}
            for f in COUNTER_FIELDS:
                sums[f] += int(counters.get(f) or 0)
            sums["total"] += int(split.get("total") or 0)
            sums["open"] += split["status"] != "done"
        return RunTotals(
            stage=(run or {}).get("stage", "audience"),
            total=sums["total"],
            splits_open=sums["open"],
            **{f: sums[f] for f in COUNTER_FIELDS},
        )

    async def skip_samples(self, run_id: str, limit: int = 5) -> list[str]:
        cursor = self.skips.find({"run": run_id}, {"reason": 1}).limit(limit)
        return [doc["reason"] async for doc in cursor]

    # -- audience ---------------------------------------------------------------------

    async def add_recipients(self, lease: Lease, recipients: Sequence[dict[str, Any]]) -> int:
        """Insert recipients (run, user, shard, attrs, due); duplicates are skipped.

        The lease is renewed first, so a holder that lost it adds nobody (a late insert
        could land after the audience was finalized). Returns how many were new and
        counts them on the audience split (fenced).
        """
        inserted = 0
        if recipients:
            await renew(self.splits, lease)
            docs = [
                {"status": "pending", "token": 0, "attempts": 0, "due": EPOCH, **r}
                for r in recipients
            ]
            try:
                result = await self.recipients.insert_many(docs, ordered=False)
                inserted = len(result.inserted_ids)
            except BulkWriteError as error:
                inserted = _inserted_count(error, len(docs))
        await fenced_update(self.splits, lease, {"$inc": {"counters.inserted": inserted}})
        return inserted

    async def add_excluded(self, lease: Lease, run_id: str, users: Iterable[str]) -> int:
        """Remember users of an exclusion source (renewing first, as add_recipients does)."""
        docs = [InsertOne({"run": run_id, "user": u}) for u in users]
        if not docs:
            return 0
        await renew(self.splits, lease)
        try:
            return (await self.excluded.bulk_write(docs, ordered=False)).inserted_count
        except BulkWriteError as error:
            return _inserted_count(error, len(docs))

    async def add_skips(
        self, lease: Lease, run_id: str, skips: Sequence[tuple[int, str, str]]
    ) -> int:
        """Record bad rows as (row position, reason, row text); re-reads do not recount."""
        docs = [
            InsertOne(
                {
                    "_id": f"{lease.split_id}/{pos}",
                    "run": run_id,
                    "reason": reason,
                    "row": row[:500],
                }
            )
            for pos, reason, row in skips
        ]
        inserted = 0
        if docs:
            try:
                inserted = (await self.skips.bulk_write(docs, ordered=False)).inserted_count
            except BulkWriteError as error:
                inserted = _inserted_count(error, len(docs))
        await fenced_update(self.splits, lease, {"$inc": {"counters.skipped": inserted}})
        return inserted

    async def checkpoint(self, lease: Lease, cursor: Any) -> None:
        """Remember how far an audience split was read, so a reclaimer resumes there."""
        await fenced_update(self.splits, lease, {"$set": {"cursor": cursor}})

    async def finalize_audience(self, run_id: str, now: datetime | None = None) -> bool:
        """Once every audience split is done: apply exclusions, size the shards, unblock them.

        Idempotent, so any worker (or the operator) may run it, even several at once.
        Returns True when the run is past its audience stage.
        """
        run = await self.runs.find_one({"_id": run_id}, {"stage": 1})
        if run is None:
            return False
        if run.get("stage") != "audience":
            return True
        if await self._exists(
            self.splits, {"run": run_id, "kind": "audience", "status": {"$ne": "done"}}
        ):
            return False
        batch: list[str] = []
        async for doc in self.excluded.find({"run": run_id}, {"user": 1}):
            batch.append(doc["user"])
            if len(batch) >= 1000:
                await self.recipients.delete_many({"run": run_id, "user": {"$in": batch}})
                batch = []
        if batch:
            await self.recipients.delete_many({"run": run_id, "user": {"$in": batch}})
        sizes = await self.recipients.aggregate(
            [{"$match": {"run": run_id}}, {"$group": {"_id": "$shard", "n": {"$sum": 1}}}]
        )
        ops = [
            UpdateOne(
                {"run": run_id, "kind": "delivery", "index": row["_id"]},
                {"$set": {"total": row["n"]}},
            )
            async for row in sizes
        ]
        if ops:
            await self.splits.bulk_write(ops, ordered=False)
        await self.splits.update_many(
            {"run": run_id, "kind": "delivery", "status": "blocked"},
            {"$set": {"status": "pending"}},
        )
        await self.runs.update_one(
            {"_id": run_id, "stage": "audience"},
            {"$set": {"stage": "delivery", "audienceDoneAt": now or now_utc()}},
        )
        return True

    # -- delivery ---------------------------------------------------------------------

    async def settle_in_doubt(
        self, lease: Lease, run_id: str, shard: int, guarantee: Guarantee
    ) -> int:
        """Recipients left inflight by an earlier holder: never resent (AtMostOnce) or
        queued again with the same idempotency key (AtLeastOnce)."""
        status = "unknown" if guarantee == "AtMostOnce" else "pending"
        result = await self.recipients.update_many(
            {"run": run_id, "shard": shard, "status": "inflight", "token": {"$lt": lease.token}},
            {"$set": {"status": status, "error": "in doubt: its worker was lost mid-send"}},
        )
        return result.modified_count

    async def recount_shard(self, lease: Lease, run_id: str, shard: int) -> dict[str, int]:
        """Rebuild the shard's counters from its recipients (exact after any crash)."""
        counts: dict[str, int] = defaultdict(int)
        pipeline: list[dict[str, Any]] = [
            {"$match": {"run": run_id, "shard": shard}},
            {"$group": {"_id": "$status", "n": {"$sum": 1}}},
        ]
        async for row in await self.recipients.aggregate(pipeline):
            counts[row["_id"]] = int(row["n"])
        counters = {f: counts[f] for f in FINAL_STATUSES}
        counters["attempted"] = counts["sent"] + counts["failed"]
        await fenced_update(
            self.splits, lease, {"$set": {f"counters.{k}": v for k, v in counters.items()}}
        )
        return counters

    async def take_batch(
        self, lease: Lease, run_id: str, shard: int, limit: int, now: datetime | None = None
    ) -> Batch:
        """Move up to `limit` due recipients pending → inflight under this lease.

        The lease is renewed first (LeaseLost if it is gone): the move then happens with a
        whole lease period ahead, before anyone else may claim the shard. The batch holds
        exactly the recipients this call moved (found again by its tag): only those may
        be sent.

        Earliest due first, then by `_id`: the order of TAKE_INDEX after its equality fields,
        so MongoDB walks the index and stops at `limit` instead of sorting the whole shard
        for every batch. The move selects "up to the last one found" in that order rather
        than a list of ids: it stays on the same index, and no server pays the size of the
        collection times the size of the batch (some test `$in` member by member).
        """
        now = now or now_utc()
        await renew(self.splits, lease, now)
        pending = {"run": run_id, "shard": shard, "status": "pending"}
        due = {**pending, "due": {"$lte": now}}
        found = [
            doc async for doc in self.recipients.find(due, {"due": 1}).sort(TAKE_ORDER).limit(limit)
        ]
        tag = Batch(run_id, shard, uuid.uuid4().hex, lease.token, [])
        if not found:
            return tag
        # Each branch is a range of TAKE_INDEX on its own (equality fields repeated), so
        # MongoDB serves the $or from the index without pushing the enclosing AND down; the
        # enclosing AND stays because servers that scan reject most documents on it cheaply
        # (mongo-java-server: 65 ms instead of 90 for 1,000 of 100,000 documents).
        last = found[-1]
        up_to_last = [
            {**pending, "due": {"$lt": last["due"]}},
            {**pending, "due": last["due"], "_id": {"$lte": last["_id"]}},
        ]
        await self.recipients.update_many(
            {**pending, "$or": up_to_last},
            {
                "$set": {
                    "status": "inflight",
                    "token": lease.token,
                    "batch": tag.id,
                    "worker": lease.owner,
                },
                "$inc": {"attempts": 1},
            },
        )
        cursor = self.recipients.find(tag.filter(), {"user": 1, "attrs": 1, "attempts": 1})
        tag.recipients.extend([doc async for doc in cursor])
        return tag

    async def record_outcomes(
        self, lease: Lease, batch: Batch, outcomes: Sequence[Outcome]
    ) -> dict[str, int]:
        """Write final results (filtered by the token) and count them on the shard.

        When `outcomes` cover the whole batch, the largest group (usually "sent") is written
        last with the batch's own filter: what is still in flight of it is exactly that group.

        The lease is renewed first (LeaseLost if it is gone): a holder whose shard was
        claimed by another worker writes no result, not even before the new holder has
        settled what it left in doubt.
        """
        await renew(self.splits, lease)
        groups: dict[tuple[str, str | None], list[Any]] = defaultdict(list)
        for o in outcomes:
            groups[(o.status, o.error)].append(o.recipient_id)
        ordered = sorted(groups.items(), key=lambda g: len(g[1]))
        whole = {o.recipient_id for o in outcomes} == {r["_id"] for r in batch.recipients}
        counted: dict[str, int] = defaultdict(int)
        now = now_utc()
        for i, ((status, error), ids) in enumerate(ordered):
            last = i == len(ordered) - 1
            query = batch.filter() if whole and last else {**batch.filter(), "_id": {"$in": ids}}
            done = {"doneAt": now} if status != "pending" else {}
            result = await self.recipients.update_many(
                query, {"$set": {"status": status, "error": error, **done}}
            )
            if status != "pending":  # handed back, not a result: nothing to count
                counted[status] += result.modified_count
        inc = {f"counters.{k}": v for k, v in counted.items() if v}
        attempted = counted["sent"] + counted["failed"]
        if attempted:
            inc["counters.attempted"] = attempted
        # Always fenced, even with nothing counted, so a holder that lost the shard learns it.
        await fenced_update(self.splits, lease, {"$inc": inc or {"counters.attempted": 0}})
        return dict(counted)

    async def requeue(self, lease: Lease, batch: Batch) -> int:
        """Put a batch that was moved but never sent back to pending, as it was (fenced
        like record_outcomes)."""
        if not batch.recipients:
            return 0
        await renew(self.splits, lease)
        result = await self.recipients.update_many(
            batch.filter(), {"$set": {"status": "pending"}, "$inc": {"attempts": -1}}
        )
        return result.modified_count

    async def shard_state(self, run_id: str, shard: int) -> tuple[bool, datetime | None]:
        """(anything inflight or pending left?, the earliest due time of what is pending)."""
        if not await self._exists(
            self.recipients,
            {"run": run_id, "shard": shard, "status": {"$in": ["pending", "inflight"]}},
        ):
            return False, None
        first = await self.recipients.find_one(
            {"run": run_id, "shard": shard, "status": "pending"},
            {"due": 1},
            sort=[("due", ASCENDING)],
        )
        return True, (first or {}).get("due")

    async def finish_if_done(self, run_id: str, now: datetime | None = None) -> bool:
        """Mark the run done once every delivery shard is done; True if it is done."""
        if await self._exists(
            self.splits, {"run": run_id, "kind": "delivery", "status": {"$ne": "done"}}
        ):
            return False
        result = await self.runs.update_one(
            {"_id": run_id, "stage": "delivery"},
            {"$set": {"stage": "done", "doneAt": now or now_utc()}},
        )
        if result.matched_count:
            return True
        run = await self.runs.find_one({"_id": run_id}, {"stage": 1})
        return (run or {}).get("stage") == "done"

    # -- workers ----------------------------------------------------------------------

    async def heartbeat(
        self, worker_id: str, run_id: str, info: dict[str, Any] | None = None
    ) -> None:
        now = now_utc()
        await self.workers.update_one(
            {"_id": worker_id},
            {
                "$set": {"run": run_id, "lastSeen": now, **(info or {})},
                "$setOnInsert": {"startedAt": now},
            },
            upsert=True,
        )

    async def forget_worker(self, worker_id: str) -> None:
        await self.workers.delete_one({"_id": worker_id})

    async def live_workers(self, run_id: str, within: float, now: datetime | None = None) -> int:
        since = (now or now_utc()) - timedelta(seconds=within)
        return await self.workers.count_documents({"run": run_id, "lastSeen": {"$gte": since}})

    async def stale_leases(self, run_id: str, now: datetime | None = None) -> int:
        """Leases whose holder stopped renewing: work waiting to be reclaimed."""
        return await self.splits.count_documents(
            {"run": run_id, "status": "leased", "leaseUntil": {"$lt": now or now_utc()}}
        )


__all__ = ["Batch", "Lease", "LeaseLost", "Outcome", "RunTotals", "Store"]
