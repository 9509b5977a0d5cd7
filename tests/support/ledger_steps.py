"""A worker's steps done with the store's own operations, for tests that simulate workers
(the store's and the operator's integration tests): stage, seal, record."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pushtask import ledger
from pushtask.leases import Lease
from pushtask.records import Result
from pushtask.store import Store


async def stage_audience(
    store: Store, run_id: str, owner: str = "w", *, done: bool = True, sizes: bool = True
) -> None:
    """Read every inline audience split the way a worker does (one flush each); without
    `sizes`, as versions up to 0.1.0 did (no rows per bucket on the split)."""
    run_doc = await store.get_run(run_id)
    assert run_doc is not None
    while got := await store.claim_split(run_id, "audience", owner, 30):
        doc, lease = got
        part = "exclude" if doc["source"]["exclude"] else "sources"
        users = run_doc["spec"]["audience"][part][doc["source"]["index"]]["users"]
        rng = doc["source"]["range"]
        flush = ledger.Flush(run_doc["buckets"], exclude=doc["source"]["exclude"])
        for u in users[rng["start"] : rng["end"]]:
            user = u["id"] if isinstance(u, dict) else u
            attrs = {k: v for k, v in u.items() if k != "id"} if isinstance(u, dict) else None
            flush.add(user, attrs, None)
        staging = flush.documents(run_id, lease.unit_id, 0)
        counters = {"inserted": 0 if flush.exclude else flush.rows, "skipped": 0}
        await store.flush_staging(
            lease,
            run_id,
            staging,
            [],
            cursor={"seq": 1},
            counters=counters,
            sizes=flush.sizes_after({}) if sizes else None,
        )
        assert await store.release(lease, done=done)


async def seal_all(store: Store, run_id: str, owner: str = "w") -> None:
    run_doc = await store.get_run(run_id)
    assert run_doc is not None
    while got := await store.claim_split(run_id, "seal", owner, 30):
        await store.seal_shard(got[1], run_id, got[0], run_doc["chunkSize"])


async def record(
    store: Store,
    lease: Lease,
    base: dict[str, int] | None = None,
    *,
    results: Sequence[Result] = (),
    unknown: Sequence[int] = (),
    **kw: Any,
) -> Lease:
    """write_chunk with the counters a holder keeps (`base`: what its claim found)."""
    counters = ledger.tally(base or {}, [r.status for r in results], len(unknown))
    return await store.write_chunk(lease, counters=counters, results=results, unknown=unknown, **kw)


async def deliver(
    store: Store,
    run_id: str,
    owner: str,
    limit: int | None = None,
    status: Literal["sent", "failed"] = "sent",
) -> int:
    """Send every claimable chunk as `owner` (all with `status`); with `limit`, start that
    many positions of one chunk, record half of them and stop holding its lease (a crash)."""
    sent = 0
    while got := await store.claim_chunk(run_id, owner, 30):
        doc, lease = got
        base = doc.get("counters") or {}
        doubt = ledger.in_doubt(doc)
        lease = await record(store, lease, base, unknown=doubt, hi=int(doc["hi"]))
        base = ledger.tally(base, [], len(doubt))
        todo = range(int(doc["hi"]), int(doc["size"]))
        if limit is not None:
            results = [Result(p, status) for p in todo[: limit // 2]]
            await record(store, lease, base, results=results, hi=todo.start + limit)
            return sent + len(results)
        results = [Result(p, status) for p in todo]
        await record(store, lease, base, results=results, hi=int(doc["size"]), end="done")
        sent += len(results)
    await store.advance(run_id)
    return sent
