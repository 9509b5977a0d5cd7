"""A minimal chunk deliverer for the race test: the real ChunkDelivery, whose "send" records
each (chunk, position) once in an audit collection keyed by it.

Run as `python -m tests.integration.racer URI DB RUN_ID OWNER`. It is killed with SIGKILL
at random moments by the test; a duplicate key in the audit collection would mean one
recipient was sent twice.
"""

from __future__ import annotations

import asyncio
import random
import sys
from collections.abc import Mapping
from typing import Any

from pymongo.errors import DuplicateKeyError

from pushtask.leases import LeaseLost
from pushtask.models import Guarantee
from pushtask.records import Result
from pushtask.store import Store
from pushtask_worker.delivery import ChunkDelivery
from pushtask_worker.ratelimit import TokenBucket
from pushtask_worker.resilience import StoreGuard

LEASE_TTL = 1.5
WINDOW = 4


class AuditSender:
    """Stands in for `Sender`: the same `send` and an unlimited rate `bucket`."""

    label = "race/race"

    def __init__(self, store: Store, chunk: str) -> None:
        self.store, self.chunk = store, chunk
        self.bucket = TokenBucket(None)

    async def send(
        self, position: int, user: str, attrs: Mapping[str, Any], *, token_taken: bool = False
    ) -> Result:
        try:
            await self.store.db["audit"].insert_one(
                {"_id": f"{self.chunk}/{position}", "user": user}
            )
        except DuplicateKeyError:
            await self.store.db["violations"].insert_one({"chunk": self.chunk, "pos": position})
        await asyncio.sleep(random.uniform(0, 0.02))
        return Result(position, "sent")


async def main(uri: str, db: str, run_id: str, owner: str) -> None:
    store = Store.connect(uri, db)
    guard = StoreGuard(stopping=lambda: False)
    try:
        while True:
            got = await store.claim_chunk(run_id, owner, LEASE_TTL)
            if got is None:
                if await store.advance(run_id) == "done":
                    return
                await asyncio.sleep(0.2)  # leased by others; wait for them or their expiry
                continue
            doc, lease = got
            delivery = ChunkDelivery(
                store,
                guard,
                AuditSender(store, doc["_id"]),  # type: ignore[arg-type]
                lease,
                doc,
                guarantee=Guarantee.AT_MOST_ONCE,
                concurrency=WINDOW,
                window=WINDOW,
                halt=lambda: False,
            )
            try:
                await delivery.run()
            except LeaseLost:
                await store.db["lost"].insert_one({"owner": owner, "chunk": doc["_id"]})
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
