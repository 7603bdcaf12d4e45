"""Asyncio client of the bridge RPC (newline-delimited JSON over a Unix socket or loopback TCP).

The bridge (``node bridge/src/main.mjs``) owns every Holepunch data structure; this client is the one
place Python talks to it. Guarantees:

* every call carries a request id and a deadline; a late answer is dropped, never delivered to
  another call;
* at most the bridge's ``maxInFlight`` calls are outstanding: further callers wait for a slot (within
  their own deadline) instead of being refused;
* a lost connection fails the calls in flight with :class:`BridgeUnavailable` at once and, with
  ``reconnect=True``, is re-established in the background with exponential backoff (subscriptions are
  renewed by the new ``hello``; subscribers receive a ``bridge.reconnected`` event so they can resync);
* streamed results are pulled with credit-based flow control: the bridge never sends more than
  ``window`` chunks ahead of the consumer;
* event subscribers each have a bounded queue; when a slow subscriber overflows, the oldest events
  are dropped and an ``events.dropped`` event tells it how many.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
import os
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import BridgeError, BridgeProtocolError, BridgeTimeout, BridgeUnavailable
from .methods import BridgeMethods
from .results import BridgeEvent, BridgeStream, EventSubscription, topic_matches

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
MAX_LINE_BYTES = 64 * 1024 * 1024


@dataclass
class _Pending:
    future: asyncio.Future[Any]
    stream: BridgeStream | None = None


@dataclass
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    hello: dict[str, Any]
    read_task: asyncio.Task[None] | None = None
    pending: dict[int, _Pending] = field(default_factory=dict)
    lost: bool = False


class BridgeClient(BridgeMethods):
    """Client of the bridge RPC. See the module docstring for the guarantees.

    ``socket_path`` (Unix socket) or ``tcp=(host, port)`` with ``secret``. ``subscribe`` lists event
    topics wanted from the start (``"peer.*"`` style prefixes allowed).
    """

    def __init__(
        self,
        *,
        socket_path: str | None = None,
        tcp: tuple[str, int] | None = None,
        secret: str | None = None,
        client_name: str = "hypertuna",
        subscribe: Iterable[str] = (),
        connect_timeout: float = 5.0,
        call_timeout: float = 30.0,
        reconnect: bool = True,
        backoff_initial: float = 0.2,
        # A local socket: retrying every couple of seconds costs nothing and finds a restarted bridge at once.
        backoff_max: float = 2.0,
        event_queue_size: int = 10_000,
    ) -> None:
        if not socket_path and not tcp:
            raise ValueError("socket_path or tcp is required")
        self.socket_path = socket_path
        self.tcp = tcp
        self.secret = secret
        self.client_name = client_name
        self.connect_timeout = connect_timeout
        self.call_timeout = call_timeout
        self.reconnect = reconnect
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.event_queue_size = event_queue_size
        self._topics: set[str] = set(subscribe)
        self._subscriptions: set[EventSubscription] = set()
        self._callbacks: list[tuple[tuple[str, ...], Callable[[BridgeEvent], Any]]] = []
        self._ids = itertools.count(1)
        self._conn: _Conn | None = None
        self._connected = asyncio.Event()
        self._closed = False
        self._connect_lock = asyncio.Lock()
        self._write_lock = asyncio.Lock()
        self._reconnect_task: asyncio.Task[None] | None = None
        # A connection was lost and none has replaced it yet: the next one is announced (bridge.reconnected).
        self._lost = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._slots: asyncio.Semaphore | None = None
        self.server_info: dict[str, Any] = {}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **kwargs: Any) -> BridgeClient:
        """A client configured like the bridge itself: ``HYPERTUNA_BRIDGE_SOCKET`` (default
        ``./var/bridge.sock``, relative to the working directory), or ``HYPERTUNA_BRIDGE_TCP``
        (``127.0.0.1:PORT``) when the socket is set to ``off``; ``HYPERTUNA_BRIDGE_SECRET`` if set."""
        env = os.environ if environ is None else environ
        secret = env.get("HYPERTUNA_BRIDGE_SECRET") or None
        socket_path = env.get("HYPERTUNA_BRIDGE_SOCKET") or "./var/bridge.sock"
        tcp = env.get("HYPERTUNA_BRIDGE_TCP")
        if socket_path == "off":
            if not tcp:
                raise ValueError("HYPERTUNA_BRIDGE_SOCKET=off needs HYPERTUNA_BRIDGE_TCP")
            host, _, port = tcp.rpartition(":")
            return cls(tcp=(host, int(port)), secret=secret, **kwargs)
        return cls(socket_path=os.path.abspath(socket_path), secret=secret, **kwargs)

    def _spawn(self, coro: Any) -> None:
        # Background tasks are referenced until done so the loop cannot garbage-collect them.
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                logger.debug("bridge background task failed: %s", t.exception())

        task.add_done_callback(done)

    # ---- connection management ----

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.lost

    async def connect(self) -> dict[str, Any]:
        """Connect and handshake; returns the ``hello`` result. Raises :class:`BridgeUnavailable`."""
        if self._closed:
            raise BridgeUnavailable("client is closed")
        async with self._connect_lock:
            if self.connected:
                return self.server_info
            conn = await self._open()
            self._conn = conn
            self.server_info = conn.hello
            self._connected.set()
            # Whoever connects after a loss (the reconnect loop, or a caller that found no loop running)
            # tells the subscribers, so none waits for a reconnection that already happened.
            if self._lost:
                self._lost = False
                logger.info("reconnected to the bridge")
                self._dispatch(BridgeEvent("bridge.reconnected", {"server": conn.hello}))
            return conn.hello

    async def _open(self) -> _Conn:
        # Timeout scopes, not ``asyncio.wait_for``: on Python 3.11 a cancel that came as the connection attempt
        # failed was lost there (wait_for returned the failure), and the reconnect loop then never ended.
        try:
            async with asyncio.timeout(self.connect_timeout):
                if self.socket_path:
                    reader, writer = await asyncio.open_unix_connection(self.socket_path, limit=MAX_LINE_BYTES)
                else:
                    assert self.tcp is not None
                    reader, writer = await asyncio.open_connection(self.tcp[0], self.tcp[1], limit=MAX_LINE_BYTES)
        except (OSError, TimeoutError) as exc:
            raise BridgeUnavailable(f"cannot connect to the bridge: {exc}") from exc
        params: dict[str, Any] = {
            "versions": [PROTOCOL_VERSION],
            "client": self.client_name,
            "subscribe": sorted(self._topics),
        }
        if self.secret:
            params["secret"] = self.secret
        try:
            writer.write((json.dumps({"id": 0, "method": "hello", "params": params}) + "\n").encode())
            await writer.drain()
            async with asyncio.timeout(self.connect_timeout):
                line = await reader.readline()
        except (OSError, TimeoutError) as exc:
            writer.close()
            raise BridgeUnavailable(f"bridge handshake failed: {exc}") from exc
        if not line:
            writer.close()
            raise BridgeUnavailable("bridge closed the connection during the handshake")
        try:
            reply = json.loads(line)
        except ValueError as exc:
            writer.close()
            raise BridgeProtocolError("bridge sent invalid JSON during the handshake") from exc
        if not reply.get("ok"):
            writer.close()
            err = reply.get("error") or {}
            raise BridgeError(err.get("code", "internal"), err.get("message", "hello refused"), err.get("data"))
        hello = reply["result"]
        if hello.get("protocol") != PROTOCOL_VERSION:
            writer.close()
            raise BridgeProtocolError(f"bridge chose unsupported protocol {hello.get('protocol')}")
        conn = _Conn(reader=reader, writer=writer, hello=hello)
        conn.read_task = asyncio.create_task(self._read_loop(conn), name="bridge-client-reader")
        return conn

    async def close(self) -> None:
        """Close the connection and stop reconnecting; pending calls fail with BridgeUnavailable."""
        self._closed = True
        if self._reconnect_task:
            self._reconnect_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reconnect_task
        conn = self._conn
        self._conn = None
        self._connected.clear()
        if conn:
            self._fail_pending(conn, BridgeUnavailable("client closed"))
            conn.lost = True
            conn.writer.close()
            with contextlib.suppress(Exception):
                await conn.writer.wait_closed()
            if conn.read_task:
                conn.read_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await conn.read_task
        for sub in list(self._subscriptions):
            sub.close()

    async def __aenter__(self) -> BridgeClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _fail_pending(self, conn: _Conn, error: BaseException) -> None:
        pending = list(conn.pending.values())
        conn.pending.clear()
        for p in pending:
            if p.stream is not None:
                p.stream._on_end(error)
            if not p.future.done():
                p.future.set_exception(error)

    def _on_lost(self, conn: _Conn, reason: str) -> None:
        if conn.lost:
            return
        conn.lost = True
        if self._conn is conn:
            self._conn = None
            self._connected.clear()
            self._lost = True
        self._fail_pending(conn, BridgeUnavailable(f"connection to the bridge lost: {reason}"))
        with contextlib.suppress(Exception):
            conn.writer.close()
        if not self._closed:
            self._dispatch(BridgeEvent("bridge.disconnected", {"reason": reason}))
            if self.reconnect and (self._reconnect_task is None or self._reconnect_task.done()):
                self._reconnect_task = asyncio.create_task(self._reconnect_loop(), name="bridge-client-reconnect")

    async def _reconnect_loop(self) -> None:
        """Until connected: a connection lost again right after the handshake is re-established too, and
        no failure ends the loop early (a loop that died would leave the client without a connection)."""
        delay = self.backoff_initial
        while not self._closed and not self.connected:
            try:
                await self.connect()
                continue
            except (BridgeUnavailable, BridgeError, BridgeProtocolError) as exc:
                logger.debug("bridge reconnect failed: %s", exc)
            except Exception:
                logger.warning("bridge reconnect failed unexpectedly; retrying", exc_info=True)
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise asyncio.CancelledError  # a cancel that what it interrupted swallowed still ends the loop
            # Full jitter keeps many web workers from reconnecting in lockstep after a restart.
            await asyncio.sleep(random.uniform(0, delay))
            delay = min(self.backoff_max, delay * 2)

    async def wait_connected(self, timeout_s: float | None = None) -> None:
        """Wait until connected (connecting now if never connected)."""
        if self.connected:
            return
        if self._conn is None and (self._reconnect_task is None or self._reconnect_task.done()):
            try:
                await self.connect()
                return
            except BridgeUnavailable:
                if not self.reconnect:
                    raise
                self._reconnect_task = asyncio.create_task(self._reconnect_loop(), name="bridge-client-reconnect")
        try:
            async with asyncio.timeout(timeout_s):
                await self._connected.wait()
        except TimeoutError:
            raise BridgeUnavailable("bridge not connected") from None

    # ---- I/O ----

    async def _read_loop(self, conn: _Conn) -> None:
        reason = "closed by bridge"
        try:
            while True:
                try:
                    line = await conn.reader.readline()
                except ValueError:
                    reason = "frame too large"
                    break
                if not line:
                    break
                try:
                    frame = json.loads(line)
                except ValueError:
                    logger.warning("bridge sent an invalid JSON line")
                    continue
                self._on_frame(conn, frame)
        except (OSError, asyncio.IncompleteReadError) as exc:
            reason = str(exc) or type(exc).__name__
        except asyncio.CancelledError:
            reason = "cancelled"
            raise
        finally:
            self._on_lost(conn, reason)

    def _on_frame(self, conn: _Conn, frame: dict[str, Any]) -> None:
        if "event" in frame:
            self._dispatch(
                BridgeEvent(
                    frame["event"], frame.get("data") or {}, int(frame.get("seq", 0)), int(frame.get("time", 0))
                )
            )
            return
        fid = frame.get("id")
        if not isinstance(fid, int):
            if frame.get("ok") is False:
                logger.warning("bridge error without a live call: %s", frame.get("error"))
            return
        p = conn.pending.get(fid)
        if p is None:
            if frame.get("ok") is False:
                logger.warning("bridge error without a live call: %s", frame.get("error"))
            return
        kind = frame.get("stream")
        if kind == "head" and p.stream is not None:
            p.stream._on_head(frame.get("data") or {})
            return
        if kind == "chunk" and p.stream is not None:
            p.stream._on_chunk(base64.b64decode(frame.get("data", "")))
            return
        conn.pending.pop(fid, None)
        if frame.get("ok"):
            if not p.future.done():
                p.future.set_result(frame.get("result"))
            if p.stream is not None:
                p.stream._on_end(None)
        else:
            err = frame.get("error") or {}
            exc = BridgeError(err.get("code", "internal"), err.get("message", ""), err.get("data"))
            if not p.future.done():
                p.future.set_exception(exc)
            if p.stream is not None:
                p.stream._on_end(exc)

    def _dispatch(self, event: BridgeEvent) -> None:
        local = event.name.startswith("bridge.")
        for sub in list(self._subscriptions):
            if local or topic_matches(sub.topics, event.name):
                sub._offer(event)
        for topics, cb in list(self._callbacks):
            if local or topic_matches(topics, event.name):
                try:
                    result = cb(event)
                    if asyncio.iscoroutine(result):
                        self._spawn(result)
                except Exception:
                    logger.exception("bridge event callback failed")

    async def _write(self, conn: _Conn, obj: dict[str, Any]) -> None:
        data = (json.dumps(obj, separators=(",", ":")) + "\n").encode()
        async with self._write_lock:
            if conn.lost:
                raise BridgeUnavailable("connection to the bridge lost")
            try:
                conn.writer.write(data)
                await conn.writer.drain()
            except (OSError, RuntimeError) as exc:
                self._on_lost(conn, str(exc))
                raise BridgeUnavailable(f"write to the bridge failed: {exc}") from exc

    async def _notify(self, method: str, params: dict[str, Any]) -> None:
        conn = self._conn
        if conn is None or conn.lost:
            raise BridgeUnavailable("bridge not connected")
        await self._write(conn, {"method": method, "params": params})

    async def _send_call(
        self, method: str, params: dict[str, Any], *, stream: BridgeStream | None = None
    ) -> asyncio.Future[Any]:
        await self.wait_connected(self.connect_timeout)
        conn = self._conn
        if conn is None:
            raise BridgeUnavailable("bridge not connected")
        # Client-side backpressure: never exceed the bridge's in-flight limit, so a burst of
        # callers waits here (within their own timeout) instead of being refused as 'overloaded'.
        if self._slots is None:
            limit = int((self.server_info.get("limits") or {}).get("maxInFlight") or 256)
            self._slots = asyncio.Semaphore(limit)
        slots = self._slots
        await slots.acquire()
        if conn.lost:
            slots.release()
            raise BridgeUnavailable("connection to the bridge lost")
        cid = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def settled(f: asyncio.Future[Any]) -> None:
            # The slot is held until the bridge answers (or the connection is lost), even when the
            # caller gave up earlier: the bridge is still working on it. Reading the exception here
            # keeps abandoned calls from logging "exception was never retrieved".
            slots.release()
            if not f.cancelled():
                f.exception()

        fut.add_done_callback(settled)
        conn.pending[cid] = _Pending(fut, stream)
        if stream is not None:
            stream.id = cid
        try:
            await self._write(conn, {"id": cid, "method": method, "params": params})
        except BridgeUnavailable as exc:
            conn.pending.pop(cid, None)
            if not fut.done():
                fut.set_exception(exc)
            raise
        return fut

    # ---- public API ----

    async def call(self, method: str, params: dict[str, Any] | None = None, *, timeout_s: float | None = None) -> Any:
        """Call ``method``; raises BridgeError / BridgeTimeout / BridgeUnavailable."""
        limit = self.call_timeout if timeout_s is None else timeout_s
        deadline = time.monotonic() + limit
        # Timeout scopes rather than ``wait_for``, which wraps the coroutine in one more task per call: this is
        # on the path of every client frame.
        async with asyncio.timeout(limit):
            fut = await self._send_call(method, params or {})
        remaining = max(0.0, deadline - time.monotonic())
        try:
            async with asyncio.timeout(remaining):
                return await asyncio.shield(fut)
        except TimeoutError:
            # The call stays registered so its late answer releases the in-flight slot; nobody
            # awaits it any more, so that answer is dropped.
            raise BridgeTimeout(f"{method}: no answer within {limit}s") from None

    def stream(
        self, method: str, params: dict[str, Any] | None = None, *, timeout_s: float | None = None, window: int = 8
    ) -> BridgeStream:
        """A streamed call; use ``async with client.stream(...) as s: async for chunk in s``."""
        return BridgeStream(self, method, {**(params or {}), "stream": True}, timeout_s or self.call_timeout, window)

    def events(self, *topics: str, maxsize: int | None = None) -> EventSubscription:
        """Subscribe to events (``"peer.*"`` prefixes allowed). Subscribes on the bridge if needed."""
        wanted = topics or ("*",)
        sub = EventSubscription(self, tuple(wanted), maxsize or self.event_queue_size)
        self._subscriptions.add(sub)
        self._want_topics(wanted)
        return sub

    def on_event(self, callback: Callable[[BridgeEvent], Any], *topics: str) -> Callable[[], None]:
        """Register a callback (plain or async) for events; returns a function that unregisters it."""
        entry = (tuple(topics or ("*",)), callback)
        self._callbacks.append(entry)
        self._want_topics(entry[0])

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._callbacks.remove(entry)

        return remove

    def _want_topics(self, topics: Iterable[str]) -> None:
        new = [t for t in topics if t not in self._topics]
        if not new:
            return
        self._topics.update(new)
        if self.connected:
            self._spawn(self.call("events.subscribe", {"topics": new}))

    async def ping(self, timeout_s: float = 2.0) -> float:
        """Round-trip time of a ``ping`` call in milliseconds."""
        started = time.monotonic()
        await self.call("ping", timeout_s=timeout_s)
        return (time.monotonic() - started) * 1000.0

    async def is_ready(self, timeout_s: float = 1.0) -> bool:
        """True when the bridge answers a ping within ``timeout_s``; never raises."""
        try:
            async with asyncio.timeout(timeout_s):
                await self.ping(timeout_s)
        except (BridgeUnavailable, BridgeTimeout, BridgeError, BridgeProtocolError, TimeoutError):
            return False
        return True
