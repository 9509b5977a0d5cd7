"""The console's view of a tracked run's links, read from a real MongoDB-wire server:
each link of the frozen message with the recipients who clicked it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from pushtask.models import PushTaskSpec
from pushtask.planning import TaskRef, plan_run
from pushtask.store import Store
from pushtask_console.app import Console, _ledger
from pushtask_console.auth import Auth

pytestmark = pytest.mark.integration


def tracked_spec() -> dict[str, Any]:
    return PushTaskSpec.model_validate(
        {
            "audience": {"sources": [{"kind": "inline", "users": ["u1", "u2"]}]},
            "message": {
                "webhook": {"url": "https://hooks.example/in"},
                "template": {"body": "https://shop.example/a or https://shop.example/b"},
                "tracking": {
                    "links": True,
                    "baseUrl": "https://t.example",
                    "secretRef": {"name": "k"},
                },
            },
        }
    ).model_dump(by_alias=True, mode="json", exclude_none=True)


def test_the_task_page_lists_each_link_with_its_clickers(uri: str) -> None:
    async def scenario() -> dict[str, Any]:
        store = Store.connect(uri)
        try:
            plan = plan_run(
                TaskRef("ns", "t", "uid-00000000"), 1, tracked_spec(), now=datetime.now(UTC)
            )
            await store.create_run(plan.run_doc, plan.splits)
            run_id = str(plan.run_doc["_id"])
            for user, link in (("u1", 1), ("u2", 1), ("u2", 1), ("u1", 0)):
                await store.record_click(run_id, user, link)
            console = Console(cluster=None, auth=Auth("t"), store=store)  # type: ignore[arg-type]
            untracked = await _ledger(console, run_id)
            assert untracked["links"] == []
            return await _ledger(console, run_id, tracked=True)
        finally:
            await store.close()

    page = asyncio.run(scenario())
    assert page["storeError"] == ""
    assert page["links"] == [
        {"link": 0, "target": "https://shop.example/a", "clickers": 1},
        {"link": 1, "target": "https://shop.example/b", "clickers": 2},
    ]
