"""The tracker served on a real localhost port, over a real MongoDB-wire server: tracked
links redirect to the run's frozen targets and each (run, user, link) counts once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from pymongo import MongoClient

from pushtask.models import PushTaskSpec
from pushtask.planning import TaskRef, plan_run
from pushtask.store import Store
from pushtask.tracking import sign
from pushtask_tracker.app import Tracker, make_app

pytestmark = pytest.mark.integration
T = TypeVar("T")
KEY = b"tracker-key-0123456789"
OLD_KEY = b"tracker-key-previous"
TARGETS = ("https://shop.example/sale", "https://shop.example/help?x=1&y=2")
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36"


def _spec() -> dict[str, Any]:
    spec = PushTaskSpec.model_validate(
        {
            "audience": {"sources": [{"kind": "inline", "users": ["u1", "u2", "u3"]}]},
            "message": {
                "webhook": {"url": "https://hooks.example/in"},
                "template": {
                    "body": f"Hi {{{{ user }}}}, see {TARGETS[0]}",
                    "link": TARGETS[1],
                },
                "tracking": {
                    "links": True,
                    "baseUrl": "https://t.example.com",
                    "secretRef": {"name": "tracker"},
                },
            },
        }
    )
    return spec.model_dump(by_alias=True, mode="json", exclude_none=True)


Client = Callable[..., Awaitable[tuple[int, str | None]]]


async def _with_tracker(uri: str, body: Callable[[Store, str, Client], Awaitable[T]]) -> T:
    """A run stored on `uri`, the tracker serving it on a localhost port, and a client."""
    store = Store.connect(uri)
    plan = plan_run(TaskRef("ns", "sale", "uid-12345678"), 1, _spec(), now=datetime.now(UTC))
    await store.create_run(plan.run_doc, plan.splits)
    await store.sync_clock()
    server = TestServer(make_app(Tracker(keys=[KEY, OLD_KEY], store=store)), host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:

            async def get(path: str, *, method: str = "GET", ua: str = BROWSER) -> Any:
                url = f"http://127.0.0.1:{server.port}{path}"
                headers = {"User-Agent": ua}
                async with http.request(method, url, headers=headers, allow_redirects=False) as r:
                    return r.status, r.headers.get("Location")

            return await body(store, plan.run_doc["_id"], get)
    finally:
        await server.close()
        await store.close()


def _run(uri: str, body: Callable[[Store, str, Client], Awaitable[T]]) -> T:
    return asyncio.run(_with_tracker(uri, body))


def _docs(uri: str, collection: str) -> list[dict[str, Any]]:
    client: MongoClient[dict[str, Any]] = MongoClient(uri, serverSelectionTimeoutMS=5000)
    with client:
        return list(client.get_default_database()[collection].find())


def test_a_click_redirects_to_the_frozen_target_and_counts_once(uri: str) -> None:
    async def body(store: Store, run_id: str, get: Client) -> None:
        first = await get(f"/c/{sign(KEY, run_id, 'u1', 0)}")
        again = await get(f"/c/{sign(KEY, run_id, 'u1', 0)}")
        other_link = await get(f"/c/{sign(KEY, run_id, 'u1', 1)}")
        other_user = await get(f"/c/{sign(KEY, run_id, 'u2', 1)}")
        assert first == (302, TARGETS[0]) and again == (302, TARGETS[0])
        assert other_link == (302, TARGETS[1]) and other_user == (302, TARGETS[1])
        totals = await store.click_totals(run_id)
        assert (totals.clicks, totals.clickers, totals.by_link) == (3, 2, {0: 1, 1: 2})
        assert await store.clicked(run_id, "u1") == [0, 1]
        assert await store.clicked(run_id, "u3") == []

    _run(uri, body)


def test_a_forged_or_altered_token_gets_404_and_records_nothing(uri: str) -> None:
    async def body(store: Store, run_id: str, get: Client) -> None:
        good = sign(KEY, run_id, "u1", 0)
        forged = sign(b"not-the-key", run_id, "u1", 0)
        altered = good[:-3] + ("A" if good[-3] != "A" else "B") + good[-2:]
        for token in (forged, altered, "nonsense", sign(KEY, "ns.other.1.x", "u1", 0)):
            assert (await get(f"/c/{token}"))[0] == 404
        # A link index past the run's targets is no redirect either.
        assert (await get(f"/c/{sign(KEY, run_id, 'u1', 7)}"))[0] == 404
        totals = await store.click_totals(run_id)
        assert (totals.clicks, totals.clickers) == (0, 0)

    _run(uri, body)
    assert _docs(uri, "clicks") == [] and _docs(uri, "clickcounts") == []


def test_a_previous_key_still_redirects_during_a_rotation(uri: str) -> None:
    async def body(store: Store, run_id: str, get: Client) -> None:
        assert await get(f"/c/{sign(OLD_KEY, run_id, 'u3', 1)}") == (302, TARGETS[1])
        assert (await store.click_totals(run_id)).clickers == 1

    _run(uri, body)


def test_head_requests_and_prefetchers_are_redirected_but_not_counted(uri: str) -> None:
    async def body(store: Store, run_id: str, get: Client) -> None:
        token = sign(KEY, run_id, "u2", 0)
        assert await get(f"/c/{token}", method="HEAD") == (302, TARGETS[0])
        slack = "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)"
        assert await get(f"/c/{token}", ua=slack) == (302, TARGETS[0])
        safelinks = "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0)"
        assert await get(f"/c/{token}", ua=safelinks) == (302, TARGETS[0])
        assert (await store.click_totals(run_id)).clicks == 0
        assert await get(f"/c/{token}") == (302, TARGETS[0])  # then the person clicks
        assert (await store.click_totals(run_id)).clicks == 1

    _run(uri, body)


def test_concurrent_repeats_of_one_click_count_once(uri: str) -> None:
    async def body(store: Store, run_id: str, get: Client) -> None:
        token = sign(KEY, run_id, "u1", 1)
        replies = await asyncio.gather(*(get(f"/c/{token}") for _ in range(12)))
        assert set(replies) == {(302, TARGETS[1])}
        totals = await store.click_totals(run_id)
        assert (totals.clicks, totals.clickers) == (1, 1)

    _run(uri, body)


def test_a_deleted_run_takes_its_clicks_with_it(uri: str) -> None:
    async def body(store: Store, run_id: str, get: Client) -> None:
        await get(f"/c/{sign(KEY, run_id, 'u1', 0)}")
        await store.delete_run(run_id)
        assert (await store.click_totals(run_id)).clicks == 0

    _run(uri, body)
    assert _docs(uri, "clicks") == [] and _docs(uri, "clickcounts") == []
