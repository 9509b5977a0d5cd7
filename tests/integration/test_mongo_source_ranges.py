"""A `mongo` source cut into ranges on the MongoDB-wire servers: the ranges cover every
matching id once, hold about `range_size` ids each, and stay within MAX_RANGES and two
per worker of the run."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import pytest
from pymongo import AsyncMongoClient, MongoClient

from pushtask_worker.audience import mongosource
from pushtask_worker.audience.rows import Columns

pytestmark = pytest.mark.integration


@pytest.fixture(params=["ferretdb_uri", "mongo_uri"])
def server_uri(request: pytest.FixtureRequest) -> str:
    uri: str = request.getfixturevalue(request.param)
    return uri


def cut_and_read(
    uri: str, docs: list[dict[str, Any]], query: dict[str, Any], size: int, most: int | None = None
) -> Any:
    db_name = f"t_{secrets.token_hex(4)}"
    client: MongoClient[dict[str, Any]] = MongoClient(uri, serverSelectionTimeoutMS=5000)
    client[db_name].users.insert_many(docs)

    async def go() -> tuple[list[dict[str, Any]], list[list[str]]]:
        aclient: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
        try:
            coll = aclient[db_name].users
            ranges = await mongosource.plan_ranges(coll, query, "_id", size, most)
            read = []
            for rng in ranges:
                rows = mongosource.read_range(coll, query, None, "_id", Columns(), rng, None)
                read.append([key async for key, _, _ in rows])
            return ranges, read
        finally:
            await aclient.close()

    try:
        return asyncio.run(go())
    finally:
        client.drop_database(db_name)
        client.close()


def test_ranges_cover_every_match_once(server_uri: str) -> None:
    docs = [{"_id": f"u{i:05d}", "active": i % 5 != 0} for i in range(2_000)]
    ranges, read = cut_and_read(server_uri, docs, {"active": True}, 300)
    matching = [d["_id"] for d in docs if d["active"]]
    assert [k for part in read for k in part] == matching  # in order, each once
    assert len(ranges) == -(-len(matching) // 300)  # 1,600 matches: 6 of 300 and one of 100
    assert [len(part) for part in read] == [300] * 5 + [100]
    assert ranges[0]["gte"] is None and ranges[-1]["lt"] is None


def test_a_small_source_is_one_range(server_uri: str) -> None:
    docs = [{"_id": f"u{i}"} for i in range(50)]
    ranges, read = cut_and_read(server_uri, docs, {}, 300)
    assert ranges == [{"gte": None, "lt": None}]
    assert len(read[0]) == 50


def test_past_max_ranges_the_ranges_widen(server_uri: str, monkeypatch: Any) -> None:
    monkeypatch.setattr(mongosource, "MAX_RANGES", 4)
    docs = [{"_id": f"u{i:04d}"} for i in range(1_000)]
    ranges, read = cut_and_read(server_uri, docs, {}, 100)  # 10 of 100 would be too many
    assert len(ranges) <= 4
    assert sorted(k for part in read for k in part) == [d["_id"] for d in docs]


def test_no_more_ranges_than_two_per_worker(server_uri: str) -> None:
    """Each range read is a whole scan on a server without the id index: 20 ranges of 100
    for 2 workers would scan the collection 20 times; 4 wider ones scan it 4 times."""
    docs = [{"_id": f"u{i:04d}", "active": i % 2 == 0} for i in range(4_000)]
    ranges, read = cut_and_read(server_uri, docs, {"active": True}, 100, mongosource.most_ranges(2))
    assert len(ranges) == 4
    assert [k for part in read for k in part] == [d["_id"] for d in docs if d["active"]]
    assert max(len(part) for part in read) - min(len(part) for part in read) <= 100
