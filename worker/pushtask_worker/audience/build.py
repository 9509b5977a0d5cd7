"""Build one audience split: read its range of a source and stage its rows (or exclusions).

Rows go to the store flush by flush, as staging documents per hash bucket; after each
flush the split's cursor is checkpointed, so a worker that reclaims the split resumes
there. Re-read rows change nothing: a flush's staging ids are deterministic, skipped rows
are keyed by their position in the split, and the shard's seal keeps one row per user.
A planning split (a MongoDB query or a URL whose size is unknown) is first cut into range
splits that every worker can claim.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError
from pymongo.uri_parser import parse_uri

from pushtask import ledger
from pushtask.leases import Lease
from pushtask.planning import new_split
from pushtask.store import Store
from pushtask_worker import metrics
from pushtask_worker.audience import capsource, mongosource, urlsource
from pushtask_worker.audience.rows import (
    Columns,
    Row,
    Skip,
    detect_format,
    parse_text,
    to_recipient,
)
from pushtask_worker.resilience import StoreGuard

log = logging.getLogger("pushtask.worker.audience")

# How a planning split is cut: documents per MongoDB range, bytes per URL block. The
# environment may set smaller ones (PUSHTASK_MONGO_RANGE_SIZE, PUSHTASK_URL_BLOCK_BYTES).
MONGO_RANGE_SIZE = 50_000
URL_BLOCK_BYTES = 8 << 20
# (row position, parsed row or skip, cursor after it)
Item = tuple[Any, Row | Skip, Any]


class SourceReaders:
    """Connections to audience sources, shared by the splits a worker builds."""

    def __init__(self, system_uri: str, env: Mapping[str, str] | None = None) -> None:
        self.system_uri = system_uri
        self.env = os.environ if env is None else env
        self._clients: dict[str, AsyncMongoClient[dict[str, Any]]] = {}
        self._http: aiohttp.ClientSession | None = None

    def setting(self, name: str, default: int) -> int:
        return int(self.env.get(name) or default)

    def mongo_uri(self, part: str, index: int) -> str:
        # The operator maps a source's Secret to this variable; no Secret: the system store.
        return self.env.get(f"PUSHTASK_AUDIENCE_{part.upper()}_{index}_URI") or self.system_uri

    def mongo(self, uri: str) -> AsyncMongoClient[dict[str, Any]]:
        if uri not in self._clients:
            self._clients[uri] = AsyncMongoClient(uri, tz_aware=True)
        return self._clients[uri]

    def http(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
            )
        return self._http

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        if self._http is not None:
            await self._http.close()


def source_spec(run: Mapping[str, Any], ref: Mapping[str, Any]) -> dict[str, Any]:
    part = "exclude" if ref["exclude"] else "sources"
    return dict(run["spec"]["audience"][part][ref["index"]])


def describe_source(run: Mapping[str, Any], ref: Mapping[str, Any]) -> str:
    """The source as a person finds it in the spec: "exclusion spec.audience.exclude[0]
    (mongo optouts)" (failure reasons name it)."""
    part = "exclude" if ref.get("exclude") else "sources"
    what = "exclusion" if ref.get("exclude") else "audience source"
    try:
        source = source_spec(run, ref)
    except (KeyError, IndexError, TypeError):
        return f"{what} spec.audience.{part}[{ref.get('index')}]"
    kind = source.get("kind")
    name = {"mongo": "collection", "configMap": "name", "url": "url", "recentlySent": "within"}.get(
        str(kind)
    )
    detail = f" {source.get(name)}" if name and source.get(name) else ""
    return f"{what} spec.audience.{part}[{ref['index']}] ({kind}{detail})"


def configmap_text(run: Mapping[str, Any], ref: Mapping[str, Any]) -> str:
    key = f"exclude.{ref['index']}" if ref["exclude"] else str(ref["index"])
    inline = run.get("inline") or {}
    if key not in inline:
        raise urlsource.SourceError(f"ConfigMap content {key!r} missing from the run document")
    return str(inline[key])


