"""The MongoDB store shared by the operator and the workers: the chunked ledger.

Only what a plain replica set and the local MongoDB-wire servers serve: find-and-modify,
bulk writes, unique indexes, `$inc` and simple aggregation. Every write a worker makes on
behalf of a split or a chunk is filtered by its fencing token (see leases.py), so a worker
that lost its lease changes nothing. This module owns the collections: nobody else names
them. The data model and why each guarantee holds: docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal, get_args

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure
from pymongo.uri_parser import parse_uri

from pushtask import ledger
from pushtask.clock import StoreClock
from pushtask.leases import (
    DONE,
    LEASED,
    QUEUED,
    Lease,
    LeaseLost,
    UnitEnd,
    claim,
    fenced_update,
    release,
    renew,
)
from pushtask.planning import new_split
from pushtask.records import ClickTotals, ConversionTotals, RecipientState, Result, RunTotals

DEFAULT_DB = "pushtask"
Stage = Literal["audience", "seal", "delivery", "done"]
STAGES: tuple[Stage, ...] = get_args(Stage)  # in the order a run goes through them
COUNTER_FIELDS = ("inserted", "skipped", "sent", "failed", "unknown", "attempted")
# What seal_shard records on a shard's seal split, beside the split's counters.
SEAL_FIELDS = ("total", "excluded", "duplicates")
DUPLICATE_KEY = 11000
IN_DOUBT = "in doubt: its worker was lost mid-send"
# Everything a run owns besides its run document, each keyed by `run`.
RUN_COLLECTIONS = (
    "splits",
    "staging",
    "chunks",
    "skips",
    "workers",
    "notifications",
    "notification_claims",
    "clicks",
    "clickcounts",
    "conversions",
    "conversioncounts",
)
# A notification's state (the operator's outbox): `queued` (leases.QUEUED: waiting for a
# sender, due at `nextAt`) until `sent` or `given up`.
SENT, GAVE_UP = "sent", "given up"
# A run's click and conversion counters are spread over this many documents (by the
# user's hash), so no single document is every click's hot spot and the totals are a sum
# of a few.
TRACKING_BUCKETS = 16
ALL_LINKS = "*"  # the link part of a click marker that stands for "the user clicked"


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


async def _insert_new(coll: AsyncCollection[dict[str, Any]], docs: Sequence[dict[str, Any]]) -> int:
    """Insert documents with deterministic ids; those already there are left as they are."""
    if not docs:
        return 0
    try:
        return len((await coll.insert_many(list(docs), ordered=False)).inserted_ids)
    except BulkWriteError as error:
        return _inserted_count(error, len(docs))


def _position_status(
    doc: Mapping[str, Any], position: int, now: datetime, done: Mapping[int, str]
) -> str:
    """One recipient's status in its chunk: its recorded result (`done`: ledger.recorded),
    else in flight (started under a live lease), in doubt (started under a lease that ran
    out) or pending."""
    status = done.get(position)
    if status is not None:
        return status
    if position >= int(doc.get("hi") or 0):
        return "pending"
    alive = doc.get("status") == LEASED and (doc.get("leaseUntil") or now) > now
    return "in flight" if alive else "in doubt"


STAGING_READ_IDS = 1000  # ids per staging read of a seal (a bounded request)


class Store:
    def __init__(self, client: AsyncMongoClient[dict[str, Any]], db_name: str = DEFAULT_DB) -> None:
        self.client = client
        self.db: AsyncDatabase[dict[str, Any]] = client[db_name]
        self._runs = self.db["runs"]
        self._splits = self.db["splits"]
        self._staging = self.db["staging"]
        self._chunks = self.db["chunks"]
        self._skips = self.db["skips"]
        self._workers = self.db["workers"]
        self._notifications = self.db["notifications"]
        self._notification_claims = self.db["notification_claims"]
        self._clicks = self.db["clicks"]
        self._clickcounts = self.db["clickcounts"]
        self._conversions = self.db["conversions"]
        self._conversioncounts = self.db["conversioncounts"]
        # Every time this store writes or judges (leases, heartbeats, due times) is on the
        # server's clock, never this machine's (pushtask/clock.py).
        self.clock = StoreClock()
        self._clock_read_at = float("-inf")
        self._time_commands = ["hello", "isMaster"]

    @classmethod
    def connect(cls, uri: str, db_name: str | None = None, **client_options: Any) -> Store:
        """A store on `uri`; the database is `db_name`, else the URI's, else `pushtask`."""
        name = db_name or parse_uri(uri).get("database") or DEFAULT_DB
        options: dict[str, Any] = {"tz_aware": True, "serverSelectionTimeoutMS": 5000}
        options.update(client_options)
        return cls(AsyncMongoClient(uri, **options), name)

    def _coll(self, lease: Lease) -> AsyncCollection[dict[str, Any]]:
        return self._chunks if lease.collection == "chunks" else self._splits

    @staticmethod
    async def _exists(coll: AsyncCollection[dict[str, Any]], query: dict[str, Any]) -> bool:
        # find_one stops at the first match; count_documents(limit=1) scans on some servers.
        return await coll.find_one(query, {"_id": 1}) is not None

    async def close(self) -> None:
        await self.client.close()

    # -- the clock --------------------------------------------------------------------

    def now(self) -> datetime:
        """The store's time, as this process last read it (see pushtask/clock.py)."""
        return self.clock.now()

    def due_by(self) -> datetime:
        """The store's time at its earliest: what a due time is checked against, so that no
        recipient is sent before its time by the store's clock."""
        return self.clock.earliest()

    async def _server_time(self) -> datetime | None:
        # `hello` on MongoDB 4.4+ and FerretDB; its older name on mongo-java-server.
        for command in self._time_commands:
            try:
                reply = await self.client.admin.command(command)
            except OperationFailure:
                self._time_commands = [c for c in self._time_commands if c != command]
                continue
            server_time = reply.get("localTime")
            if isinstance(server_time, datetime):
                return server_time
        # A server whose hello carries no time: let it stamp a document ($currentDate).
        doc = await self.db["clock"].find_one_and_update(
            {"_id": "clock"},
            {"$currentDate": {"t": True}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        stamped = (doc or {}).get("t")
        return stamped if isinstance(stamped, datetime) else None

    async def sync_clock(self, max_age: float = 0.0) -> None:
        """Read the store's clock again, unless it was read less than `max_age` s ago."""
        mono = time.monotonic()
        if mono - self._clock_read_at < max_age:
            return
        await self.clock.sync(self._server_time)
        self._clock_read_at = mono

    async def ensure_indexes(self) -> None:
        """Create every index the core path relies on; safe to call on every start.

        Sent together: on a slow store, starting costs one call's latency, not eight."""
        asc = ASCENDING
        await asyncio.gather(
            self._splits.create_index(
                [("run", asc), ("kind", asc), ("status", asc)], name="split_claim"
            ),
            self._chunks.create_index(
                [("run", asc), ("status", asc), ("due", asc)], name="chunk_claim"
            ),
            # "What happened to user X in run R": one multikey index lookup.
            self._chunks.create_index([("run", asc), ("users", asc)], name="run_user"),
            self._staging.create_index([("run", asc), ("bucket", asc)], name="run_bucket"),
            self._skips.create_index([("run", asc)], name="run"),
            self._workers.create_index([("run", asc), ("lastSeen", asc)], name="run_seen"),
            self.ensure_click_indexes(),
            self._runs.create_index(
                [("task.uid", asc), ("created", DESCENDING)], name="task_created"
            ),
            self._notifications.create_index([("state", asc), ("nextAt", asc)], name="due"),
            self._drop_superseded(),
        )

    async def ensure_click_indexes(self) -> None:
        """The indexes of clicks and conversions (the tracker needs only these)."""
        await asyncio.gather(
            self._clicks.create_index([("run", ASCENDING), ("user", ASCENDING)], name="run_user"),
            self._clickcounts.create_index([("run", ASCENDING)], name="run"),
            self._conversions.create_index(
                [("run", ASCENDING), ("user", ASCENDING)], name="run_user"
            ),
            self._conversioncounts.create_index([("run", ASCENDING)], name="run"),
        )

    async def _drop_superseded(self) -> None:
        # Collections of the per-recipient ledger this one replaced: nothing reads them.
        names = await self.db.list_collection_names()
        for old in ("recipients", "excluded"):
            if old in names:
                await self.db.drop_collection(old)

    # -- runs -------------------------------------------------------------------------

    async def create_run(self, run_doc: dict[str, Any], splits: Sequence[dict[str, Any]]) -> bool:
        """Insert a planned run; True if it is new. Safe to repeat after a crash midway."""
        created = True
        try:
            await self._runs.insert_one(run_doc)
        except DuplicateKeyError:
            created = False
        await self.add_splits(splits)
        return created

    async def add_splits(self, splits: Sequence[dict[str, Any]]) -> int:
        """Insert splits that are not there yet (ids are deterministic)."""
        return await _insert_new(self._splits, splits)

    async def get_run(
        self, run_id: str, fields: Iterable[str] | None = None
    ) -> dict[str, Any] | None:
        projection = {f: 1 for f in fields} if fields is not None else None
        return await self._runs.find_one({"_id": run_id}, projection)

    async def set_control(self, run_id: str, **control: Any) -> None:
        await self._runs.update_one(
            {"_id": run_id}, {"$set": {f"control.{k}": v for k, v in control.items()}}
        )

    async def fail_run(self, run_id: str, reason: str) -> bool:
        """Record the run's failure once; True if this call recorded it."""
        result = await self._runs.update_one(
            {"_id": run_id, "failure": None},
            {"$set": {"failure": {"reason": reason, "at": self.now()}}},
        )
        return result.modified_count == 1

    async def advance(self, run_id: str, now: datetime | None = None) -> str:
        """Take the run's next stage when its current one is complete; the stage after.

        audience → seal once every audience split is done (the shards are planned from
        the staged bucket sizes); seal → delivery once every shard is sealed; delivery →
        done once every chunk is done. Idempotent and deterministic, so any worker (or the
        operator) may run it, even several at once.
        """
        now = now or self.now()
        fields = {"stage": 1, "buckets": 1, "spec.workers": 1, "spec.audience.sources": 1}
        run_doc = await self._runs.find_one({"_id": run_id}, fields)
        if run_doc is None:
            return "audience"
        stage = str(run_doc.get("stage") or "audience")
        if stage == "audience":
            if await self._exists(
                self._splits, {"run": run_id, "kind": "audience", "status": {"$ne": DONE}}
            ):
                return stage
            await self.add_splits(await self._plan_shards(run_id, run_doc))
            await self._runs.update_one(
                {"_id": run_id, "stage": "audience"},
                {"$set": {"stage": "seal", "audienceDoneAt": now}},
            )
            stage = "seal"
        if stage == "seal":
            if await self._exists(
                self._splits, {"run": run_id, "kind": "seal", "status": {"$ne": DONE}}
            ):
                return stage
            moved = await self._runs.update_one(
                {"_id": run_id, "stage": "seal"}, {"$set": {"stage": "delivery", "sealedAt": now}}
            )
            # Every shard is sealed and a sealed shard is never sealed again (a stale sealer's
            # renewal fails before it writes): the staging has served its purpose. Deleted
            # once, by whoever moved the stage (several parties deleting a million staged
            # rows at once held up the first claims); one that dies first leaves it to the
            # run's deletion.
            if moved.modified_count:
                await self._staging.delete_many({"run": run_id})
            stage = "delivery"
        if stage == "delivery":
            if await self._exists(self._chunks, {"run": run_id, "status": {"$ne": DONE}}):
                return stage
            await self._runs.update_one(
                {"_id": run_id, "stage": "delivery"}, {"$set": {"stage": "done", "doneAt": now}}
            )
            stage = "done"
        return stage

    async def _plan_shards(self, run_id: str, run_doc: Mapping[str, Any]) -> list[dict[str, Any]]:
        buckets = int(run_doc["buckets"])
        sizes = await self._staged_sizes(run_id)
        spec = run_doc.get("spec") or {}
        timed = any(s.get("sendAtField") for s in (spec.get("audience") or {}).get("sources", []))
        target = ledger.shard_target(sum(sizes.values()), int(spec.get("workers") or 1), timed)
        return [
            new_split(
                run_id, ledger.shard_split_id(run_id, k), "seal", k, buckets=[lo, hi], total=0
            )
            for k, (lo, hi) in enumerate(ledger.group_buckets(sizes, buckets, target=target))
        ]

    async def _staged_sizes(self, run_id: str) -> dict[int, int]:
        """Rows staged per bucket, summed over the audience splits' own counts (a few
        documents), not over the staging: at a million recipients that is thousands of
        documents to load, a whole scan where the server has no index for it. A split of
        a run staged by an older version, which did not count them, sends the sum back to
        the staging."""
        sizes: dict[int, int] = defaultdict(int)
        fields = {"sizes": 1, "counters.inserted": 1, "source.exclude": 1}
        async for doc in self._splits.find({"run": run_id, "kind": "audience"}, fields):
            staged = int((doc.get("counters") or {}).get("inserted") or 0)
            if "sizes" not in doc and staged and not (doc.get("source") or {}).get("exclude"):
                return await self._staged_sizes_from_staging(run_id)
            for bucket, n in (doc.get("sizes") or {}).items():
                sizes[int(bucket)] += int(n)
        return sizes

    async def _staged_sizes_from_staging(self, run_id: str) -> dict[int, int]:
        sizes: dict[int, int] = defaultdict(int)
        # Summed here rather than by a $group: every server answers a plain projection alike.
        async for doc in self._staging.find(
            {"run": run_id, "exclude": False}, {"bucket": 1, "n": 1}
        ):
            sizes[int(doc["bucket"])] += int(doc.get("n") or 0)
        return sizes

    async def totals(self, run_id: str) -> RunTotals:
        """Sum the counters of a run's splits and chunks.

        Summed here rather than with one `$group` of several accumulators: FerretDB 1.24
        returns 0 for every accumulator after the first.
        """
        run_doc = await self._runs.find_one({"_id": run_id}, {"stage": 1})
        sums: dict[str, int] = defaultdict(int)
        projection = {"status": 1, "counters": 1, **dict.fromkeys(SEAL_FIELDS, 1)}
        async for doc in self._splits.find({"run": run_id}, projection):
            self._add(sums, doc)
        async for doc in self._chunks.find({"run": run_id}, projection):
            self._add(sums, doc)
        return RunTotals(
            stage=(run_doc or {}).get("stage", "audience"),
            splits_open=sums["open"],
            **{f: sums[f] for f in COUNTER_FIELDS + SEAL_FIELDS},
        )

    @staticmethod
    def _add(sums: dict[str, int], doc: Mapping[str, Any]) -> None:
        counters = doc.get("counters") or {}
        for f in COUNTER_FIELDS:
            sums[f] += int(counters.get(f) or 0)
        for f in SEAL_FIELDS:  # only seal splits have them
            sums[f] += int(doc.get(f) or 0)
        sums["open"] += doc.get("status") != DONE

    async def skip_samples(self, run_id: str, limit: int = 5) -> list[str]:
        cursor = self._skips.find({"run": run_id}, {"reason": 1}).limit(limit)
        return [doc["reason"] async for doc in cursor]

    async def failure_samples(self, run_id: str, limit: int = 5) -> list[tuple[str, str]]:
        """Up to `limit` (user, error) of recipients whose send failed (the console).

        Only chunks whose counters say they hold a failure are read, and only their users
        and results (ledger.failures knows how those are recorded)."""
        query = {"run": run_id, "counters.failed": {"$gt": 0}}
        out: list[tuple[str, str]] = []
        async for doc in self._chunks.find(query, {"users": 1, "res": 1}).limit(limit):
            users = list(doc.get("users") or [])
            out += [(str(users[p]), error) for p, error in ledger.failures(doc) if p < len(users)]
            if len(out) >= limit:
                break
        return out[:limit]

    # -- frequency cap ----------------------------------------------------------------

    async def runs_sending_since(
        self, namespace: str, since: datetime, *, besides: str
    ) -> list[dict[str, Any]]:
        """Runs of a namespace that may have sent at or after `since` (not ended, or ended
        since), with their task (labels included), in id order; `besides` is left out."""
        query = {
            "task.namespace": namespace,
            "_id": {"$ne": besides},
            "$or": [{"doneAt": None}, {"doneAt": {"$gte": since}}],
        }
        cursor = self._runs.find(query, {"task": 1}).sort("_id", ASCENDING)
        return [doc async for doc in cursor]

    async def chunks_from(self, run_id: str, first: str | None) -> AsyncIterator[dict[str, Any]]:
        """A run's chunks in id order from `first` on (all: None), users and results only,
        a few at a time (a chunk of a thousand results is about 100 KB)."""
        query: dict[str, Any] = {"run": run_id}
        if first is not None:
            query["_id"] = {"$gte": first}
        fields = {"users": 1, "ok": 1, "res": 1, "hi": 1, "status": 1}
        cursor = self._chunks.find(query, fields).sort("_id", ASCENDING).batch_size(16)
        async for doc in cursor:
            yield doc

    # -- notifications: the operator's outbox ------------------------------------------
    #
    # A phase change is recorded here, one document per (run, phase, target) with a
    # deterministic id, before the status that shows it is written; a sender delivers the
    # pending ones. A document is claimed with a lease (one sender at a time, even with a
    # second operator replica), and every later write is filtered by the claim.

    async def record_notifications(self, docs: Sequence[dict[str, Any]]) -> int:
        """Insert the notifications not recorded yet (a repeat of the same phase change is
        a no-op); how many are new. Each starts queued, due at its `nextAt`."""
        fresh = [{**d, "state": QUEUED, "attempts": 0, "claimUntil": None} for d in docs]
        return await _insert_new(self._notifications, fresh)

    async def claim_notification(
        self, owner: str, ttl: float, now: datetime | None = None
    ) -> dict[str, Any] | None:
        """The earliest due queued notification no live claim holds, now claimed by
        `owner` for `ttl` seconds, as it was before the claim (None: nothing is due).

        A server whose find-and-modify is not atomic (FerretDB: two senders at once were
        both handed the same notification) is made safe by a unique id: each claim also
        inserts `<id>@<attempts>@<previous claimUntil>`, the state it claimed from, so of
        two senders that read the same state only one gets the notification; a sender
        that took over an expired claim (its holder died) claims from another state."""
        now = now or self.now()
        while True:
            before = await self._notifications.find_one_and_update(
                {
                    "state": QUEUED,
                    "nextAt": {"$lte": now},
                    "$or": [{"claimUntil": None}, {"claimUntil": {"$lte": now}}],
                },
                {"$set": {"owner": owner, "claimUntil": now + timedelta(seconds=ttl)}},
                sort=[("nextAt", ASCENDING)],
                return_document=ReturnDocument.BEFORE,
            )
            if before is None:
                return None
            previous = before.get("claimUntil")
            mark = f"{before['_id']}@{before.get('attempts') or 0}@{previous or '-'}"
            try:
                await self._notification_claims.insert_one({"_id": mark, "run": before["run"]})
            except DuplicateKeyError:
                continue  # another sender has it; look for the next one
            return before

    async def notification_retry(
        self, claimed: Mapping[str, Any], next_at: datetime, error: str
    ) -> bool:
        """The attempt on `claimed` (as claim_notification returned it) failed; another is
        due at `next_at`. False if it was recorded otherwise meanwhile."""
        result = await self._notifications.update_one(
            self._attempt_of(claimed),
            {
                "$set": {"nextAt": next_at, "claimUntil": None, "lastError": error},
                "$inc": {"attempts": 1},
            },
        )
        return result.modified_count == 1

    async def notification_done(
        self, claimed: Mapping[str, Any], state: str, error: str | None = None
    ) -> bool:
        """Sent (SENT) or given up (GAVE_UP): never tried again. False if it was recorded
        otherwise meanwhile (a sender that took over a claim it thought dead)."""
        fields: dict[str, Any] = {"state": state, "doneAt": self.now(), "claimUntil": None}
        if error is not None:
            fields["lastError"] = error
        result = await self._notifications.update_one(
            self._attempt_of(claimed), {"$set": fields, "$inc": {"attempts": 1}}
        )
        return result.modified_count == 1

    @staticmethod
    def _attempt_of(claimed: Mapping[str, Any]) -> dict[str, Any]:
        # The attempt count, not the owner, fences the outcome: two senders on a server
        # whose find-and-modify is not atomic may both have written `owner`.
        return {"_id": claimed["_id"], "state": QUEUED, "attempts": claimed.get("attempts") or 0}

    async def next_notification_at(self) -> datetime | None:
        """When the earliest queued notification is due (None: none is queued)."""
        doc = await self._notifications.find_one(
            {"state": QUEUED}, {"nextAt": 1}, sort=[("nextAt", ASCENDING)]
        )
        return None if doc is None else doc.get("nextAt")

    async def notifications(self, run_id: str) -> list[dict[str, Any]]:
        """A run's notifications, oldest first (tests, `kubectl push`)."""
        return [d async for d in self._notifications.find({"run": run_id}).sort("created", 1)]

    # -- clicks -----------------------------------------------------------------------

    async def record_click(self, run_id: str, user: str, link: int) -> bool:
        """Count `user`'s click on link `link` of `run_id` once; True if it was the first.

        Unique by construction: a marker per (run, link, user) and one per (run, user), with
        deterministic ids, inserted (a duplicate key is a click already counted). Only a
        first insert moves the user's bucket counter, so the counters sum to the markers.
        A tracker killed between the two writes loses that one count (never counts twice).
        """
        now = self.now()
        marker = {"run": run_id, "user": user, "t": now}
        try:
            await self._clicks.insert_one(
                {"_id": f"{run_id}|{link}|{user}", "link": link, **marker}
            )
        except DuplicateKeyError:
            return False
        inc = {"clicks": 1, f"links.{link}": 1}
        try:
            await self._clicks.insert_one({"_id": f"{run_id}|{ALL_LINKS}|{user}", **marker})
            inc["clickers"] = 1
        except DuplicateKeyError:
            pass
        bucket = ledger.bucket_of(user, TRACKING_BUCKETS)
        await self._clickcounts.update_one(
            {"_id": f"{run_id}|{bucket}"},
            {"$inc": inc, "$set": {"run": run_id, "lastClick": now}},
            upsert=True,
        )
        return True

    async def click_totals(self, run_id: str) -> ClickTotals:
        """A run's clicks: the sum of its few bucket counters."""
        clicks = clickers = 0
        by_link: dict[int, int] = defaultdict(int)
        async for doc in self._clickcounts.find({"run": run_id}):
            clicks += int(doc.get("clicks") or 0)
            clickers += int(doc.get("clickers") or 0)
            for link, n in (doc.get("links") or {}).items():
                by_link[int(link)] += int(n)
        return ClickTotals(clicks, clickers, dict(sorted(by_link.items())))

    async def clicked(self, run_id: str, user: str) -> list[int]:
        """The links `user` clicked in `run_id` (`kubectl push recipient`), by index."""
        cursor = self._clicks.find({"run": run_id, "user": user}, {"link": 1})
        return sorted([int(d["link"]) async for d in cursor if "link" in d])

    # -- conversions ------------------------------------------------------------------

    async def find_run(self, namespace: str, name: str, run: int) -> str | None:
        """The id of run `run` of the task `namespace/name` (the newest, should a task of
        that name have been deleted and made again); None when it is not stored."""
        query = {"task.namespace": namespace, "task.name": name, "run": run}
        cursor = self._runs.find(query, {"_id": 1}).sort("created", DESCENDING).limit(1)
        found = [doc["_id"] async for doc in cursor]
        return str(found[0]) if found else None

    async def record_conversion(self, run_id: str, user: str, event: str) -> bool:
        """Count `user`'s conversion `event` in `run_id` once; True if it was the first.
        Unique by construction, as a click: a marker per (run, event, user), then the
        user's bucket counter for a first one only."""
        now = self.now()
        doc = {"_id": f"{run_id}|{event}|{user}", "run": run_id, "user": user, "event": event}
        try:
            await self._conversions.insert_one({**doc, "t": now})
        except DuplicateKeyError:
            return False
        bucket = ledger.bucket_of(user, TRACKING_BUCKETS)
        await self._conversioncounts.update_one(
            {"_id": f"{run_id}|{bucket}"},
            {"$inc": {f"events.{event}": 1}, "$set": {"run": run_id, "last": now}},
            upsert=True,
        )
        return True

    async def conversion_totals(self, run_id: str) -> ConversionTotals:
        """A run's conversions by event: the sum of its few bucket counters."""
        by_event: dict[str, int] = defaultdict(int)
        async for doc in self._conversioncounts.find({"run": run_id}):
            for event, n in (doc.get("events") or {}).items():
                by_event[str(event)] += int(n)
        return ConversionTotals(dict(by_event))

    async def converted(self, run_id: str, user: str) -> list[str]:
        """The conversion events `user` has in `run_id` (`kubectl push recipient`)."""
        cursor = self._conversions.find({"run": run_id, "user": user}, {"event": 1})
        return sorted([str(d["event"]) async for d in cursor])

    # -- retention --------------------------------------------------------------------

    async def delete_run(self, run_id: str) -> None:
        """Remove a run and its whole ledger (workers of it simply stop finding it)."""
        for name in RUN_COLLECTIONS:
            await self.db[name].delete_many({"run": run_id})
        await self._runs.delete_one({"_id": run_id})

    async def prune_runs(self, task_uid: str, keep: int) -> list[str]:
        """Keep a task's `keep` newest runs, delete the ledgers of the older ones."""
        old = [
            doc["_id"]
            async for doc in self._runs.find({"task.uid": task_uid}, {"_id": 1})
            .sort("created", DESCENDING)
            .skip(max(0, keep))
        ]
        for run_id in old:
            await self.delete_run(run_id)
        return old

    async def delete_task_runs(self, task_uid: str) -> list[str]:
        """Every run of a deleted PushTask, gone with it."""
        return await self.prune_runs(task_uid, keep=0)

    # -- leases -----------------------------------------------------------------------

    async def claim_split(
        self, run_id: str, kind: str, owner: str, ttl: float, now: datetime | None = None
    ) -> tuple[dict[str, Any], Lease] | None:
        return await claim(
            self._splits,
            match={"run": run_id, "kind": kind},
            owner=owner,
            ttl=ttl,
            now=now or self.now(),
        )

    async def claim_chunk(
        self,
        run_id: str,
        owner: str,
        ttl: float,
        now: datetime | None = None,
        *,
        ahead: float = 0.0,
    ) -> tuple[dict[str, Any], Lease] | None:
        """A chunk that is due, or falls due within `ahead` seconds (or whose holder stopped
        renewing), earliest due first; the reply carries its recipients and what earlier
        holders recorded."""
        return await claim(
            self._chunks,
            match={"run": run_id},
            owner=owner,
            ttl=ttl,
            now=now or self.now(),
            due_field="due",
            sort=(("due", ASCENDING), ("_id", ASCENDING)),
            # No projection: FerretDB refuses one on findAndModify, and a chunk is almost
            # all recipients anyway.
            collection="chunks",
            ahead=ahead,
        )

    async def renew(self, lease: Lease, now: datetime | None = None) -> Lease:
        return await renew(self._coll(lease), lease, now or self.now())

    async def release(
        self,
        lease: Lease,
        *,
        done: bool,
        not_before: datetime | None = None,
        fields: Mapping[str, Any] | None = None,
    ) -> bool:
        return await release(
            self._coll(lease), lease, done=done, not_before=not_before, fields=fields
        )

    # -- audience ---------------------------------------------------------------------

    async def flush_staging(
        self,
        lease: Lease,
        run_id: str,
        staging: Sequence[dict[str, Any]],
        skips: Sequence[tuple[Any, str, str]],
        *,
        cursor: Any,
        counters: Mapping[str, int],
        sizes: Mapping[str, int] | None = None,
    ) -> None:
        """Write one flush of an audience split, then checkpoint it.

        The lease is renewed first, so a holder that lost it adds nothing (its flush ids are
        the ones the new holder writes anyway). Staging and skips are insert-only with
        deterministic ids; the split's counters (absolute: the holder's count since its
        claim added to what the claim found) move with the checkpoint in one fenced write,
        so each flush is counted exactly once however often it is read or retried. So are
        its rows per bucket (`sizes`, absolute like the counters), which the shards are
        planned from.
        """
        await self.renew(lease)
        await _insert_new(self._staging, staging)
        await _insert_new(
            self._skips,
            [
                {
                    "_id": f"{lease.unit_id}/{pos}",
                    "run": run_id,
                    "reason": reason,
                    "row": row[:500],
                }
                for pos, reason, row in skips
            ],
        )
        sets: dict[str, Any] = {"cursor": cursor}
        sets.update({f"counters.{k}": int(v) for k, v in counters.items()})
        sets.update({f"sizes.{k}": int(v) for k, v in (sizes or {}).items()})
        await fenced_update(self._splits, lease, {"$set": sets})

    async def seal_shard(
        self, lease: Lease, run_id: str, split: Mapping[str, Any], chunk_size: int
    ) -> ledger.Sealed:
        """Read a shard's staging back, deduplicate, exclude, order, write its chunks.

        Staging is complete and immutable once the audience is whole, so a sealer killed
        midway and run again writes the same chunks under the same ids: those already there
        are kept (they may be under delivery already)."""
        lo, hi = split["buckets"]
        sealed = ledger.seal(await self._staged(run_id, range(lo, hi)))
        chunks = ledger.cut_chunks(run_id, int(split["index"]), sealed.recipients, size=chunk_size)
        await self.renew(lease)
        for i in range(0, len(chunks), 16):  # bounded requests whatever the chunk size
            await _insert_new(self._chunks, chunks[i : i + 16])
        fields = {
            "total": len(sealed.recipients),
            "chunks": len(chunks),
            "duplicates": sealed.duplicates,
            "excluded": sealed.excluded,
        }
        if not await self.release(lease, done=True, fields=fields):
            raise LeaseLost(lease)
        return sealed

    async def _staged(self, run_id: str, buckets: range) -> list[dict[str, Any]]:
        """The staging of these buckets, in `_id` order, read by id: every staging id is
        known from the audience splits' flush counts (ledger.staging_id), so the read is
        index lookups on any server. A query on the bucket range needs an index on
        (run, bucket), and a server without one (mongo-java-server) scans all the staging
        for every shard: at a million recipients, 40 scans of a thousand documents."""
        flushes = self._splits.find({"run": run_id, "kind": "audience"}, {"cursor.seq": 1})
        ids = sorted(
            [
                ledger.staging_id(str(doc["_id"]), seq, bucket)
                async for doc in flushes
                for seq in range(int((doc.get("cursor") or {}).get("seq") or 0))
                for bucket in buckets
            ]
        )
        out: list[dict[str, Any]] = []
        for i in range(0, len(ids), STAGING_READ_IDS):
            part = {"_id": {"$in": ids[i : i + STAGING_READ_IDS]}}
            cursor = self._staging.find(part, {"exclude": 1, "rows": 1}).sort("_id", ASCENDING)
            out += [doc async for doc in cursor]
        return out

    # -- delivery ---------------------------------------------------------------------

    async def write_chunk(
        self,
        lease: Lease,
        *,
        counters: Mapping[str, int],
        results: Sequence[Result] = (),
        unknown: Sequence[int] = (),
        reopen: Sequence[int] = (),
        hi: int,
        end: UnitEnd | None = None,
        due: datetime | None = None,
        now: datetime | None = None,
    ) -> Lease:
        """One fenced write of a chunk's holder: results, positions settled as unknown or
        reopened (handed back, to be sent again), the new `hi`, the chunk's counters (as
        absolute values: see ledger.tally), and the lease renewed, or the chunk given back
        (`end`). LeaseLost when the chunk is no longer ours."""
        now = now or self.now()
        sets: dict[str, Any] = {"hi": hi}
        sent: list[int] = []
        for r in results:
            if r.attempts == 1 and r.status == "sent":
                sent.append(r.position)
            else:
                sets[f"res.{r.position}"] = ledger.result_entry(
                    r.status, r.attempts, now, lease.owner, r.error
                )
        if sent:
            key = ledger.ok_key(lease.token, sent[0])
            sets[f"ok.{key}"] = {"t": now, "w": lease.owner, "p": sent}
        for p in unknown:
            sets[f"res.{p}"] = ledger.result_entry("unknown", 0, now, lease.owner, IN_DOUBT)
        sets.update({f"counters.{k}": int(v) for k, v in counters.items()})
        change: dict[str, Any] = {"$set": sets}
        if reopen:
            change["$unset"] = {f"res.{p}": "" for p in reopen}
        until = now + timedelta(seconds=lease.ttl)
        if end is None:
            sets["leaseUntil"] = until
        else:
            sets.update(status=end, owner=None, leaseUntil=None)
            if end == DONE:
                sets["doneBy"] = lease.owner
                change["$inc"] = {"completions": 1}
            if due is not None:
                sets["due"] = due
        result = await self._chunks.update_one(lease.fence(), change)
        if result.matched_count == 0:
            raise LeaseLost(lease)
        return Lease(lease.unit_id, lease.owner, lease.token, until, lease.ttl, lease.collection)

    async def recipient(self, run_id: str, user: str) -> RecipientState | None:
        """What happened to `user` in `run_id`; None when the user is not in its audience
        (not staged yet, excluded, or never a recipient)."""
        doc = await self._chunks.find_one({"run": run_id, "users": user})
        if doc is None:
            return None
        position = list(doc["users"]).index(user)
        entry = ledger.result_at(doc, position)
        dues = doc.get("dues")
        due = dues[position] if dues else None
        done = {position: str(entry["s"])} if entry is not None else {}
        status = _position_status(doc, position, self.now(), done)
        if entry is None:
            attempts, error, at, worker = 0, None, None, doc.get("owner")
        else:
            attempts, error, at, worker = (
                int(entry.get("n") or 0),
                entry.get("e"),
                entry.get("t"),
                entry.get("w"),
            )
        return RecipientState(
            run_id, user, status, attempts, error, at, worker, doc["_id"], position, due
        )

    async def lookup(self, run_id: str, user: str) -> tuple[RecipientState | None, str | None]:
        """`user`'s state in a run and the run's stage (None: the run is not stored)."""
        state, run_doc = await asyncio.gather(
            self.recipient(run_id, user), self.get_run(run_id, ("stage",))
        )
        return state, None if run_doc is None else str(run_doc.get("stage") or "")

    async def statuses(self, run_id: str) -> AsyncIterator[tuple[str, str]]:
        """(user, status) of every recipient of a run, chunk by chunk (exports, tests)."""
        now = self.now()
        fields = {"users": 1, "res": 1, "ok": 1, "hi": 1, "status": 1, "leaseUntil": 1}
        async for doc in self._chunks.find({"run": run_id}, fields):
            done = ledger.recorded(doc)
            for p, user in enumerate(doc["users"]):
                yield user, _position_status(doc, p, now, done)

    # -- workers ----------------------------------------------------------------------

    async def heartbeat(
        self, worker_id: str, run_id: str, info: dict[str, Any] | None = None
    ) -> None:
        now = self.now()
        await self._workers.update_one(
            {"_id": worker_id},
            {
                "$set": {"run": run_id, "lastSeen": now, **(info or {})},
                "$setOnInsert": {"startedAt": now},
            },
            upsert=True,
        )

    async def rate_beat(
        self,
        run_id: str,
        worker_id: str,
        until: datetime | None,
        applied: float | None = None,
    ) -> tuple[dict[str, int], float | None]:
        """Register this worker as one of the run's senders until `until` (None: no longer)
        and count a beat; then read who is registered (worker id -> beat counter) and the
        run's allocated rate. The read comes after the write, so a sender registered
        before this call and beating after it has seen this worker. `applied`: the task
        rate this worker sends by now (the operator waits for it before it gives the
        budget a task gave up to another)."""
        now = self.now()
        await self._workers.update_one(
            {"_id": worker_id},
            {
                "$set": {
                    "run": run_id,
                    "sendingUntil": until,
                    "sendingRate": applied if until is not None else None,
                    "lastSeen": now,
                },
                "$inc": {"rateBeat": 1},
                "$setOnInsert": {"startedAt": now},
            },
            upsert=True,
        )
        if until is None:
            return {}, None
        query = {"run": run_id, "sendingUntil": {"$gt": now}}
        docs, run_doc = await asyncio.gather(
            self._workers.find(query, {"rateBeat": 1}).to_list(),
            self._runs.find_one({"_id": run_id}, {"control.ratePerSecond": 1}),
        )
        senders = {str(d["_id"]): int(d.get("rateBeat") or 0) for d in docs}
        rate = ((run_doc or {}).get("control") or {}).get("ratePerSecond")
        # 0 is a rate (hold: no budget granted yet), not "unlimited".
        return senders, float(rate) if rate is not None else None

    async def forget_worker(self, worker_id: str) -> None:
        await self._workers.delete_one({"_id": worker_id})

    async def heartbeats(self, run_id: str) -> list[dict[str, Any]]:
        return [doc async for doc in self._workers.find({"run": run_id})]

    async def leases(self, run_id: str) -> list[dict[str, Any]]:
        """Units held under a lease right now (splits and chunks): owner, until, since."""
        query = {"run": run_id, "status": LEASED}
        fields = {"owner": 1, "leaseUntil": 1, "claimedAt": 1}
        held = [doc async for doc in self._splits.find(query, fields)]
        held += [doc async for doc in self._chunks.find(query, fields)]
        return held

    async def stale_leases(self, run_id: str, now: datetime | None = None) -> int:
        """Leases whose holder stopped renewing: work waiting to be reclaimed."""
        query = {"run": run_id, "status": LEASED, "leaseUntil": {"$lt": now or self.now()}}
        return await self._splits.count_documents(query) + await self._chunks.count_documents(query)


__all__ = [
    "Lease",
    "LeaseLost",
    "RecipientState",
    "Result",
    "RunTotals",
    "Stage",
    "Store",
]
