"""A MongoDB query over a users collection, cut into ranges of its id field.

The first worker to claim the source reads the matching ids once, in id order, and keeps
every ``range_size``-th as a boundary; each range becomes an audience split that any
worker reads with ``{filter, id: {$gte: lo, $lt: hi}}`` sorted by id. The checkpoint is
the last id read, so a reclaimer resumes with ``$gt``. Only find and sort: served by
MongoDB, FerretDB and mongo-java-server alike.

Defence in depth: the filter and projection are checked against the allow-list of
`pushtask.mongoquery` here too, before anything is sent to the database, so a run
document written by anything other than a current operator cannot run code there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import OperationFailure

from pushtask import mongoquery
from pushtask_worker.audience.rows import Columns, Row, Skip, to_recipient
from pushtask_worker.audience.urlsource import SourceError

MAX_RANGES = 256
# Ranges per worker of the run, at most. On MongoDB a range read walks the id index, so
# its cost is its length and fewer, longer ranges cost nothing more; on a server that
# cannot (mongo-java-server, FerretDB where it does not push the filter down) every range
# read scans the whole collection, so each range more is one whole scan more. Two per
# worker keeps every worker reading while the last ranges finish.
RANGES_PER_WORKER = 2


def most_ranges(workers: int) -> int:
    return max(1, RANGES_PER_WORKER * workers)


class QueryNotAllowed(SourceError):
    """The source's filter or projection uses an operator outside the allow-list."""


def check_query(query: Mapping[str, Any], projection: Mapping[str, Any] | None) -> None:
    """Raise `QueryNotAllowed` naming the first refused part; nothing reaches MongoDB."""
    try:
        mongoquery.check(query, "filter")
        if projection is not None:
            mongoquery.check(projection, "projection")
    except mongoquery.QueryRefused as exc:
        raise QueryNotAllowed(f"mongo source query refused: {exc}") from None


UNAUTHORIZED = 13


async def collection_exists(coll: AsyncCollection[dict[str, Any]]) -> bool | None:
    """Whether the collection exists: a find on a missing one answers like an empty one,
    which must not pass for "nobody" when the source is an exclusion list. None: the
    source's user may not list collections (a role with `find` only), so nobody can tell.

    Membership, not the filter alone: mongo-java-server ignores listCollections' filter."""
    try:
        names = await coll.database.list_collection_names(filter={"name": coll.name})
    except OperationFailure as exc:
        if exc.code == UNAUTHORIZED:
            return None
        raise
    return coll.name in names


def range_filter(
    base: Mapping[str, Any], id_field: str, rng: Mapping[str, Any] | None, after: Any = None
) -> dict[str, Any]:
    cond: dict[str, Any] = {}
    if rng is not None and rng.get("gte") is not None:
        cond["$gte"] = rng["gte"]
    if rng is not None and rng.get("lt") is not None:
        cond["$lt"] = rng["lt"]
    if after is not None:
        cond["$gt"] = after
        cond.pop("$gte", None)
    if not cond:
        return dict(base)
    if not base:
        return {id_field: cond}
    return {"$and": [dict(base), {id_field: cond}]}


async def plan_ranges(
    coll: AsyncCollection[dict[str, Any]],
    query: Mapping[str, Any],
    id_field: str,
    range_size: int,
    most: int | None = None,
) -> list[dict[str, Any]]:
    """Boundaries every ``range_size`` matching ids (fewer, wider ranges past ``most``):
    [{gte, lt}, ...] covering all ids.

    One pass over the matching ids in id order, the id alone read. A count and then a
    skip per boundary walks the ids before each boundary again: n boundaries cost n
    passes (at 800,000 matches on mongo-java-server, measured: the count 31.7 s and each
    skip 34.5 s, 15 of them; this one pass 17.6 s). On MongoDB a skip walks the index,
    and with a filter on other fields every document before it as well."""
    check_query(query, None)
    size = max(1, range_size)
    bounds: list[Any] = []
    seen = 0
    cursor = coll.find(dict(query), {id_field: 1}, sort=[(id_field, 1)], batch_size=10_000)
    async for doc in cursor:
        if seen and seen % size == 0:
            value = doc.get(id_field)
            if value is not None and (not bounds or value != bounds[-1]):
                bounds.append(value)
        seen += 1
    limit = min(MAX_RANGES, most or MAX_RANGES)
    if len(bounds) >= limit:
        every = -(-(len(bounds) + 1) // limit)
        bounds = bounds[every - 1 :: every]
    edges: list[Any] = [None, *bounds, None]
    return [{"gte": edges[i], "lt": edges[i + 1]} for i in range(len(edges) - 1)]


async def read_range(
    coll: AsyncCollection[dict[str, Any]],
    query: Mapping[str, Any],
    projection: Mapping[str, Any] | None,
    id_field: str,
    columns: Columns,
    rng: Mapping[str, Any] | None,
    after: Any,
    batch_size: int = 1000,
) -> AsyncIterator[tuple[str, Row | Skip, Any]]:
    """(row key, row, checkpoint) for every match in the range, in id order."""
    check_query(query, projection)
    proj = dict(projection) if projection else None
    if proj is not None and any(bool(v) for v in proj.values()):
        proj.setdefault(id_field, 1)
        if columns.user != id_field:
            proj.setdefault(columns.user, 1)
        if columns.send_at:
            proj.setdefault(columns.send_at, 1)
    cursor = coll.find(
        range_filter(query, id_field, rng, after), proj, sort=[(id_field, 1)], batch_size=batch_size
    )
    async for doc in cursor:
        key = doc.get(id_field)
        data = {k: v for k, v in doc.items() if not (k == "_id" and id_field != "_id")}
        if columns.user not in data and key is not None:
            data[columns.user] = key
        raw = repr({k: data[k] for k in list(data)[:8]})[:500]
        yield str(key), to_recipient(data, columns, raw), key
