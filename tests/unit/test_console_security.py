"""The console's page and API over a real socket: the security headers on every response,
no asset from outside, no inline script or style, and actions refused without the token
before the cluster is asked. The cluster is a real client of an address where nothing
listens (these checks must not need one)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from pushtask_client.taskapi import Cluster
from pushtask_console.app import STATIC, Console, make_app
from pushtask_console.auth import Auth
from pushtask_console.security import CSP

Scenario = Callable[[TestClient[Any, Any]], Awaitable[None]]


def kubeconfig_of_nothing(tmp_path: Path) -> str:
    """A kubeconfig naming a port where nothing listens: every API call fails fast."""
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:9"}}],
                "users": [{"name": "u", "user": {"token": "x"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    return str(path)


def serve(tmp_path: Path, scenario: Scenario, **auth: Any) -> None:
    console = Console(
        cluster=Cluster(kubeconfig_of_nothing(tmp_path)),
        auth=Auth("the-token", **auth),
        namespaces=["shop"],
        poll_every=0.2,
    )

    async def run() -> None:
        async with TestClient(TestServer(make_app(console), host="127.0.0.1")) as client:
            await scenario(client)

    asyncio.run(run())


def test_every_response_carries_the_security_headers(tmp_path: Path) -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        for path in ("/", "/static/app.js", "/static/app.css", "/api/config", "/nope"):
            got = await client.get(path)
            assert got.headers["Content-Security-Policy"] == CSP, path
            assert got.headers["X-Content-Type-Options"] == "nosniff"
            assert got.headers["Referrer-Policy"] == "no-referrer"
            assert got.headers["X-Frame-Options"] == "DENY"
        assert (await client.get("/static/app.js")).content_type in (
            "application/javascript",
            "text/javascript",
        )
        stream = await client.get("/api/stream")
        assert stream.headers["Content-Security-Policy"] == CSP
        assert stream.content_type == "text/event-stream"
        line = await asyncio.wait_for(stream.content.readline(), 10)
        assert line == b"event: tasks\n"
        data = (await stream.content.readline()).decode()
        assert "cannot reach the API server" in data  # the cluster's trouble, shown live
        stream.close()

    serve(tmp_path, scenario)
    assert "script-src 'self'" in CSP and "default-src 'none'" in CSP
    assert "unsafe" not in CSP


def test_actions_and_the_form_are_refused_without_the_token(tmp_path: Path) -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            got = await client.post("/api/tasks/shop/sale/pause", headers=headers)
            assert got.status == 401
            assert (await got.json())["error"]
            got = await client.post("/api/manifests", json={"yaml": "x"}, headers=headers)
            assert got.status == 401
        # With the token the request reaches the cluster (here: unreachable, a 502).
        got = await client.post(
            "/api/tasks/shop/sale/pause", headers={"Authorization": "Bearer the-token"}
        )
        assert got.status == 502 and "cannot reach" in (await got.json())["error"]
        # A namespace this console does not serve is not found, whatever the token.
        got = await client.post(
            "/api/tasks/other/sale/pause", headers={"Authorization": "Bearer the-token"}
        )
        assert got.status == 404

    serve(tmp_path, scenario)


def test_reads_need_the_token_when_configured(tmp_path: Path) -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        assert (await client.get("/")).status == 200  # the page itself holds no data
        assert (await client.get("/api/tasks")).status == 401
        assert (await client.get("/api/stream")).status == 401
        assert (await client.get("/api/tasks/shop/sale")).status == 401
        got = await client.get("/api/tasks", headers={"Authorization": "Bearer the-token"})
        assert got.status == 200

    serve(tmp_path, scenario, reads_need_token=True)


def test_the_page_loads_nothing_from_elsewhere_and_runs_no_inline_code() -> None:
    html = (STATIC / "index.html").read_text()
    js = (STATIC / "app.js").read_text()
    css = (STATIC / "app.css").read_text()
    for text in (html, js, css):
        urls = set(re.findall(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text))
        # The SVG namespace is a name, not a fetch; the example manifest's URL is text.
        assert urls <= {"http://www.w3.org", "https://push.example.com"}, urls
        assert "@import" not in text
    assert not re.search(r"<script(?![^>]*\bsrc=)", html), "inline script"
    assert "<style" not in html and " style=" not in html
    assert not re.search(r"\son[a-z]+=", html), "inline event handler"
    # Data reaches the page as text only.
    assert "innerHTML" not in js and "outerHTML" not in js and "insertAdjacentHTML" not in js
    assert "eval(" not in js and "new Function" not in js


@pytest.mark.parametrize("name", ["index.html", "app.js", "app.css"])
def test_static_files_ship_in_the_package(name: str) -> None:
    assert (STATIC / name).is_file()
