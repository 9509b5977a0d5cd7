"""Probes against real local servers and commands."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from devstack.kubelet.probes import ProbeContext, Prober, probe_once, resolve_port


async def serve(status: int) -> tuple[web.AppRunner, int]:
    async def handler(_: web.Request) -> web.Response:
        return web.Response(status=status, text="x")

    app = web.Application()
    app.router.add_get("/healthz", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.10.9.9", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, port


def ctx(tmp_path: Path, ports: list[dict[str, Any]] | None = None) -> ProbeContext:
    return ProbeContext(
        pod_ip="127.10.9.9",
        container={"name": "c", "ports": ports or []},
        env={"PATH": "/usr/bin:/bin", "FLAG": "1"},
        cwd=tmp_path,
    )


def test_http_probe_to_the_pod_ip(tmp_path: Path) -> None:
    async def main() -> None:
        ok_runner, ok_port = await serve(204)
        bad_runner, bad_port = await serve(503)
        try:
            probe = {"httpGet": {"path": "/healthz", "port": "http"}}
            c = ctx(tmp_path, [{"name": "http", "containerPort": ok_port}])
            assert await probe_once(probe, c) == (True, "")
            ok, message = await probe_once({"httpGet": {"path": "healthz", "port": bad_port}}, c)
            assert not ok and "503" in message
        finally:
            await ok_runner.cleanup()
            await bad_runner.cleanup()

    asyncio.run(main())


def test_tcp_probe(tmp_path: Path) -> None:
    async def main() -> None:
        runner, port = await serve(200)
        try:
            assert (await probe_once({"tcpSocket": {"port": port}}, ctx(tmp_path)))[0]
        finally:
            await runner.cleanup()
        ok, message = await probe_once({"tcpSocket": {"port": port}}, ctx(tmp_path))
        assert not ok and "ConnectionRefused" in message

    asyncio.run(main())


def test_exec_probe_sees_the_container_env_and_times_out(tmp_path: Path) -> None:
    async def main() -> None:
        c = ctx(tmp_path)
        yes = {
            "exec": {
                "command": [
                    sys.executable,
                    "-c",
                    "import os,sys; sys.exit(os.environ['FLAG'] != '1')",
                ]
            }
        }
        assert (await probe_once(yes, c))[0]
        no = {"exec": {"command": [sys.executable, "-c", "print('nope'); raise SystemExit(3)"]}}
        assert await probe_once(no, c) == (False, "nope\n")
        slow = {"exec": {"command": ["sleep", "5"]}, "timeoutSeconds": 1}
        ok, message = await probe_once(slow, c)
        assert not ok and "timed out" in message

    asyncio.run(main())


def test_unsupported_and_bad_named_port(tmp_path: Path) -> None:
    async def main() -> None:
        assert not (await probe_once({"grpc": {"port": 1}}, ctx(tmp_path)))[0]
        ok, message = await probe_once({"tcpSocket": {"port": "nope"}}, ctx(tmp_path))
        assert not ok and "named port" in message

    asyncio.run(main())
    with pytest.raises(ValueError):
        resolve_port("x", {"name": "c"})


def test_thresholds() -> None:
    changes: list[bool] = []
    readiness = Prober(
        "readiness",
        {"exec": {}, "successThreshold": 2, "failureThreshold": 2},
        ProbeContext("", {}, {}, Path(".")),
        lambda ok, _m: changes.append(ok),
        initial=False,
    )
    results = [True, False, True, True, False, True, False, False]
    flips = [readiness.record(r) for r in results]
    assert flips == [False, False, False, True, False, False, False, True]
    liveness = Prober(
        "liveness",
        {"exec": {}},
        ProbeContext("", {}, {}, Path(".")),
        lambda ok, _m: None,
        initial=True,
    )
    assert [liveness.record(False) for _ in range(3)] == [False, False, True]
