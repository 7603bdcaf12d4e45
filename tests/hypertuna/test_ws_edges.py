"""WebSocket edges on the wire: what a client sees when it sends a frame over the size limit, a text frame
that is not UTF-8, or a huge unknown verb that a worker quotes back; and that a burst of frames (an answer of
many events) arrives whole and in order, before a close that follows it.

The protocol-level cases run the real web server (in a subprocess, started with the gateway's own
``web_argv``) serving a small echo application, because the behaviour under test lives in the server, below
ASGI."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import websockets
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from hypertuna.asgi import application as gateway_application
from hypertuna.webserver import SEND_MANY, WEBSOCKET_MAX_SIZE, web_argv
from relays import services
from relays.consumers import NOTICE_MAX_CHARS, RelayConsumer
from relays.forwarding import PeerResponse
from relays.runtime import Runtime
from tests.conftest import hex_key
from tests.e2e.procs import free_port
from tests.relays.fakes import FakeTransport, FakeWorker
from tests.relays.test_consumer import register

BASE_DIR = Path(__file__).resolve().parents[2]


REFUSED: list[str] = []  # what the echo application's sends raised, in the server process


async def application(scope, receive, send):
    """Echo application for the web-server subprocess (``tests.hypertuna.test_ws_edges:application``)."""
    if scope["type"] != "websocket":
        return
    while True:
        message = await receive()
        if message["type"] == "websocket.connect":
            await send({"type": "websocket.accept"})
        elif message["type"] == "websocket.receive" and (message.get("text") or "").startswith(
            ("burst ", "manyburst ")
        ):
            # "burst N SIZE [CODE]": N numbered frames of SIZE bytes in one go, as an answer of N events is sent,
            # then a close with CODE when given. "manyburst N SIZE": the same frames in one send_many.
            verb, count, size, *code = message["text"].split()
            texts = [f"{i} " + "x" * int(size) for i in range(int(count))]
            if verb == "burst":
                for text in texts:
                    await send({"type": "websocket.send", "text": text})
                if code:
                    await send({"type": "websocket.close", "code": int(code[0])})
                continue
            try:
                await send({"type": SEND_MANY, "texts": texts})
            except OSError as gone:  # uvicorn's ClientDisconnected: the reader went away mid-answer
                REFUSED.append(f"disconnected: {type(gone).__name__}")
                return
            REFUSED.append(f"sent {count}")
        elif message["type"] == "websocket.receive" and (message.get("text") or "").startswith("many "):
            # "many SIZE… [CODE]": a frame before, one send_many of texts of those sizes (multi-byte UTF-8, so
            # lengths are bytes, not characters), a frame after, then a close with CODE when given (negative).
            sizes = [int(word) for word in message["text"].split()[1:]]
            code = [-size for size in sizes if size < 0]
            assert SEND_MANY in scope["extensions"], "the web server does not offer send_many"
            await send({"type": "websocket.send", "text": "before"})
            texts = [
                f"{i} " + "é" * (size // 2) + "x" * (size % 2) for i, size in enumerate(s for s in sizes if s >= 0)
            ]
            await send({"type": SEND_MANY, "texts": texts})
            await send({"type": "websocket.send", "text": "after"})
            if code:
                await send({"type": "websocket.close", "code": code[0]})
                try:
                    await send({"type": SEND_MANY, "texts": ["too late"]})
                except RuntimeError as refused:
                    REFUSED.append(str(refused))
        elif message["type"] == "websocket.receive" and message.get("text") == "refused?":
            await send({"type": "websocket.send", "text": REFUSED[-1] if REFUSED else "nothing refused"})
        elif message["type"] == "websocket.receive":
            await send({"type": "websocket.send", "text": message.get("text") or "binary"})
        else:
            return


@pytest.fixture(scope="module")
def server_url():
    port = free_port()
    process = subprocess.Popen(
        web_argv(sys.executable, "127.0.0.1", port, app="tests.hypertuna.test_ws_edges:application"),
        cwd=BASE_DIR,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert process.poll() is None, "the web server exited"
                time.sleep(0.1)
        yield f"ws://127.0.0.1:{port}/"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def _close_after(url: str, payload: str | bytes, *, text: bool) -> websockets.frames.Close | None:
    async with websockets.connect(url, max_size=None, close_timeout=5) as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello"
        try:
            await ws.send(payload, text=text)
            await asyncio.wait_for(ws.recv(), timeout=10)
        except websockets.ConnectionClosed as closed:
            return closed.rcvd
    raise AssertionError("the server answered instead of closing")


async def test_a_frame_over_the_size_limit_is_closed_1009_with_a_reason(server_url):
    close = await _close_after(server_url, "x" * (WEBSOCKET_MAX_SIZE + 1), text=True)
    assert close is not None, "the connection was dropped without a close frame"
    assert close.code == 1009
    assert str(WEBSOCKET_MAX_SIZE) in close.reason


async def test_an_invalid_utf8_text_frame_is_closed_1007(server_url):
    close = await _close_after(server_url, b'["REQ","s",{}]\xff\xfe', text=True)
    assert close is not None, "the connection was dropped without a close frame"
    assert close.code == 1007


async def test_the_server_keeps_serving_after_a_failed_connection(server_url):
    await _close_after(server_url, b"\xc3\x28", text=True)
    async with websockets.connect(server_url) as ws:
        await ws.send("still here")
        assert await ws.recv() == "still here"


@pytest.mark.parametrize("verb", ["burst", "manyburst"], ids=["sends", "send_many"])
async def test_a_burst_of_frames_arrives_whole_in_order_past_the_write_buffer(server_url, verb):
    # 2,000 frames of 2 KB: 4 MB sent without a pause, far past the transport's write buffer, to a client that
    # starts reading late, as 2,000 sends or one send_many (written in chunks, each when the transport has
    # room). The web server's writes of one loop turn are joined (hypertuna/webserver.py); flow control and
    # order must hold all the same.
    async with websockets.connect(server_url, max_queue=4) as ws:
        await ws.send(f"{verb} 2000 2048")
        await asyncio.sleep(0.5)
        for i in range(2000):
            frame = await asyncio.wait_for(ws.recv(), timeout=10)
            assert frame.split(" ", 1)[0] == str(i) and len(frame) == len(str(i)) + 1 + 2048
        await ws.send("after")
        assert await ws.recv() == "after"


async def test_the_frames_sent_before_a_close_arrive_before_it(server_url):
    async with websockets.connect(server_url) as ws:
        await ws.send("burst 50 100 4000")
        received = []
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                received.append((await asyncio.wait_for(ws.recv(), timeout=10)).split(" ", 1)[0])
        assert received == [str(i) for i in range(50)]
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4000


async def test_send_many_sends_each_text_as_its_own_frame_in_order(server_url):
    # Sizes on both sides of each length encoding: 7-bit (< 126 bytes), 16-bit (< 65,536), 64-bit.
    sizes = [0, 1, 124, 125, 126, 127, 65_533, 65_534, 65_535, 65_536, 200_001]
    async with websockets.connect(server_url, max_size=None) as ws:
        await ws.send("many " + " ".join(map(str, sizes)))
        assert await asyncio.wait_for(ws.recv(), timeout=10) == "before"
        for i, size in enumerate(sizes):
            frame = await asyncio.wait_for(ws.recv(), timeout=10)
            assert frame == f"{i} " + "é" * (size // 2) + "x" * (size % 2)
        assert await asyncio.wait_for(ws.recv(), timeout=10) == "after"
        await ws.send("still open")
        assert await ws.recv() == "still open"


async def test_a_reader_gone_in_the_middle_of_a_send_many_ends_it_with_a_disconnect(server_url):
    reader, writer = await asyncio.open_connection("127.0.0.1", int(server_url.rsplit(":", 1)[1].strip("/")))
    writer.write(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    assert b" 101 " in await reader.readuntil(b"\r\n\r\n")
    payload = b"manyburst 20000 2048"  # 40 MB: far more than the socket buffers hold
    writer.write(bytes((0x81, 0x80 | len(payload))) + b"\0\0\0\0" + payload)  # masked with a zero key
    await reader.read(1000)  # the answer has started
    writer.transport.abort()  # gone without a close frame, nothing more read
    async with websockets.connect(server_url) as ws:
        for _ in range(50):
            await ws.send("refused?")
            if (answer := await ws.recv()).startswith("disconnected"):
                break
            await asyncio.sleep(0.1)
        assert answer == "disconnected: ClientDisconnected"


async def test_send_many_after_a_close_is_refused_like_a_send(server_url):
    async with websockets.connect(server_url) as ws:
        await ws.send("many 10 20 -4001")
        received = []
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                received.append(await asyncio.wait_for(ws.recv(), timeout=10))
        assert received == ["before", "0 ééééé", "1 éééééééééé", "after"]
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4001
    # The application's send_many after its close raised (as websocket.send does); the server serves on.
    async with websockets.connect(server_url) as ws:
        await ws.send("refused?")
        assert "after sending 'websocket.close'" in await ws.recv()


class EchoingWorker(FakeWorker):
    """A worker that quotes an unknown verb back in full, as the reference worker does."""

    def handle(self, method, path, body):
        if method == "POST" and path.startswith("/post/relay/"):
            frame = json.loads(json.loads(body)["message"])
            if frame[0] not in ("EVENT", "REQ", "CLOSE"):
                self.requests.append((method, path))
                return PeerResponse(
                    200, {}, json.dumps(["NOTICE", f"unsupported: {frame[0]} is not supported"]).encode()
                )
        return super().handle(method, path, body)


@pytest.mark.django_db(transaction=True)
async def test_a_huge_unknown_verb_is_not_echoed_back_in_full(monkeypatch, settings):
    settings.HYPERTUNA_POLL_INTERVAL_MS = 50
    peer = "2" * 64
    pool = {peer: EchoingWorker()}
    monkeypatch.setattr(RelayConsumer, "transport_factory", staticmethod(lambda: FakeTransport(pool)))
    monkeypatch.setattr(Runtime, "ensure_started", lambda self: None)
    key = hex_key()
    await database_sync_to_async(register)(key, [peer])
    issued = await database_sync_to_async(services.issue_token)(relay_key=key, relay_auth_token="auth")
    communicator = WebsocketCommunicator(gateway_application, f"/{key}?token={issued.token}")
    assert (await communicator.connect())[0]
    verb = "V" * 130_000  # the 131 KB of the report, under the 128 KiB frame limit
    await communicator.send_to(json.dumps([verb, "x"]))
    notice = json.loads(await communicator.receive_from(timeout=5))
    assert notice[0] == "NOTICE"
    assert notice[1].startswith("unsupported: VVVV")
    assert len(notice[1]) <= NOTICE_MAX_CHARS + 1 and notice[1].endswith("…")
    await communicator.send_to(json.dumps(["PING"]))
    short = json.loads(await communicator.receive_from(timeout=5))
    assert short == ["NOTICE", "unsupported: PING is not supported"]
    await communicator.disconnect()
