"""The chunked ledger's pure parts: staging, sealing a shard into chunks, the send window.

The store works per chunk, not per recipient (the arguments are in docs/architecture.md):

- An audience split writes *staging* documents, insert-only, one per (split flush, hash
  bucket), with ids made of the split, the flush's sequence number and the bucket. A flush
  starts at a checkpointed cursor and ends at a deterministic boundary, so a reclaimer that
  re-reads it writes the same ids: the store refuses them as duplicates.
- Once the audience is whole, buckets are grouped into *shards* (contiguous bucket
  ranges, about SHARD_TARGET recipients each, never more than SHARD_MAX where buckets allow).
  A shard's fenced holder *seals* it: reads its buckets' staging back, keeps the first row of
  each user, drops excluded users, orders by (due, user) and cuts *chunks* of at most
  CHUNK_SIZE recipients and CHUNK_BYTES bytes, with ids made of the shard and the chunk's
  number. Staging is complete and immutable by then, so a re-run seal writes the same
  chunks with the same ids. One user hashes to one bucket, one bucket belongs to one
  shard, a shard keeps a user once: recipients are unique per run by construction.
- A chunk is delivered under its own lease. Before sending positions past `hi` the holder
  records a new `hi` with its token; results are written with the token in the same kind
  of write. Positions below `hi` without a result are in doubt if the holder dies: never
  more than the window (see `extend_to`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import bson

from pushtask.leases import EPOCH, LEASED, QUEUED
from pushtask.records import HANDED_BACK

# Recipients per shard: a seal holds its shard in memory, a flush FLUSH_ROWS rows, so a
# worker's peak is the same whatever the audience (tests/integration/test_worker_memory.py).
SHARD_TARGET = 20_000
SHARD_MAX = 200_000  # the planner never groups buckets past this (one bucket may exceed it)
CHUNK_SIZE = 1_000  # recipients per chunk
# A chunk stays far below MongoDB's 16 MiB document limit with its results added
# (about 100 bytes a recipient).
CHUNK_BYTES = 4 << 20
FLUSH_ROWS = 20_000  # an audience split flushes its staging every this many rows...
FLUSH_BYTES = 8 << 20  # ...or bytes, whichever comes first, and at its end


def flush_rows(buckets: int) -> int:
    """Rows per flush: a flush writes a document per bucket, so it grows with the bucket
    count to keep about 200 rows in each (staging stays near 0.005 documents a recipient).
    A flush's memory grows with the bucket count then, never with the audience."""
    return max(FLUSH_ROWS, 200 * buckets)


