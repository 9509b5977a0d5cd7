"""Leases with fencing tokens, on any collection of work units (splits, chunks).

A worker owns a unit only while its lease is fresh. Every claim increments the unit's
token, so any write a previous holder makes afterwards (filtered by its old token)
matches nothing: that is what keeps two workers from acting on one unit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# A unit's status: waiting for a holder, held under a lease, or finished.
QUEUED: Final = "queued"
LEASED: Final = "leased"
DONE: Final = "done"
# What versions up to 0.1.0 stored for QUEUED. Claims still take it, so a run started
# before an upgrade (or a worker not upgraded yet, in a rolling update) goes on.
LEGACY_QUEUED = "pending"
UnitEnd = Literal["done", "queued"]  # how a holder leaves a unit


class LeaseLost(Exception):
    """The unit was reclaimed by another worker (or finished): drop its work at once."""

    def __init__(self, lease: Lease) -> None:
        super().__init__(f"lease lost on {lease.unit_id} (token {lease.token})")
        self.lease = lease


@dataclass(frozen=True)
class Lease:
    unit_id: str  # a split's or a chunk's _id: the unit of work the lease holds
    owner: str
    token: int
    until: datetime
    ttl: float
    # Which collection holds the unit ("splits" or "chunks"): the store routes by it.
    collection: str = "splits"

    def fence(self) -> dict[str, Any]:
        """The filter every write of this holder goes through."""
        return {"_id": self.unit_id, "token": self.token, "status": LEASED}

    def remaining(self, now: datetime) -> float:
        return (self.until - now).total_seconds()


def now_utc() -> datetime:
    return datetime.now(UTC)


def claimable(
    now: datetime, due_field: str = "notBefore", due_by: datetime | None = None
) -> list[dict[str, Any]]:
    """Queued and due (by `due_by`, default now), or leased by a holder that stopped
    renewing."""
    return [
        {"status": {"$in": [QUEUED, LEGACY_QUEUED]}, due_field: {"$lte": due_by or now}},
        {"status": LEASED, "leaseUntil": {"$lt": now}},
    ]


async def claim(
    coll: AsyncCollection[dict[str, Any]],
    *,
    match: Mapping[str, Any],
    owner: str,
    ttl: float,
    now: datetime | None = None,
    due_field: str = "notBefore",
    sort: Sequence[tuple[str, int]] = (("index", 1),),
    projection: Mapping[str, Any] | None = None,
    collection: str = "splits",
    ahead: float = 0.0,
) -> tuple[dict[str, Any], Lease] | None:
    """Take one claimable unit matching `match` in one find-and-modify; the reply is the
    unit itself after the claim (its token is the new holder's). `ahead`: a unit falling
    due within that many seconds is claimable already (its holder waits for it)."""
    now = now or now_utc()
    until = now + timedelta(seconds=ttl)
    due_by = now + timedelta(seconds=ahead)
    doc = await coll.find_one_and_update(
        {**match, "$or": claimable(now, due_field, due_by)},
        {
            "$set": {"status": LEASED, "owner": owner, "leaseUntil": until, "claimedAt": now},
            "$inc": {"token": 1},
        },
        sort=list(sort),
        projection=dict(projection) if projection is not None else None,
        return_document=ReturnDocument.AFTER,
    )
    if doc is None:
        return None
    return doc, Lease(doc["_id"], owner, int(doc["token"]), until, ttl, collection)


async def renew(
    coll: AsyncCollection[dict[str, Any]], lease: Lease, now: datetime | None = None
) -> Lease:
    """Extend the lease by its ttl; raise LeaseLost when the unit is no longer ours."""
    now = now or now_utc()
    until = now + timedelta(seconds=lease.ttl)
    result = await coll.update_one(lease.fence(), {"$set": {"leaseUntil": until}})
    if result.matched_count == 0:
        raise LeaseLost(lease)
    return replace(lease, until=until)


async def release(
    coll: AsyncCollection[dict[str, Any]],
    lease: Lease,
    *,
    done: bool,
    not_before: datetime | None = None,
    fields: Mapping[str, Any] | None = None,
) -> bool:
    """Give the split back (queued again, due at `not_before`) or mark it done.

    Returns False when the lease had already been lost: the caller's work on it is void.
    A done release also counts itself in `completions`, so a split completed twice would
    show in the data. (Chunks end through their own fenced write: store.write_chunk.)
    """
    update: dict[str, Any] = {
        "status": DONE if done else QUEUED,
        "owner": None,
        "leaseUntil": None,
        "notBefore": not_before or EPOCH,
    }
    if fields:
        update.update(fields)
    change: dict[str, Any] = {"$set": update}
    if done:
        update["doneBy"] = lease.owner  # who completed it, for people reading the data
        change["$inc"] = {"completions": 1}
    result = await coll.update_one(lease.fence(), change)
    return result.matched_count == 1


async def fenced_update(
    coll: AsyncCollection[dict[str, Any]], lease: Lease, update: Mapping[str, Any]
) -> None:
    """Apply `update` to the unit only if `lease` still holds it (checkpoints, results)."""
    result = await coll.update_one(lease.fence(), dict(update))
    if result.matched_count == 0:
        raise LeaseLost(lease)
