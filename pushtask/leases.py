"""Split leases with fencing tokens.

A worker owns a split only while its lease is fresh. Every claim increments the split's
token, so any write a previous holder makes afterwards (filtered by its old token)
matches nothing: that is what keeps two workers from acting on one split.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
Kind = Literal["audience", "delivery"]


class LeaseLost(Exception):
    """The split was reclaimed by another worker (or finished): drop its work at once."""

    def __init__(self, lease: Lease) -> None:
        super().__init__(f"lease lost on {lease.split_id} (token {lease.token})")
        self.lease = lease


@dataclass(frozen=True)
class Lease:
    split_id: str
    owner: str
    token: int
    until: datetime
    ttl: float

    def fence(self) -> dict[str, Any]:
        """The filter every write of this holder goes through."""
        return {"_id": self.split_id, "token": self.token, "status": "leased"}

    def remaining(self, now: datetime) -> float:
        return (self.until - now).total_seconds()


def now_utc() -> datetime:
    return datetime.now(UTC)


async def claim(
    splits: AsyncCollection[dict[str, Any]],
    *,
    run_id: str,
    kind: Kind,
    owner: str,
    ttl: float,
    now: datetime | None = None,
) -> tuple[dict[str, Any], Lease] | None:
    """Take one claimable split of `kind`: pending and due, or leased with an expired lease."""
    now = now or now_utc()
    until = now + timedelta(seconds=ttl)
    doc = await splits.find_one_and_update(
        {
            "run": run_id,
            "kind": kind,
            "$or": [
                {"status": "pending", "notBefore": {"$lte": now}},
                {"status": "leased", "leaseUntil": {"$lt": now}},
            ],
        },
        {
            "$set": {"status": "leased", "owner": owner, "leaseUntil": until, "claimedAt": now},
            "$inc": {"token": 1},
        },
        sort=[("index", 1)],
        return_document=ReturnDocument.AFTER,
    )
    if doc is None:
        return None
    return doc, Lease(doc["_id"], owner, int(doc["token"]), until, ttl)


async def renew(
    splits: AsyncCollection[dict[str, Any]], lease: Lease, now: datetime | None = None
) -> Lease:
    """Extend the lease by its ttl; raise LeaseLost when the split is no longer ours."""
    now = now or now_utc()
    until = now + timedelta(seconds=lease.ttl)
    result = await splits.update_one(lease.fence(), {"$set": {"leaseUntil": until}})
    if result.matched_count == 0:
        raise LeaseLost(lease)
    return replace(lease, until=until)


async def release(
    splits: AsyncCollection[dict[str, Any]],
    lease: Lease,
    *,
    done: bool,
    not_before: datetime | None = None,
    fields: dict[str, Any] | None = None,
) -> bool:
    """Give the split back (pending again, due at `not_before`) or mark it done.

    Returns False when the lease had already been lost: the caller's work on it is void.
    A done release also counts itself in `completions`, so a split completed twice would
    show in the data.
    """
    update: dict[str, Any] = {
        "status": "done" if done else "pending",
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
    result = await splits.update_one(lease.fence(), change)
    return result.matched_count == 1


async def fenced_update(
    splits: AsyncCollection[dict[str, Any]], lease: Lease, update: dict[str, Any]
) -> None:
    """Apply `update` to the split only if `lease` still holds it (checkpoints, counters)."""
    result = await splits.update_one(lease.fence(), update)
    if result.matched_count == 0:
        raise LeaseLost(lease)
