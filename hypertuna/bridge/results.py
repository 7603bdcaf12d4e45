"""What the bridge client hands back: pushed events and the subscriptions that queue them, a worker's
answer to ``peer.request``, and streamed calls with credit-based flow control (see :mod:`.client`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

from .errors import BridgeProtocolError, BridgeTimeout, BridgeUnavailable


class _Client(Protocol):
    """What subscriptions and streams need of :class:`.client.BridgeClient`."""

    _subscriptions: set[EventSubscription]

    async def _send_call(
        self, method: str, params: dict[str, Any], *, stream: BridgeStream | None = None
    ) -> asyncio.Future[Any]: ...

    async def _notify(self, method: str, params: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class BridgeEvent:
    """One server-pushed event (``peer.connected``, ``peer.register``, ...)."""

    name: str
    data: dict[str, Any]
    seq: int = 0
    time: int = 0


@dataclass(frozen=True)
class PeerResponse:
    """A worker's answer to ``peer.request``."""

    status_code: int
    headers: dict[str, Any]
    body: bytes

    def text(self) -> str:
        return self.body.decode("utf-8")

    def json(self) -> Any:
        return json.loads(self.body)

    def ndjson(self) -> list[Any]:
        return [json.loads(line) for line in self.body.decode("utf-8").split("\n") if line.strip()]


def topic_matches(topics: Iterable[str], name: str) -> bool:
    return any(t in ("*", name) or (t.endswith("*") and name.startswith(t[:-1])) for t in topics)


class EventSubscription:
    """Async iterator over events matching ``topics``; close it (or use ``async with``) when done."""

    def __init__(self, client: _Client, topics: tuple[str, ...], maxsize: int) -> None:
        self._client = client
        self.topics = topics
        self._queue: asyncio.Queue[BridgeEvent | None] = asyncio.Queue(maxsize=maxsize)
        self.dropped = 0
        self.closed = False

    def _offer(self, event: BridgeEvent) -> None:
        if self.closed:
            return
        if self._queue.full():
            # Keep the newest state changes: drop the oldest and remember the loss.
            with contextlib.suppress(asyncio.QueueEmpty):
                self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(event)

    async def get(self, timeout_s: float | None = None) -> BridgeEvent:
        if self.dropped:
            count, self.dropped = self.dropped, 0
            return BridgeEvent("events.dropped", {"count": count})
        try:
            async with asyncio.timeout(timeout_s):
                item = await self._queue.get()
        except TimeoutError:
            raise BridgeTimeout("no event within timeout") from None
        if item is None:
            raise StopAsyncIteration
        return item

    def __aiter__(self) -> EventSubscription:
        return self

    async def __anext__(self) -> BridgeEvent:
        if self.closed and self._queue.empty():
            raise StopAsyncIteration
        return await self.get()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._client._subscriptions.discard(self)
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)

    async def __aenter__(self) -> EventSubscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class BridgeStream:
    """A streamed call: ``head`` (metadata sent before the chunks), chunks by async iteration,
    ``result`` once exhausted. Use as ``async with client.stream(...) as s``."""

    def __init__(self, client: _Client, method: str, params: dict[str, Any], timeout: float, window: int) -> None:
        self._client = client
        self.method = method
        self.params = params
        self.timeout = timeout
        self.window = window
        self.id: int | None = None
        self.head: dict[str, Any] | None = None
        self.result: Any = None
        self._head_ready: asyncio.Event = asyncio.Event()
        self._chunks: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
        self._done = False
        self._future: asyncio.Future[Any] | None = None

    async def __aenter__(self) -> BridgeStream:
        self._future = await self._client._send_call(self.method, {**self.params, "window": self.window}, stream=self)
        head_wait = asyncio.ensure_future(self._head_ready.wait())
        try:
            done, _ = await asyncio.wait(
                {head_wait, self._future}, timeout=self.timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            head_wait.cancel()
        if not done:
            await self.cancel()
            raise BridgeTimeout(f"{self.method}: no response within {self.timeout}s")
        if self._future in done and not self._head_ready.is_set():
            self._future.result()  # raises the call's error
            raise BridgeProtocolError(f"{self.method} finished without a stream head")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._done:
            await self.cancel()

    def _on_head(self, data: dict[str, Any]) -> None:
        self.head = data
        self._head_ready.set()

    def _on_chunk(self, data: bytes) -> None:
        self._chunks.put_nowait(data)

    def _on_end(self, error: BaseException | None) -> None:
        self._chunks.put_nowait(error)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        while True:
            try:
                async with asyncio.timeout(self.timeout):
                    item = await self._chunks.get()
            except TimeoutError:
                await self.cancel()
                raise BridgeTimeout(f"{self.method}: stream stalled for {self.timeout}s") from None
            if item is None:
                self._done = True
                assert self._future is not None
                self.result = self._future.result()
                return
            if isinstance(item, BaseException):
                self._done = True
                raise item
            # Credit is returned only once the consumer has taken the chunk: this is what bounds
            # the bridge to `window` chunks in flight for a slow consumer.
            await self._client._notify("stream.credit", {"id": self.id, "credits": 1})
            yield item

    async def read(self) -> bytes:
        """Collect the whole stream (only for bodies known to be small enough)."""
        parts = [chunk async for chunk in self]
        return b"".join(parts)

    async def cancel(self) -> None:
        if self._done or self.id is None:
            return
        self._done = True
        with contextlib.suppress(BridgeUnavailable):
            await self._client._notify("stream.cancel", {"id": self.id})
