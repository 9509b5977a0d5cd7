"""The tracker served on a real localhost port, over both MongoDB-wire servers devstack
runs: tracked links redirect to the run's frozen targets and each (run, user, link) counts
once; conversions need the bearer token, a recipient who was sent, and the window."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from pymongo import MongoClient

from pushtask.models import PushTaskSpec
from pushtask.planning import TaskRef, plan_run
from pushtask.records import Result
from pushtask.store import Store
from pushtask.tracking import sign
from pushtask_tracker.app import Tracker, make_app
from tests.support.ledger_steps import record, seal_all, stage_audience
from tests.support.workers import db_uri, drop_db

pytestmark = pytest.mark.integration
T = TypeVar("T")
KEY = b"tracker-key-0123456789"
OLD_KEY = b"tracker-key-previous"
BEARER = "conversions-bearer-token"
AUTH = {"Authorization": f"Bearer {BEARER}"}
TARGETS = ("https://shop.example/sale", "https://shop.example/help?x=1&y=2")
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36"


@pytest.fixture(params=["mongo_uri", "ferretdb_uri"], ids=["mongo-java-server", "ferretdb"])
def uri(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh database for one test on each MongoDB-wire server devstack runs: the
    markers and counters are store behaviour, checked on both as the ledger's are."""
    database = db_uri(str(request.getfixturevalue(request.param)), f"t_{secrets.token_hex(5)}")
    yield database
    drop_db(database)


def _spec(window: str = "7d") -> dict[str, Any]:
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
                    "conversionWindow": window,
                },
            },
        }
    )
    return spec.model_dump(by_alias=True, mode="json", exclude_none=True)


Client = Callable[..., Awaitable[tuple[int, str | None]]]


async def _send_to(store: Store, run_id: str, users: int, sent_ago: timedelta) -> None:
    """The run's audience (u1, u2, u3) sealed, and its first `users` recorded as sent
    `sent_ago` before now, as a worker records them."""
    await stage_audience(store, run_id)
    await store.advance(run_id)
    await seal_all(store, run_id)
    await store.advance(run_id)
    got = await store.claim_chunk(run_id, "w", 30)
    assert got is not None
    doc, lease = got
    assert doc["users"] == ["u1", "u2", "u3"]
    sent = [Result(p, "sent") for p in range(users)]
    await record(store, lease, results=sent, hi=users, now=store.now() - sent_ago)


