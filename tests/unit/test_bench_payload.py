"""The benchmark's baselines send the request pushtask's webhook channel sends: the same
headers with values of the same length, and a body of the same shape, so that the sink's
cost per request is the same in every mode (bench/payload.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import aiohttp

from bench.payload import body_for, headers_for
from pushtask.planning import idempotency_key
from pushtask_worker.channels import ChannelContext, Delivery
from pushtask_worker.channels.webhook import WebhookChannel


async def capture(send: Callable[[str], Awaitable[None]]) -> tuple[dict[str, str], bytes]:
    """The header lines and body of one request, as the receiver reads them."""
    got: asyncio.Future[tuple[dict[str, str], bytes]] = asyncio.get_running_loop().create_future()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")[1:-2]
        headers = dict(line.split(": ", 1) for line in head)
        body = await reader.readexactly(int(headers["Content-Length"]))
        got.set_result((headers, body))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        await send(f"http://127.0.0.1:{port}/hook")
        return await got


def test_the_baselines_send_the_webhook_channels_request() -> None:
    user = "u00000042"

    async def channel(url: str) -> None:
        async with WebhookChannel(ChannelContext({"url": url}, env={})) as ch:
            task = {"namespace": "bench", "name": "bench", "uid": "bench"}
            key = idempotency_key("bench", 1, user)
            message = {"title": f"Hi {user}", "body": "Run 1"}
            await ch.send(Delivery(task, 1, "bench-1", user, message, {}, key))

    async def baseline(url: str) -> None:
        async with aiohttp.ClientSession() as session:
            async with session.post(url, data=body_for(user), headers=headers_for(user)) as r:
                await r.read()

    async def both() -> tuple[tuple[dict[str, str], bytes], tuple[dict[str, str], bytes]]:
        return await capture(channel), await capture(baseline)

    (ours, our_body), (theirs, their_body) = asyncio.run(both())
    assert {k: len(v) for k, v in ours.items()} == {k: len(v) for k, v in theirs.items()}
    assert ours["Idempotency-Key"] == theirs["Idempotency-Key"]
    assert json.loads(our_body) == json.loads(their_body) and our_body == their_body
