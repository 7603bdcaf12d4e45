"""The benches' lean timing client (``bench/wsclient.py``) against a real WebSocket server (``websockets``):
masked frames the server accepts, every length encoding, fragmented messages joined, pings answered, and the
messages before a close handed out before the close itself."""

from __future__ import annotations

import asyncio

import pytest
import websockets

from bench.wsclient import ConnectionClosed, LeanWebSocket


async def _handler(ws) -> None:
    async for message in ws:
        if message == "show":
            await ws.send("small")
            await ws.send("m" * 300)  # 16-bit length
            await ws.send("L" * 70_000)  # 64-bit length
            await ws.send(["frag", "ment", "ed"])  # one message in three frames
            await ws.send(b"bytes")
            pong = await ws.ping(b"are you there")
            await asyncio.wait_for(pong, 5)  # the client answered the ping
            await ws.send("pong seen")
        elif message == "burst-and-close":
            for i in range(500):
                await ws.send(str(i))
            await ws.close(4000, "done here")
        else:
            await ws.send(message)


@pytest.fixture
async def url():
    async with websockets.serve(_handler, "127.0.0.1", 0, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/path?x=1"


async def test_messages_of_every_length_fragments_and_pings(url):
    async with LeanWebSocket.connect(url) as ws:
        await ws.send("é" * 200)  # the server unmasks it: the echo is the same text
        assert await ws.recv() == "é" * 200
        await ws.send("show")
        got = [await ws.recv() for _ in range(6)]
    assert got == ["small", "m" * 300, "L" * 70_000, "fragmented", "bytes", "pong seen"]


async def test_the_messages_before_a_close_come_first_then_the_close(url):
    async with LeanWebSocket.connect(url) as ws:
        await ws.send("burst-and-close")
        received = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                received.append(await ws.recv())
    assert received == [str(i) for i in range(500)]
    assert (closed.value.code, closed.value.reason) == (4000, "done here")


async def test_a_refused_upgrade_is_an_error():
    async def http_only(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(http_only, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        with pytest.raises(ConnectionError, match="403"):
            await LeanWebSocket.open(f"ws://127.0.0.1:{port}/")
