"""The operator started before its MongoDB answers (the chart starts both at once): it
waits and tries again, then makes its indexes; it does not exit into a restart loop."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path

import pytest

from pushtask.store import Store
from pushtask_operator import main as operator_main
from tests.support.workers import PrivateMongo

pytestmark = pytest.mark.integration


def test_the_operator_waits_for_a_mongodb_that_starts_after_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    mongo = PrivateMongo(tmp_path / "late.db", memory=True)
    if not mongo.available():
        pytest.fail("devstack's mongo-java-server is not built (python -m devstack build)")
    monkeypatch.setattr(operator_main, "STORE_WAIT_MAX", 1.0)
    starter = threading.Timer(3.0, mongo.start)
    starter.start()
    began = time.monotonic()
    logger = logging.getLogger("pushtask.operator")
    logger.addHandler(caplog.handler)  # it may not propagate to the root's handlers
    try:
        asyncio.run(_start(mongo.uri))
        waited = time.monotonic() - began
        names = asyncio.run(_index_names(mongo.uri))
    finally:
        logger.removeHandler(caplog.handler)
        starter.join()
        mongo.stop()
    assert waited >= 3.0  # it really waited for the server, and then went on
    assert any("MongoDB does not answer yet" in r.getMessage() for r in caplog.records)
    assert names  # the indexes were made once it answered


async def _start(uri: str) -> None:
    # Nothing listens yet: each try fails fast (server selection 300 ms).
    store = Store.connect(uri, serverSelectionTimeoutMS=300)
    try:
        await asyncio.wait_for(operator_main.wait_for_store(store), 60)
    finally:
        await store.close()


async def _index_names(uri: str) -> list[str]:
    store = Store.connect(uri)
    try:
        return [
            name
            for coll in await store.db.list_collection_names()
            async for name in _names(store, coll)
        ]
    finally:
        await store.close()


async def _names(store: Store, coll: str):  # type: ignore[no-untyped-def]
    async for index in await store.db[coll].list_indexes():
        if index["name"] != "_id_":
            yield index["name"]
