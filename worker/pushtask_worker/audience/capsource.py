"""The `recentlySent` exclusion: users that matching runs sent to in the window, read from
their ledgers (the rules are in pushtask/frequencycap.py and ledger.sent_since).

One chunk of another run is held at a time, and the users read go to staging flush by
flush like any exclusion's rows: a seal then holds only its own buckets' share, so a cap
by two million-recipient runs costs a worker no more memory than a cap by ten users.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from pushtask import frequencycap, ledger
from pushtask.store import Store
from pushtask_worker.audience.rows import Row

# (position, row, cursor after it): the cursor is {run, chunk, n}, the n first users of
# that chunk of that run already read, so a reclaimer resumes exactly there.
Item = tuple[str, Row, dict[str, Any]]


async def read_recently_sent(
    store: Store, run_doc: Mapping[str, Any], source: Mapping[str, Any], cursor: Any
) -> AsyncIterator[Item]:
    since = frequencycap.window_start(run_doc, source)
    namespace = str((run_doc.get("task") or {}).get("namespace"))
    runs = [
        str(doc["_id"])
        for doc in await store.runs_sending_since(namespace, since, besides=str(run_doc["_id"]))
        if frequencycap.matches(source.get("selector"), (doc.get("task") or {}).get("labels"))
    ]
    at: Mapping[str, Any] = cursor if isinstance(cursor, Mapping) else {}
    for run_id in runs:
        if at and run_id < at["run"]:
            continue
        resume = at if at and run_id == at["run"] else None
        first = str(resume["chunk"]) if resume else None
        async for chunk in store.chunks_from(run_id, first):
            skip = int(resume["n"]) if resume and chunk["_id"] == first else 0
            users = ledger.sent_since(chunk, since)
            for n in range(skip, len(users)):
                after = {"run": run_id, "chunk": chunk["_id"], "n": n + 1}
                yield f"{chunk['_id']}#{n}", Row(users[n], {}), after