def bucket_of(user: str, buckets: int) -> int:
    """Stable bucket of a user: the same user lands in the same bucket in every process."""
    digest = hashlib.blake2b(user.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % buckets


def staging_id(split_id: str, seq: int, bucket: int) -> str:
    return f"{split_id}/f{seq:06d}/b{bucket:04d}"


def shard_split_id(run_id: str, shard: int) -> str:
    return f"{run_id}/s/{shard}"


def chunk_id(run_id: str, shard: int, n: int) -> str:
    # Zero-padded: sorting by _id is (shard, n) order.
    return f"{run_id}/c/{shard:04d}/{n:05d}"


def row_bytes(user: str, attrs: Mapping[str, Any] | None) -> int:
    """About what a recipient costs in a staging or chunk document."""
    return len(user) + (len(bson.encode(dict(attrs))) if attrs else 0) + 16


# -- staging -------------------------------------------------------------------------------


@dataclass
class Flush:
    """Rows of one audience-split flush, split by bucket."""

    buckets: int
    exclude: bool = False
    rows: int = 0
    nbytes: int = 0

    def __post_init__(self) -> None:
        self.by_bucket: dict[int, list[dict[str, Any]]] = {}

    def add(self, user: str, attrs: Mapping[str, Any] | None, due: datetime | None) -> None:
        row: dict[str, Any] = {"u": user}
        if attrs and not self.exclude:
            row["a"] = dict(attrs)
        if due is not None and due != EPOCH and not self.exclude:
            row["d"] = due
        self.by_bucket.setdefault(bucket_of(user, self.buckets), []).append(row)
        self.rows += 1
        self.nbytes += row_bytes(user, row.get("a"))

    def full(self) -> bool:
        return self.rows >= FLUSH_ROWS or self.nbytes >= FLUSH_BYTES

    def sizes_after(self, sizes: Mapping[str, int]) -> dict[str, int]:
        """A split's staged rows per bucket once this flush is in (`sizes`: before it).
        What the shards are planned from, so planning never reads the staging back."""
        out = {k: int(v) for k, v in sizes.items()}
        if not self.exclude:
            for bucket, rows in self.by_bucket.items():
                out[str(bucket)] = out.get(str(bucket), 0) + len(rows)
        return out

    def documents(self, run_id: str, split_id: str, seq: int) -> list[dict[str, Any]]:
        return [
            {
                "_id": staging_id(split_id, seq, bucket),
                "run": run_id,
                "bucket": bucket,
                "exclude": self.exclude,
                "n": len(rows),
                "rows": rows,
            }
            for bucket, rows in sorted(self.by_bucket.items())
        ]


# -- shards --------------------------------------------------------------------------------


def shard_target(total: int, workers: int, timed: bool) -> int:
    """Recipients per shard. With per-recipient send times, every shard has a chunk falling
    due at any moment and a worker holds one chunk at a time: more shards than workers
    would leave some shards' due recipients waiting for a free worker (measured: p99 2.2 s
    late at 1,000 due a second with 3 shards and 2 workers). So a timed audience gets no
    more shards than workers, as long as a shard stays within SHARD_MAX."""
    if not timed or total <= 0:
        return SHARD_TARGET
    return min(SHARD_MAX, max(SHARD_TARGET, -(-total // max(1, workers))))


def group_buckets(
    sizes: Mapping[int, int],
    buckets: int,
    *,
    target: int = SHARD_TARGET,
    maximum: int = SHARD_MAX,
) -> list[tuple[int, int]]:
    """Contiguous bucket ranges [lo, hi) holding about `target` recipients each.

    A range closes once it reaches the target, or before a bucket that would take it past
    `maximum`. Only buckets with rows matter, but the ranges cover every bucket so that
    no staging row is ever outside a shard.
    """
    ranges: list[tuple[int, int]] = []
    lo, size = 0, 0
    for b in range(buckets):
        n = int(sizes.get(b, 0))
        if size and size + n > maximum:
            ranges.append((lo, b))
            lo, size = b, 0
        size += n
        if size >= target:
            ranges.append((lo, b + 1))
            lo, size = b + 1, 0
    if lo < buckets:
        if ranges and size == 0:
            ranges[-1] = (ranges[-1][0], buckets)  # empty tail: fold into the last range
        else:
            ranges.append((lo, buckets))
    return ranges


@dataclass(frozen=True)
class Recipient:
    user: str
    attrs: dict[str, Any] | None
    due: datetime


@dataclass(frozen=True)
class Sealed:
    recipients: list[Recipient]
    duplicates: int  # rows of a user already seen (overlapping sources, repeats)
    excluded: int  # distinct users removed by an exclusion source


def seal(staging: Iterable[Mapping[str, Any]]) -> Sealed:
    """A shard's recipients from its staging documents, read in `_id` order.

    The first row of a user wins (so the outcome does not depend on which worker read
    what first); excluded users go; the rest is ordered by (due, user).
    """
    first: dict[str, tuple[dict[str, Any] | None, datetime]] = {}
    excluded: set[str] = set()
    rows = 0
    for doc in staging:
        if doc.get("exclude"):
            excluded.update(r["u"] for r in doc["rows"])
            continue
        for r in doc["rows"]:
            rows += 1
            if r["u"] not in first:
                first[r["u"]] = (r.get("a"), r.get("d") or EPOCH)
    dropped = excluded & first.keys()
    kept = [Recipient(u, a, d) for u, (a, d) in first.items() if u not in dropped]
    kept.sort(key=lambda r: (r.due, r.user))
    return Sealed(kept, duplicates=rows - len(first), excluded=len(dropped))


def cut_chunks(
    run_id: str,
    shard: int,
    recipients: Sequence[Recipient],
    *,
    size: int = CHUNK_SIZE,
    max_bytes: int = CHUNK_BYTES,
) -> list[dict[str, Any]]:
    """Chunk documents (deterministic ids and contents) of a sealed shard."""
    chunks: list[dict[str, Any]] = []
    start = 0
    while start < len(recipients):
        end, nbytes = start, 0
        while end < len(recipients) and end - start < size:
            r = recipients[end]
            cost = row_bytes(r.user, r.attrs)
            if end > start and nbytes + cost > max_bytes:
                break
            nbytes += cost
            end += 1
        part = recipients[start:end]
        chunks.append(new_chunk(run_id, shard, len(chunks), part))
        start = end
    return chunks


def new_chunk(run_id: str, shard: int, n: int, part: Sequence[Recipient]) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "_id": chunk_id(run_id, shard, n),
        "run": run_id,
        "shard": shard,
        "n": n,
        "status": QUEUED,
        "owner": None,
        "token": 0,
        "leaseUntil": None,
        "due": part[0].due,  # of the first position not yet started (`hi`)
        "size": len(part),
        "users": [r.user for r in part],
        "hi": 0,
        "res": {},
        "ok": {},
        "counters": {},
    }
    if any(r.attrs for r in part):
        doc["attrs"] = [r.attrs or {} for r in part]
    if any(r.due != EPOCH for r in part):
        doc["dues"] = [r.due for r in part]
    return doc


# -- the send window -----------------------------------------------------------------------


def first_not_due(dues: Sequence[datetime] | None, start: int, size: int, now: datetime) -> int:
    """The first position at or after `start` that is not due yet (`size` if none)."""
    if not dues:
        return size
    for p in range(start, size):
        if dues[p] > now:
            return p
    return size


def extend_to(hi: int, doubt: int, window: int, limit: int) -> int:
    """The next `hi` once a write lands: positions below it without a recorded result
    (`doubt`, counted after that write) never exceed `window`, so a holder that dies leaves
    at most `window` recipients in doubt. Never past `limit` (the chunk's end, or its first
    position not yet due: an unsent recipient must not be taken for one in doubt)."""
    return max(hi, min(limit, hi + window - doubt))


@dataclass
class SendWindow:
    """A chunk holder's window bookkeeping, kept by the rule above (`extend_to`).

    `hi`: positions below it may be started (it is recorded before any of them is);
    `doubt`: positions below the recorded `hi` without a recorded result, what a holder
    that dies now would leave in doubt. `hi` only moves so far that `doubt` stays within
    `size`."""

    hi: int
    size: int
    doubt: int = 0

    def has_room(self) -> bool:
        return self.doubt < self.size

    def next_hi(self, recording: int, limit: int) -> int:
        """The `hi` to record beside `recording` more results (never past `limit`)."""
        return extend_to(self.hi, self.doubt - recording, self.size, limit)

    def moved(self, recorded: int, hi: int) -> None:
        """A write landed: `recorded` results and `hi`."""
        self.doubt = self.doubt - recorded + (hi - self.hi)
        self.hi = hi


# -- results -------------------------------------------------------------------------------
#
# Most recipients are sent at the first attempt, and every result of one write shares the
# time and the worker: those are recorded as one list of positions per write, under `ok`
# (keyed by the holder's token and the write's first position, which no other write of
# that holder has: a write retried after a lost reply sets the same key again). Every
# other result (failures, retries, unknown, hand-backs) has its own entry under `res`.
# A list of ints costs a fraction of a sub-document per recipient, to encode in the
# worker and to apply in the store (measured: docs/benchmarks.md).

# Versions up to 0.1.0 recorded a hand-back as "pending": read as HANDED_BACK everywhere.
_LEGACY_RESULT = {"pending": HANDED_BACK}


def _status(entry: Mapping[str, Any]) -> str:
    s = str(entry["s"])
    return _LEGACY_RESULT.get(s, s)


def result_entry(status: str, attempts: int, at: datetime, worker: str, error: str | None) -> dict:
    entry: dict[str, Any] = {"s": status, "n": attempts, "t": at, "w": worker}
    if error:
        entry["e"] = error[:500]
    return entry


def ok_key(token: int, first: int) -> str:
    return f"{token}_{first}"


def result_at(chunk: Mapping[str, Any], position: int) -> dict[str, Any] | None:
    """The recorded result of one position (in either encoding), None if there is none."""
    entry = (chunk.get("res") or {}).get(str(position))
    if entry is not None:
        return {**entry, "s": _status(entry)}
    for batch in (chunk.get("ok") or {}).values():
        if position in batch["p"]:
            return {"s": "sent", "n": 1, "t": batch.get("t"), "w": batch.get("w")}
    return None


def recorded(chunk: Mapping[str, Any]) -> dict[int, str]:
    """Position → recorded status, for every position of a chunk with a result (a
    hand-back included)."""
    out = {p: "sent" for batch in (chunk.get("ok") or {}).values() for p in batch["p"]}
    out.update({int(p): _status(e) for p, e in (chunk.get("res") or {}).items()})
    return out


def failures(chunk: Mapping[str, Any]) -> list[tuple[int, str]]:
    """(position, error) of every failed recipient of a chunk, in position order (failed
    results are never in the compact `ok` lists)."""
    res = chunk.get("res") or {}
    return sorted((int(p), str(e.get("e") or "")) for p, e in res.items() if e.get("s") == "failed")


def in_doubt(chunk: Mapping[str, Any]) -> list[int]:
    """Positions a chunk's earlier holders may have started but have no result for."""
    done = recorded(chunk)
    return [p for p in range(int(chunk.get("hi") or 0)) if p not in done]


def tally(counters: Mapping[str, int], statuses: Iterable[str], unknown: int = 0) -> dict[str, int]:
    """A unit's counters after recording results with these statuses.

    Written as absolute values by the unit's only (fenced) holder, never as `$inc`: a
    write whose reply was lost in an outage is simply made again, and must not count twice.
    """
    out = {k: int(v) for k, v in counters.items()}
    for status in statuses:
        if status == HANDED_BACK:  # not a result: nothing to count
            continue
        out[status] = out.get(status, 0) + 1
        out["attempted"] = out.get("attempted", 0) + 1
    if unknown:
        out["unknown"] = out.get("unknown", 0) + unknown
    return out


def handed_back(chunk: Mapping[str, Any]) -> list[int]:
    """Positions handed back unsent at a shutdown (a retry cut short): to be sent again."""
    res = chunk.get("res") or {}
    return sorted(int(p) for p, r in res.items() if _status(r) == HANDED_BACK)


def sent_since(chunk: Mapping[str, Any], since: datetime) -> list[str]:
    """Users of a chunk that may have received its message at or after `since`: recorded
    as sent or unknown (in doubt: perhaps delivered) at that time or later, or started by
    the chunk's present holder and without a result yet (being sent right now). What a
    frequency cap leaves out."""
    users = chunk.get("users") or []
    out: set[int] = set()
    for batch in (chunk.get("ok") or {}).values():
        if _aware(batch["t"]) >= since:
            out.update(batch["p"])
    res = chunk.get("res") or {}
    for p, entry in res.items():
        if _status(entry) in ("sent", "unknown") and _aware(entry["t"]) >= since:
            out.add(int(p))
    if chunk.get("status") == LEASED:  # a holder at work: what it started is going out now
        done = recorded(chunk)
        out.update(p for p in range(int(chunk.get("hi") or 0)) if p not in done)
    return [users[p] for p in sorted(out) if p < len(users)]


def _aware(at: datetime) -> datetime:
    # A store read without tz_aware gives naive UTC datetimes.
    return at if at.tzinfo else at.replace(tzinfo=UTC)
