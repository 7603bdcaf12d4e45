"""A small in-process fake of the bridge RPC server, speaking the protocol of bridge/README.md."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
from collections.abc import Awaitable, Callable
from typing import Any

Handler = Callable[["FakeConn", Any, dict[str, Any]], Awaitable[None]]


class FakeConn:
    def __init__(self, server: FakeBridge, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.authenticated = False
        self.topics: set[str] = set()
        self.credits: dict[Any, int] = {}
        self.credit_event: dict[Any, asyncio.Event] = {}
        self.cancelled: set[Any] = set()

    async def send(self, obj: dict[str, Any]) -> None:
        self.writer.write((json.dumps(obj) + "\n").encode())
        with contextlib.suppress(ConnectionError):
            await self.writer.drain()

    async def reply(self, rid: Any, result: Any) -> None:
        await self.send({"id": rid, "ok": True, "result": result})

    async def error(self, rid: Any, code: str, message: str) -> None:
        await self.send({"id": rid, "ok": False, "error": {"code": code, "message": message}})


class FakeBridge:
    """Records every request; methods are overridable per test through ``handlers``."""

    def __init__(self, path: str, *, secret: str | None = None) -> None:
        self.path = path
        self.secret = secret
        self.server: asyncio.base_events.Server | None = None
        self.conns: list[FakeConn] = []
        self.requests: list[dict[str, Any]] = []
        self.hellos: list[dict[str, Any]] = []
        self.max_outstanding = 0
        self.max_in_flight = 256
        self.delay_running = 0
        self.delay_peak = 0
        self.handlers: dict[str, Handler] = {
            "ping": self._ping,
            "echo": self._echo,
            "delay": self._delay,
            "never": self._never,
            "fail": self._fail,
            "events.subscribe": self._subscribe,
            "peer.request": self._peer_request,
            "blob": self._blob,
        }

    async def start(self) -> None:
        self.server = await asyncio.start_unix_server(self._accept, path=self.path)
        os.chmod(self.path, 0o600)

    async def stop(self) -> None:
        await self.drop_connections()
        if self.server:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def drop_connections(self) -> None:
        for c in list(self.conns):
            c.writer.close()
            with contextlib.suppress(Exception):
                await c.writer.wait_closed()
        self.conns.clear()

    async def push(self, name: str, data: dict[str, Any], seq: int = 1) -> None:
        for c in list(self.conns):
            if any(t == "*" or t == name or (t.endswith("*") and name.startswith(t[:-1])) for t in c.topics):
                await c.send({"event": name, "seq": seq, "time": 0, "data": data})

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = FakeConn(self, reader, writer)
        self.conns.append(conn)
        try:
            while line := await reader.readline():
                msg = json.loads(line)
                if "id" not in msg:
                    self._notification(conn, msg)
                    continue
                self.requests.append(msg)
                if msg["method"] == "hello":
                    await self._hello(conn, msg["id"], msg.get("params") or {})
                    continue
                if not conn.authenticated:
                    await conn.error(msg["id"], "unauthenticated", "call hello first")
                    continue
                handler = self.handlers.get(msg["method"])
                if handler is None:
                    await conn.error(msg["id"], "unknown-method", msg["method"])
                    continue
                asyncio.ensure_future(handler(conn, msg["id"], msg.get("params") or {}))
        except (ConnectionError, ValueError):
            pass
        finally:
            if conn in self.conns:
                self.conns.remove(conn)

    def _notification(self, conn: FakeConn, msg: dict[str, Any]) -> None:
        params = msg.get("params") or {}
        sid = params.get("id")
        if msg["method"] == "stream.credit":
            conn.credits[sid] = conn.credits.get(sid, 0) + int(params.get("credits", 0))
            conn.credit_event.setdefault(sid, asyncio.Event()).set()
        elif msg["method"] == "stream.cancel":
            conn.cancelled.add(sid)
            conn.credit_event.setdefault(sid, asyncio.Event()).set()

    async def _hello(self, conn: FakeConn, rid: Any, params: dict[str, Any]) -> None:
        self.hellos.append(params)
        if 1 not in params.get("versions", [params.get("protocol", 1)]):
            await conn.error(rid, "unsupported-version", "supported: 1")
            return
        if self.secret and params.get("secret") != self.secret:
            await conn.error(rid, "unauthenticated", "invalid or missing secret")
            conn.writer.close()
            return
        conn.authenticated = True
        conn.topics.update(params.get("subscribe") or [])
        await conn.reply(
            rid,
            {
                "protocol": 1,
                "server": "fake-bridge",
                "methods": sorted(self.handlers),
                "limits": {"maxInFlight": self.max_in_flight},
            },
        )

    async def _ping(self, conn: FakeConn, rid: Any, params: dict[str, Any]) -> None:
        await conn.reply(rid, {"pong": True})

    async def _echo(self, conn: FakeConn, rid: Any, params: dict[str, Any]) -> None:
        await conn.reply(rid, {"echo": params})

    async def _delay(self, conn: FakeConn, rid: Any, params: dict[str, Any]) -> None:
        self.delay_running += 1
        self.delay_peak = max(self.delay_peak, self.delay_running)
        try:
            await asyncio.sleep(params["ms"] / 1000)
        finally:
            self.delay_running -= 1
        await conn.reply(rid, {"tag": params["tag"]})

    async def _never(self, conn: FakeConn, rid: Any, params: dict[str, Any]) -> None:
        await asyncio.sleep(params.get("late_ms", 0) / 1000)
        if params.get("late_ms"):
            await conn.reply(rid, {"late": True})

    async def _fail(self, conn: FakeConn, rid: Any, params: dict[str, Any]) -> None:
        await conn.error(rid, params.get("code", "peer-unavailable"), "worker gone")

    async def _subscribe(self, conn: FakeConn, rid: Any, params: dict[str, Any]) -> None:
        conn.topics.update(params["topics"])
        await conn.reply(rid, {"subscribed": sorted(conn.topics)})

    async def _peer_request(self, conn: FakeConn, rid: Any, params: dict[str, Any]) -> None:
        body = json.dumps({"method": params["method"], "path": params["path"], "body": params.get("body")})
        await conn.reply(
            rid,
            {
                "statusCode": 200,
                "headers": {"content-type": "application/json"},
                "bodyBase64": base64.b64encode(body.encode()).decode(),
                "bodyLength": len(body),
            },
        )

    async def _blob(self, conn: FakeConn, rid: Any, params: dict[str, Any]) -> None:
        """Stream ``count`` chunks, never more than ``window`` beyond the client's credits."""
        count, window = params["count"], params.get("window", 8)
        conn.credits[rid] = window
        event = conn.credit_event.setdefault(rid, asyncio.Event())
        await conn.send({"id": rid, "stream": "head", "data": {"count": count}})
        sent = 0
        while sent < count:
            if rid in conn.cancelled:
                await conn.error(rid, "cancelled", "stream cancelled by client")
                return
            if conn.credits[rid] <= 0:
                event.clear()
                await event.wait()
                continue
            conn.credits[rid] -= 1
            outstanding = window - conn.credits[rid]
            self.max_outstanding = max(self.max_outstanding, outstanding)
            data = bytes([sent % 256]) * 100
            await conn.send({"id": rid, "stream": "chunk", "seq": sent, "data": base64.b64encode(data).decode()})
            sent += 1
        await conn.reply(rid, {"done": True, "chunks": sent})