class SplitBuilder:
    def __init__(
        self,
        store: Store,
        guard: StoreGuard,
        readers: SourceReaders,
        run: Mapping[str, Any],
        doc: Mapping[str, Any],
        lease: Lease,
        halt: Callable[[], bool],
    ) -> None:
        self.store, self.guard, self.readers = store, guard, readers
        self.run, self.doc, self.lease, self.halt = run, doc, lease, halt
        self.run_id: str = run["_id"]
        self.ref: Mapping[str, Any] = doc["source"]
        self.source = source_spec(run, self.ref)
        self.part = "exclude" if self.ref["exclude"] else "sources"
        self.flush_rows = readers.setting(
            "PUSHTASK_FLUSH_ROWS", ledger.flush_rows(int(run["buckets"]))
        )
        # As of the last checkpoint: this holder counts on from there (see flush_staging).
        self.counters: dict[str, int] = {k: int(v) for k, v in (doc.get("counters") or {}).items()}
        self.sizes: dict[str, int] = {k: int(v) for k, v in (doc.get("sizes") or {}).items()}

    async def build(self) -> bool:
        """Read the split; True when it was finished (released as done).

        Rows are staged flush by flush. A flush starts at a checkpoint and ends at a
        boundary that depends only on the rows read (ledger.FLUSH_ROWS/FLUSH_BYTES), so a
        worker that reclaims the split re-reads from the last checkpoint into the same
        staging ids: what the lost holder wrote of that flush is refused as a duplicate.
        """
        if self.ref.get("expand"):
            await self._expand()
            return True
        saved = self.doc.get("cursor")
        at = saved.get("at") if isinstance(saved, Mapping) else None
        seq = int(saved.get("seq", 0)) if isinstance(saved, Mapping) else 0
        flush = self._new_flush()
        skips: list[tuple[Any, str, str]] = []
        async for position, item, after in self._items(at):
            if isinstance(item, Skip):
                skips.append((position, item.reason, item.raw))
            else:
                flush.add(item.user, item.attrs, item.due)
            if flush.rows + len(skips) >= self.flush_rows or flush.nbytes >= ledger.FLUSH_BYTES:
                await self._flush(flush, skips, seq, after)
                flush, skips, seq = self._new_flush(), [], seq + 1
                if self.halt():
                    await self.guard.call(lambda: self.store.release(self.lease, done=False))
                    return False
        await self._flush(flush, skips, seq, None)
        await self.guard.call(lambda: self.store.release(self.lease, done=True), "release")
        return True

    def _new_flush(self) -> ledger.Flush:
        return ledger.Flush(int(self.run["buckets"]), exclude=bool(self.ref["exclude"]))

    async def _flush(
        self, flush: ledger.Flush, skips: list[tuple[Any, str, str]], seq: int, after: Any
    ) -> None:
        store, lease = self.store, self.lease
        if skips and self.ref["exclude"]:
            # A bad exclusion row is no recipient: reported in the log, not in the counts.
            log.warning(
                "bad rows in an exclusion source", extra={"n": len(skips), "sample": skips[0][1]}
            )
            skips = []
        staging = flush.documents(self.run_id, lease.unit_id, seq)
        counters = {
            "inserted": self.counters.get("inserted", 0) + (0 if flush.exclude else flush.rows),
            "skipped": self.counters.get("skipped", 0) + len(skips),
        }
        sizes = flush.sizes_after(self.sizes)
        await self.guard.call(
            lambda: store.flush_staging(
                lease,
                self.run_id,
                staging,
                skips,
                cursor={"at": after, "seq": seq + 1},
                counters=counters,
                sizes=sizes,
            ),
            "stage rows",
        )
        self.counters, self.sizes = counters, sizes
        if skips:
            task = self.run.get("task") or {}
            label = f"{task.get('namespace')}/{task.get('name')}"
            metrics.RESULTS.labels(label, "skipped").inc(len(skips))

    def _columns(self, default_user: str) -> Columns:
        return Columns.from_spec(self.source, default_user=default_user)

    async def _items(self, cursor: Any) -> AsyncIterator[Item]:
        # A read that fails (the source's store away, a connection cut mid-body) is a
        # source error: the worker retries the split with back-off and then fails the run.
        # It must never end the split early, as if the source had ended there.
        try:
            async for item in self._read(cursor):
                yield item
        except (PyMongoError, aiohttp.ClientError) as exc:
            raise urlsource.SourceError(f"{type(exc).__name__}: {exc}") from exc

    async def _read(self, cursor: Any) -> AsyncIterator[Item]:
        kind = self.source["kind"]
        rng = self.ref.get("range") or {}
        if kind == "inline":
            # An entry is a user id or {id, ...attributes}; sendAtField names one of them.
            columns = Columns(user="id", send_at=self.source.get("sendAtField") or None)
            users = self.source.get("users") or []
            start = int(cursor if cursor is not None else rng.get("start", 0))
            for i in range(start, int(rng.get("end", len(users)))):
                value = users[i]
                data = value if isinstance(value, Mapping) else {"id": value}
                yield i, to_recipient(data, columns, repr(value)[:200]), i + 1
        elif kind == "configMap":
            fmt = detect_format(None, self.source.get("format", "lines"))
            text = configmap_text(self.run, self.ref)
            columns = self._columns("id")
            skip_to = int(cursor or 0)
            for n, item in parse_text(text.splitlines(), fmt, columns):
                if n >= skip_to:
                    yield n, item, n + 1
        elif kind == "mongo":
            coll = self._collection()
            exists = await mongosource.collection_exists(coll)
            if exists is None and self.ref["exclude"] and not self.source.get("allowMissing"):
                raise urlsource.SourceMissing(
                    f"cannot tell whether collection {coll.database.name}.{coll.name} exists "
                    "(its user may not list collections): grant listCollections, or set "
                    "allowMissing: true to read it without the check"
                )
            if exists is False:
                missing = f"collection {coll.database.name}.{coll.name} does not exist"
                if self.source.get("allowMissing"):
                    return
                if self.ref["exclude"]:
                    # Read as empty, it would send to everyone it lists (a typo'd name).
                    raise urlsource.SourceMissing(
                        f"{missing} (allowMissing: true reads a missing collection as empty)"
                    )
                # A source: nobody to add from it; counted and shown as a skipped row.
                log.warning("audience source reads as empty", extra={"reason": missing})
                yield "missing", Skip(f"{missing}: read as empty", coll.name), None
                return
            async for key, item, after in mongosource.read_range(
                coll,
                self.source.get("filter") or {},
                self.source.get("projection"),
                self.source.get("idField", "_id"),
                self._columns(self.source.get("idField", "_id")),
                rng,
                cursor,
            ):
                yield key, item, after
        elif kind == "recentlySent":
            async for key, row, after in capsource.read_recently_sent(
                self.store, self.run, self.source, cursor
            ):
                yield key, row, after
        elif kind == "url":
            url = self.source["url"]
            fmt = detect_format(url, self.source.get("format"))
            async for offset, item, after in urlsource.read_url_range(
                self.readers.http(), url, fmt, self._columns("id"), dict(rng), cursor
            ):
                yield offset, item, after
        else:
            raise urlsource.SourceError(f"unknown source kind {kind!r}")

    def _collection(self) -> Any:
        uri = self.readers.mongo_uri(self.part, int(self.ref["index"]))
        db = self.source.get("database") or parse_uri(uri).get("database") or "pushtask"
        return self.readers.mongo(uri)[db][self.source["collection"]]

    async def _expand(self) -> None:
        """Cut a planning split into range splits, then mark it done (children first, so
        the audience is never seen as complete without them)."""
        try:
            ranges = await self._plan()
        except (PyMongoError, aiohttp.ClientError) as exc:
            raise urlsource.SourceError(f"{type(exc).__name__}: {exc}") from exc
        base = self.doc
        children = [
            new_split(
                self.run_id,
                f"{base['_id']}.{k}",
                "audience",
                int(base["index"]) * 1000 + k + 1,
                source={**base["source"], "range": rng, "expand": False},
                cursor=None,
            )
            for k, rng in enumerate(ranges)
        ]
        await self.guard.call(lambda: self.store.add_splits(children), "add range splits")
        await self.guard.call(lambda: self.store.release(self.lease, done=True), "release")
        log.info("source cut into ranges", extra={"split": base["_id"], "ranges": len(children)})

    async def _plan(self) -> list[dict[str, Any]]:
        kind = self.source["kind"]
        if kind == "mongo":
            return await mongosource.plan_ranges(
                self._collection(),
                self.source.get("filter") or {},
                self.source.get("idField", "_id"),
                self.readers.setting("PUSHTASK_MONGO_RANGE_SIZE", MONGO_RANGE_SIZE),
                mongosource.most_ranges(int((self.run.get("spec") or {}).get("workers") or 1)),
            )
        url = self.source["url"]
        fmt = detect_format(url, self.source.get("format"))
        info = await urlsource.probe(self.readers.http(), url, fmt)
        block = self.readers.setting("PUSHTASK_URL_BLOCK_BYTES", URL_BLOCK_BYTES)
        return urlsource.plan_ranges(info, block)
