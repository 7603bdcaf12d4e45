"""Worker requests in flight, per peer, so that a peer reported gone fails them at once.

Without this, a request sent just after a worker's connection closed waits for the bridge to redial and
for the request timeout before the session moves on (seconds during which the client has no answer). The
bridge reports the close at once; every session of the relay hears of it through the channel layer and
aborts what it still awaits from that peer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from relays.forwarding import PeerError

T = TypeVar("T")


class InFlight:
    def __init__(self) -> None:
        self._by_peer: dict[str, set[asyncio.Future[object]]] = {}
        self._aborted: set[asyncio.Future[object]] = set()

    async def run(self, peer: str, request: Awaitable[T]) -> T:
        """Await ``request`` to ``peer``; PeerError (unreachable) if the peer is reported gone meanwhile."""
        future: asyncio.Future[T] = asyncio.ensure_future(request)
        pending = self._by_peer.setdefault(peer, set())
        pending.add(future)  # type: ignore[arg-type]
        try:
            return await future
        except asyncio.CancelledError:
            if future in self._aborted:
                raise PeerError("the worker went away", unreachable=True) from None
            raise
        finally:
            pending.discard(future)  # type: ignore[arg-type]
            self._aborted.discard(future)  # type: ignore[arg-type]
            if not pending:
                self._by_peer.pop(peer, None)

    def abort(self, peer: str) -> int:
        """Fail every request in flight to ``peer``; how many there were."""
        futures = list(self._by_peer.get(peer, ()))
        for future in futures:
            if not future.done():
                self._aborted.add(future)
                future.cancel()
        return len(futures)
