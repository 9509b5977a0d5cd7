"""Tracked links end to end on one machine: real `pushtask-worker` processes send a run
whose links are tracked to the local webhook sink, and a link taken from a received
message is followed through the tracker (a real localhost port) over a real MongoDB-wire
server, where the click is counted."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from pushtask.models import PushTaskSpec
from pushtask.records import ClickTotals
from pushtask.store import Store
from pushtask.tracking import verify
from pushtask_tracker.app import Tracker, make_app
from tests.support.sink import SinkThread
from tests.support.workers import WorkerProcs, create_run, run_doc, spec_for, totals

pytestmark = pytest.mark.integration
KEY = "tracker-key-for-the-worker-test"
BASE = "https://t.example.com/"
SALE = "https://shop.example/sale"
HELP = "https://shop.example/help"
USERS = [f"u{i}" for i in range(20)]


def tracked_spec(url: str) -> dict[str, Any]:
    spec = spec_for(
        USERS,
        url=url,
        shards=4,
        workers=2,
        template={
            "title": "Hi {{ user }}",
            "body": f"Sale at {SALE}. Help: {HELP}. Yours: https://shop.example/u/{{{{ user }}}}",
            "link": SALE,
        },
    )
    spec["message"]["tracking"] = {"links": True, "baseUrl": BASE, "secretRef": {"name": "tk"}}
    return PushTaskSpec.model_validate(spec).model_dump(
        by_alias=True, mode="json", exclude_none=True
    )


async def follow(uri: str, token: str) -> tuple[int, str | None, ClickTotals]:
    """GET a tracked link's path on the tracker; its answer and the run's clicks after it."""
    store = Store.connect(uri)
    server = TestServer(make_app(Tracker(keys=[KEY.encode()], store=store)), host="127.0.0.1")
    await server.start_server()
    try:
        url = f"http://127.0.0.1:{server.port}/c/{token}"
        async with (
            aiohttp.ClientSession() as http,
            http.get(url, allow_redirects=False) as reply,
        ):
            status, location = reply.status, reply.headers.get("Location")
        run_id = verify([KEY.encode()], token).run_id
        return status, location, await store.click_totals(run_id)
    finally:
        await server.close()
        await store.close()


def test_a_link_in_a_sent_message_is_tracked_and_its_click_counted(
    uri: str, tmp_path: Path
) -> None:
    with SinkThread(secret="s3cret", keep_messages=True) as sink:
        run_id, _ = create_run(uri, tracked_spec(sink.url))
        with WorkerProcs(uri, run_id, tmp_path, env={"PUSHTASK_TRACKER_KEY": KEY}) as workers:
            workers.start_many(2)
            codes = workers.wait(120)
            assert set(codes.values()) == {0}, workers.logs()
        by_user = {r.user: r.message for r in sink.requests if r.status == 200}
    assert set(by_user) == set(USERS)
    t = totals(uri, run_id)
    assert (t.sent, t.failed) == (len(USERS), 0)

    message = by_user["u7"]
    prefix = "https://t.example.com/c/"
    # The literal links became u7's own tracked links; the per-recipient one did not.
    assert SALE not in message["body"] and HELP not in message["body"]
    assert "https://shop.example/u/u7" in message["body"]
    assert message["link"].startswith(prefix) and message["title"] == "Hi u7"
    body_links = [w.rstrip(".") for w in message["body"].split() if w.startswith(prefix)]
    assert len(body_links) == 2
    tokens = [verify([KEY.encode()], u.removeprefix(prefix)) for u in body_links]
    assert [(c.run_id, c.user) for c in tokens] == [(run_id, "u7")] * 2
    # link targets are in field order (body, link, title): SALE is #0 and HELP #1.
    assert [c.link for c in tokens] == [0, 1]
    assert message["link"] == body_links[0]  # the same target: the same tracked link

    status, location, clicks = asyncio.run(follow(uri, body_links[1].removeprefix(prefix)))
    assert (status, location) == (302, HELP)
    assert (clicks.clicks, clicks.clickers, clicks.by_link) == (1, 1, {1: 1})
    # The targets the tracker used came from the run document, as frozen.
    assert run_doc(uri, run_id)["spec"]["message"]["tracking"]["links"] is True


def test_a_tracked_run_without_the_key_fails_before_any_send(uri: str, tmp_path: Path) -> None:
    with SinkThread(secret="s3cret") as sink:
        run_id, _ = create_run(uri, tracked_spec(sink.url))
        with WorkerProcs(uri, run_id, tmp_path, env={"PUSHTASK_TRACKER_KEY": ""}) as workers:
            workers.start("w0")
            workers.wait(60)
        assert sink.requests == []
    failure = run_doc(uri, run_id).get("failure") or {}
    assert "PUSHTASK_TRACKER_KEY" in str(failure.get("reason"))
