"""A minimal lease holder for the race test: claims delivery shards and "sends" by
recording each recipient once in an audit collection whose _id is the recipient id.

Run as `python -m tests.integration.racer URI DB RUN_ID OWNER`. It is killed with
SIGKILL at random moments by the test; a duplicate key in the audit collection would
mean two tokens moved the same recipient to inflight.
"""

from __future__ import annotations

import asyncio
import random
import sys

from pymongo.errors import DuplicateKeyError

from pushtask.leases import LeaseLost, claim, release, renew
from pushtask.store import Outcome, Store

LEASE_TTL = 1.5


async def work_shard(store: Store, run_id: str, doc: dict, lease) -> None:  # type: ignore[no-untyped-def]
    shard = int(doc["index"])
    await store.settle_in_doubt(lease, run_id, shard, "AtMostOnce")
    await store.recount_shard(lease, run_id, shard)
    while True:
        batch = await store.take_batch(lease, run_id, shard, limit=5)
        if not batch.recipients:
            break
        for r in batch.recipients:
            try:
                await store.db["audit"].insert_one({"_id": r["_id"], "token": lease.token})
            except DuplicateKeyError:
                await store.db["violations"].insert_one(
                    {"recipient": r["_id"], "token": lease.token}
                )
        await asyncio.sleep(random.uniform(0, 0.02))  # the "send"
        await store.record_outcomes(
            lease, batch, [Outcome(r["_id"], "sent") for r in batch.recipients]
        )
        lease = await renew(store.splits, lease)
    await store.recount_shard(lease, run_id, shard)
    await release(store.splits, lease, done=True)


async def main(uri: str, db: str, run_id: str, owner: str) -> None:
    store = Store.connect(uri, db)
    try:
        while True:
            got = await claim(
                store.splits, run_id=run_id, kind="delivery", owner=owner, ttl=LEASE_TTL
            )
            if got is None:
                left = await store.splits.count_documents(
                    {"run": run_id, "status": {"$ne": "done"}}
                )
                if not left:
                    return
                await asyncio.sleep(0.2)  # leased by others; wait for them or their expiry
                continue
            try:
                await work_shard(store, run_id, *got)
            except LeaseLost:
                await store.db["lost"].insert_one({"owner": owner, "split": got[1].split_id})
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
