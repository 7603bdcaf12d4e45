"""The web process's WebSocket protocol: uvicorn's websockets-sansio protocol, with the frames written in one
event-loop turn going to the socket in one write.

An answer of many events is many frames, one ASGI ``websocket.send`` each, and uvicorn hands each frame to
the transport at once: a ``send()`` system call and a TCP segment per frame, about half of what a 100-event
answer costs the web process (``python -m bench replicas`` shows the effect beside the bare server). Here the
writes of one turn (the frames a task sends before it next waits) are kept and written, joined, when the loop
turns (``call_soon``): one system call for the whole answer. A lone frame goes out in the same turn's
callback pass, so a single answer waits for nothing; order is kept, and close or abort settle what is kept
first (written before a close, dropped on an abort). Flow control is the transport's own: a paused transport
makes ``send`` wait, which turns the loop, which writes what was kept.

``web_argv`` (``hypertuna.supervisor``), the Dockerfile and both compose files name this class with ``--ws``.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol


class CoalescingTransport:
    """A transport whose ``write`` calls of one loop turn reach the wrapped transport as one write."""

    __slots__ = ("_loop", "_pending", "_scheduled", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._scheduled = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        self._pending.append(bytes(data))
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def __getattr__(self, name: str) -> Any:
        # Everything else (get_extra_info, is_closing, pause_reading, …) is the wrapped transport's.
        return getattr(self._transport, name)


class CoalescingWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol writing through a :class:`CoalescingTransport`."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        wrapped = CoalescingTransport(cast(asyncio.Transport, transport), self.loop)
        super().connection_made(cast(asyncio.Transport, wrapped))


__all__ = ["CoalescingTransport", "CoalescingWebSocketProtocol"]
