"""A lean WebSocket client for timing servers: frames parsed straight from the socket's byte stream.

The ``websockets`` client spends several microseconds on every frame it receives (a queue hand-off and a
wake-up per message), about 0.5 ms of a 100-event answer and so a large share of what a timing of a fast
server measures. A real Nostr client parses frames natively (a browser, nostr-tools on Node); here the
timing client reads what arrived in one go and splits it into messages itself, so what is left in a timing
is the server's. It is a correct RFC 6455 client for what the benches need: masked text frames out, text
or binary messages in (fragmented ones joined), pings answered, a close frame ends the connection with
``ConnectionClosed`` carrying its code. No extensions, no TLS (loopback servers only).

``async with LeanWebSocket.connect(url) as ws: await ws.send(text); text = await ws.recv()``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import struct
from collections import deque
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
READ_CHUNK = 1 << 20
MAX_MESSAGE = 1 << 26


class ConnectionClosed(Exception):
    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(f"connection closed ({code} {reason})".strip())
        self.code = code
        self.reason = reason


def _frame(opcode: int, payload: bytes) -> bytes:
    """A client frame: FIN set, masked with a random key (RFC 6455 §5.3)."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    mask = os.urandom(4)
    # XOR by whole integers: the payload masked with the key repeated to its length.
    repeated = (mask * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big") if n else b""
    return head + mask + masked


class LeanWebSocket:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._buffer = bytearray()  # the start of a frame not yet whole
        self._messages: deque[str] = deque()
        self._partial: list[bytes] = []
        self._closed: ConnectionClosed | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, url: str, timeout: float = 30.0) -> AsyncIterator[LeanWebSocket]:
        ws = await cls.open(url, timeout)
        try:
            yield ws
        finally:
            await ws.close()

    @classmethod
    async def open(cls, url: str, timeout: float = 30.0) -> LeanWebSocket:
        parts = urlsplit(url)
        if parts.scheme != "ws":
            raise ValueError(f"only ws:// URLs are supported, not {url!r}")
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, limit=MAX_MESSAGE), timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        status, *lines = head.decode("latin-1").split("\r\n")
        if " 101 " not in f"{status} ":
            writer.close()
            raise ConnectionError(f"the server refused the WebSocket: {status}")
        headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
        expected = base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()
        if headers.get("sec-websocket-accept") != expected:
            writer.close()
            raise ConnectionError("the server's Sec-WebSocket-Accept does not match the key")
        return cls(reader, writer)  # readuntil left the bytes after the headers in the reader

    async def send(self, text: str) -> None:
        self._writer.write(_frame(OP_TEXT, text.encode()))
        await self._writer.drain()

    async def recv(self) -> str:
        """The next message; everything that arrived in one read is split into messages at once."""
        while not self._messages:
            if self._closed is not None:
                raise self._closed
            data = await self._reader.read(READ_CHUNK)
            if not data:
                raise ConnectionClosed(1006, "the connection dropped")
            self._buffer += data
            self._parse()
        return self._messages.popleft()

    def _parse(self) -> None:
        buf = self._buffer
        at = 0
        while len(buf) - at >= 2 and self._closed is None:
            first, second = buf[at], buf[at + 1]
            length, offset = second & 0x7F, at + 2
            if length == 126:
                if len(buf) - offset < 2:
                    break
                (length,) = struct.unpack_from("!H", buf, offset)
                offset += 2
            elif length == 127:
                if len(buf) - offset < 8:
                    break
                (length,) = struct.unpack_from("!Q", buf, offset)
                offset += 8
            if second & 0x80:
                raise ConnectionError("the server masked a frame")
            if length > MAX_MESSAGE:
                raise ConnectionError(f"a frame of {length} bytes")
            if len(buf) - offset < length:
                break
            payload = bytes(buf[offset : offset + length])
            at = offset + length
            self._frame_in(first & 0x80, first & 0x0F, payload)
        del buf[:at]

    def _frame_in(self, fin: int, opcode: int, payload: bytes) -> None:
        if opcode in (OP_TEXT, OP_BINARY, OP_CONT):
            self._partial.append(payload)
            if fin:
                self._messages.append(b"".join(self._partial).decode())
                self._partial.clear()
        elif opcode == OP_PING:
            self._writer.write(_frame(OP_PONG, payload))
        elif opcode == OP_CLOSE:
            # The messages before the close are still handed out; recv raises once they are.
            code = struct.unpack_from("!H", payload)[0] if len(payload) >= 2 else None
            self._closed = ConnectionClosed(code, payload[2:].decode("utf-8", "replace"))
            self._writer.write(_frame(OP_CLOSE, payload[:2]))

    async def close(self) -> None:
        if not self._writer.is_closing():
            self._writer.write(_frame(OP_CLOSE, struct.pack("!H", 1000)))
            self._writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(self._writer.wait_closed(), 5)


__all__ = ["ConnectionClosed", "LeanWebSocket"]
