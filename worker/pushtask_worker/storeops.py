"""Store operations the worker needs beyond pushtask.store (same data model and fencing)."""

from __future__ import annotations

from pushtask.leases import Lease, renew
from pushtask.store import Store


async def requeue_orphans(store: Store, lease: Lease, run_id: str, shard: int) -> int:
    """Put back to pending what this holder moved to inflight but never got to send.

    A take_batch whose reply was lost (the store went down between its update and its
    read-back) is retried with a new batch tag: the recipients the first attempt moved stay
    inflight under this lease's token, yet were never handed to a channel, since only what
    the read-back returns is sent. Call this only when none of this holder's batches is in
    flight: then every inflight recipient with its token is such an orphan, safe to requeue
    under either guarantee. Without it the shard would never finish (they are not "in
    doubt": settle_in_doubt only takes older tokens).
    """
    await renew(store.splits, lease)  # fenced: a holder that lost the shard moves nothing
    result = await store.recipients.update_many(
        {"run": run_id, "shard": shard, "status": "inflight", "token": lease.token},
        {"$set": {"status": "pending"}, "$inc": {"attempts": -1}},
    )
    return int(result.modified_count)