async def _with_tracker(
    uri: str,
    body: Callable[[Store, str, Client], Awaitable[T]],
    *,
    window: str = "7d",
    sent_ago: timedelta = timedelta(0),
) -> T:
    """A run stored on `uri` (u1 and u2 sent, u3 not yet), the tracker serving it on a
    localhost port, and a client."""
    store = Store.connect(uri)
    await store.sync_clock()
    spec = _spec(window)
    plan = plan_run(TaskRef("ns", "sale", "uid-12345678"), 1, spec, now=datetime.now(UTC))
    await store.create_run(plan.run_doc, plan.splits)
    run_id = str(plan.run_doc["_id"])
    await _send_to(store, run_id, 2, sent_ago)
    tracker = Tracker(keys=[KEY, OLD_KEY], conversions_token=BEARER, store=store)
    server = TestServer(make_app(tracker), host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:

            async def get(path: str, *, method: str = "GET", ua: str = BROWSER, **kw: Any) -> Any:
                url = f"http://127.0.0.1:{server.port}{path}"
                headers = {"User-Agent": ua, **kw.pop("headers", {})}
                async with http.request(
                    method, url, headers=headers, allow_redirects=False, **kw
                ) as r:
                    if path.startswith("/v1/"):
                        return r.status, await r.json()
                    return r.status, r.headers.get("Location")

            return await body(store, run_id, get)
    finally:
        await server.close()
        await store.close()


def _run(uri: str, body: Callable[[Store, str, Client], Awaitable[T]], **options: Any) -> T:
    return asyncio.run(_with_tracker(uri, body, **options))


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


# -- conversions -----------------------------------------------------------------------


def _post(get: Client, body: Any, headers: dict[str, str] | None = None) -> Any:
    return get(
        "/v1/conversions", method="POST", json=body, headers=AUTH if headers is None else headers
    )


def test_a_conversion_needs_the_bearer_token(uri: str) -> None:
    async def body(store: Store, run_id: str, get: Client) -> None:
        token = sign(KEY, run_id, "u1", 0)
        conversion = {"event": "purchase", "token": token}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": BEARER}):
            status, answer = await _post(get, conversion, headers)
            assert status == 401 and "bearer token" in answer["error"]
        assert (await store.conversion_totals(run_id)).by_event == {}
        assert (await _post(get, conversion))[0] == 201

    _run(uri, body)


def test_a_tracker_without_a_conversions_token_refuses_every_conversion(uri: str) -> None:
    async def body(store: Store, run_id: str, get: Client) -> None:
        tracker = Tracker(keys=[KEY], store=store)
        server = TestServer(make_app(tracker), host="127.0.0.1")
        await server.start_server()
        try:
            async with aiohttp.ClientSession() as http:
                url = f"http://127.0.0.1:{server.port}/v1/conversions"
                payload = {"event": "purchase", "token": sign(KEY, run_id, "u1", 0)}
                headers = {"Authorization": "Bearer "}
                async with http.post(url, json=payload, headers=headers) as r:
                    assert r.status == 401
                    assert "no conversions token" in (await r.json())["error"]
        finally:
            await server.close()

    _run(uri, body)


def test_conversions_by_token_and_by_task_run_user_count_once_per_event(uri: str) -> None:
    async def body(store: Store, run_id: str, get: Client) -> None:
        by_token = {"event": "purchase", "token": sign(KEY, run_id, "u1", 1)}
        status, answer = await _post(get, by_token)
        assert (status, answer["recorded"], answer["run"], answer["user"]) == (
            201, True, run_id, "u1",
        )  # fmt: skip
        by_name = {"event": "purchase", "task": "ns/sale", "run": 1, "user": "u1"}
        assert (await _post(get, by_name)) == (200, {**answer, "recorded": False})
        signup = {"event": "signup", "task": "ns/sale", "run": 1, "user": "u2"}
        assert (await _post(get, signup))[0] == 201
        assert (await _post(get, {**signup, "event": "purchase"}))[0] == 201
        totals = await store.conversion_totals(run_id)
        assert totals.by_event == {"purchase": 2, "signup": 1}
        assert totals.status(2) == [
            {"event": "purchase", "count": 2, "rate": "100.0%"},
            {"event": "signup", "count": 1, "rate": "50.0%"},
        ]
        assert await store.converted(run_id, "u2") == ["purchase", "signup"]

    _run(uri, body)


def test_conversions_of_the_unknown_are_refused_and_record_nothing(uri: str) -> None:
    async def body(store: Store, run_id: str, get: Client) -> None:
        refused = [
            ({"event": "buy", "token": sign(b"forged", run_id, "u1", 0)}, 404, "unknown token"),
            ({"event": "buy", "task": "ns/sale", "run": 9, "user": "u1"}, 404, "no such run"),
            ({"event": "buy", "task": "ns/other", "run": 1, "user": "u1"}, 404, "no such run"),
            ({"event": "buy", "task": "ns/sale", "run": 1, "user": "u3"}, 404, "not sent"),
            ({"event": "buy", "task": "ns/sale", "run": 1, "user": "nobody"}, 404, "not sent"),
            ({"event": "b.uy", "task": "ns/sale", "run": 1, "user": "u1"}, 400, "event"),
            ({"task": "ns/sale", "run": 1, "user": "u1"}, 400, "event"),
        ]
        for conversion, code, words in refused:
            status, answer = await _post(get, conversion)
            assert status == code and words in answer["error"], (conversion, answer)
        status, answer = await get(
            "/v1/conversions", method="POST", data=b"{not json", headers=AUTH
        )
        assert status == 400
        assert (await store.conversion_totals(run_id)).by_event == {}

    _run(uri, body)
    assert _docs(uri, "conversions") == [] and _docs(uri, "conversioncounts") == []


def test_a_conversion_after_its_window_is_refused(uri: str) -> None:
    async def body(store: Store, run_id: str, get: Client) -> None:
        status, answer = await _post(get, {"event": "buy", "token": sign(KEY, run_id, "u1", 0)})
        assert status == 422 and "outside the conversion window" in answer["error"]
        assert (await store.conversion_totals(run_id)).by_event == {}

    # Sent two minutes ago, in a run whose window is one minute.
    _run(uri, body, window="1m", sent_ago=timedelta(minutes=2))


def test_a_conversion_within_its_window_is_taken(uri: str) -> None:
    async def body(store: Store, run_id: str, get: Client) -> None:
        status, _ = await _post(get, {"event": "buy", "token": sign(KEY, run_id, "u2", 0)})
        assert status == 201

    _run(uri, body, window="1h", sent_ago=timedelta(minutes=50))
