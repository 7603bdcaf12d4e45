"""The web process: its command line (``web_argv``) and its WebSocket protocol.

``web_argv`` is uvicorn (uvloop) serving the gateway's ASGI application; ``make run``, the e2e harness, the
benches and the WebSocket-edge tests start it, and the Dockerfile and both compose files carry the same
options (``tests/deploy`` compares them). Why uvicorn and not Daphne: the README's design section.

The protocol (``--ws``) is uvicorn's websockets-sansio protocol with the frames written in one event-loop turn
going to the socket in one write. An answer of many events is many frames, one ASGI ``websocket.send`` each,
and uvicorn hands each frame to the transport at once: a ``send()`` system call and a TCP segment per frame,
about half of what a 100-event answer costs the web process. Here the writes of one turn (the frames a task
sends before it next waits) are kept and written, joined, when the loop turns (``call_soon``): one system
call for the whole answer. A lone frame goes out in the same turn's callback pass, so a single answer waits
for nothing; order is kept, and close or abort settle what is kept first (written before a close, dropped on
an abort). Flow control is the transport's own: a paused transport makes ``send`` wait, which turns the
loop, which writes what was kept.

The protocol also offers the application an ASGI extension, ``hypertuna.websocket.send_many`` (advertised in
the scope's ``extensions``): one message ``{"type": "hypertuna.websocket.send_many", "texts": [...]}`` sends
each text as its own text frame, in order, framed here in one pass (RFC 6455 §5.2: a server frame is
unmasked, so a frame is two to ten bytes of header and the UTF-8 payload). A 100-event answer is then one
ASGI send instead of a hundred, each of which went through uvicorn's state checks and the websockets
library's frame objects (about 3.5 µs a frame). It is written 64 KiB at a time, a loop turn between, so flow
control holds for a slow reader and a reader gone mid-answer ends it (``ClientDisconnected``, as a send
would). Outside the open state the message is handled as that many ``websocket.send`` messages, so it fails
exactly as they would.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any, cast

from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

# uvicorn pings every open WebSocket this often (a timer per socket, no task). Each ping is work per idle socket;
# 50 s still keeps a connection alive through the usual 60 s idle limits of proxies and load balancers.
WEBSOCKET_PING_INTERVAL = 50
# A socket whose pong has not come back this long after a ping is closed (uvicorn's default).
WEBSOCKET_PING_TIMEOUT = 20
# A WebSocket message over this size is refused with close 1009 and a reason before the application reads it,
# so no socket can make the process buffer more (uvicorn's default is 16 MiB). The relay's own limit
# (HYPERTUNA_MAX_FRAME_BYTES, answered with a NOTICE, advertised in NIP-11) is capped at it in the settings.
WEBSOCKET_MAX_SIZE = 1024 * 1024
# On SIGTERM the web process closes its WebSockets (1012, service restart) and gives their consumers this long
# to finish, inside the supervisor's STOP_GRACE_SECONDS (and a container engine's default 10 s).
SHUTDOWN_GRACE_SECONDS = 8
# An idle HTTP keep-alive connection is kept this long (uvicorn's default is 5 s). It must outlast the proxy's
# own idle limit for upstream connections (Caddy: 2 min), or the proxy may send a request down a connection
# the web process is closing and answer 502.
HTTP_KEEPALIVE_SECONDS = 130
GATEWAY_APP = "hypertuna.asgi:application"
# uvicorn's websockets sans-I/O protocol, writing the frames of one loop turn at once (below).
WEBSOCKET_PROTOCOL = "hypertuna.webserver:CoalescingWebSocketProtocol"
# The ASGI extension (and message type) of several text frames in one send; see the module docstring.
SEND_MANY = "hypertuna.websocket.send_many"
# The coalescing transport writes through once it keeps this much, and a send_many hands it this much at a
# time, then waits until the transport has room: flow control sees a long burst while it is written.
WRITE_THROUGH_BYTES = 64 * 1024


def web_argv(python: str, host: str, port: int, *, app: str = GATEWAY_APP) -> list[str]:
    """The web process: uvicorn (uvloop, the coalescing protocol below) serving ``app`` on ``host:port``.
    ``X-Forwarded-For`` is not read here (clients connect directly); the container image, behind its proxy,
    adds ``--proxy-headers``."""
    return [
        python,
        "-m",
        "uvicorn",
        "--host",
        host,
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--ws",
        WEBSOCKET_PROTOCOL,
        # No permessage-deflate: zlib per frame (and a compressor per socket) for frames of a few hundred bytes.
        "--ws-per-message-deflate",
        "false",
        "--ws-max-size",
        str(WEBSOCKET_MAX_SIZE),
        "--ws-ping-interval",
        str(WEBSOCKET_PING_INTERVAL),
        "--ws-ping-timeout",
        str(WEBSOCKET_PING_TIMEOUT),
        "--timeout-graceful-shutdown",
        str(SHUTDOWN_GRACE_SECONDS),
        "--timeout-keep-alive",
        str(HTTP_KEEPALIVE_SECONDS),
        "--lifespan",
        "off",
        "--no-access-log",
        "--no-proxy-headers",
        "--no-server-header",
        app,
    ]


class CoalescingTransport:
    """A transport whose ``write`` calls of one loop turn reach the wrapped transport as one write; once
    ``WRITE_THROUGH_BYTES`` are kept they go at once, so that the wrapped transport's flow control (pausing the
    protocol past its high-water mark) sees a long burst while it is being written, not after."""

    __slots__ = ("_kept", "_loop", "_pending", "_scheduled", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._kept = 0
        self._scheduled = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        self._pending.append(bytes(data))
        self._kept += len(data)
        if self._kept >= WRITE_THROUGH_BYTES:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        self._kept = 0
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._kept = 0
        self._transport.abort()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + self._kept

    def __getattr__(self, name: str) -> Any:
        # Everything else (get_extra_info, is_closing, pause_reading, …) is the wrapped transport's.
        return getattr(self._transport, name)


def text_frame(payload: bytes) -> bytes:
    """One unfragmented, unmasked text frame (a server's) carrying ``payload`` (UTF-8)."""
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 1 << 16:
        return struct.pack("!BBH", 0x81, 126, size) + payload
    return struct.pack("!BBQ", 0x81, 127, size) + payload


class CoalescingWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol writing through a :class:`CoalescingTransport`, with the
    ``hypertuna.websocket.send_many`` extension."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        wrapped = CoalescingTransport(cast(asyncio.Transport, transport), self.loop)
        super().connection_made(cast(asyncio.Transport, wrapped))

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        # The application's task is created but has not run yet: the scope it will read is this one.
        if not self.close_sent:
            self.scope["extensions"][SEND_MANY] = {}  # type: ignore[index]

    async def send(self, message: Any) -> None:
        if message["type"] != SEND_MANY:
            await super().send(message)
            return
        texts: list[str] = message["texts"]
        await self.writable.wait()
        if self.disconnected:
            raise ClientDisconnected()
        if (
            not self.handshake_complete
            or self.close_sent
            or self.initial_response is not None
            or self.conn.state is not State.OPEN
        ):
            for text in texts:
                await super().send({"type": "websocket.send", "text": text})
            return
        # Written in chunks, each after the transport has room again: a long answer to a slow reader is held
        # by the transport no further past its high-water mark than frame-by-frame sends would be.
        chunk: list[bytes] = []
        size = 0
        for text in texts:
            frame = text_frame(text.encode())
            chunk.append(frame)
            size += len(frame)
            if size >= WRITE_THROUGH_BYTES:
                self._write_frames(chunk)
                chunk, size = [], 0
                # One loop turn: the transport writes (uvloop writes at the end of a turn) and pauses the
                # protocol if the reader is slow, and a connection lost meanwhile is seen; other sockets go on.
                await asyncio.sleep(0)
                await self.writable.wait()
                if self.disconnected or self.conn.state is not State.OPEN:
                    raise ClientDisconnected()
        if chunk:
            self._write_frames(chunk)

    def _write_frames(self, frames: list[bytes]) -> None:
        # Whatever the connection object still holds (a pong) goes first; then the frames, in order.
        self.transport.write(b"".join([*self.conn.data_to_send(), *frames]))


__all__ = ["SEND_MANY", "CoalescingTransport", "CoalescingWebSocketProtocol", "text_frame", "web_argv"]
