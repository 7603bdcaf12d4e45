"""Worker requests in flight, per peer, so that a peer reported gone fails them at once.

Without this, a request sent just after a worker's connection closed waits for the bridge to redial and
for the request timeout before the session moves on (seconds during which the client has no answer). The
bridge reports the close at once; this node's runtime tells every session of the relay, which aborts what
it still awaits from that peer.

A request is awaited in the task that makes it (no task of its own per request: this is on the path of
every client frame); aborting it cancels that task's wait, and ``run`` turns that one cancellation into a
``PeerError`` (unreachable) while any other cancellation goes on as one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from relays.forwarding import PeerError

T = TypeVar("T")


class _Call:
    __slots__ = ("aborted", "task")

    def __init__(self, task: asyncio.Task[object]) -> None:
        self.task = task
        self.aborted = False


class InFlight:
    def __init__(self) -> None:
        self._by_peer: dict[str, set[_Call]] = {}

    async def run(self, peer: str, request: Awaitable[T]) -> T:
        """Await ``request`` to ``peer``; PeerError (unreachable) if the peer is reported gone meanwhile."""
        task = asyncio.current_task()
        if task is None:  # not in a task (cannot be aborted): plain await
            return await request
        call = _Call(task)
        pending = self._by_peer.setdefault(peer, set())
        pending.add(call)
        try:
            return await request
        except asyncio.CancelledError:
            if call.aborted:
                task.uncancel()
                raise PeerError("the worker went away", unreachable=True) from None
            raise
        finally:
            pending.discard(call)
            if not pending:
                self._by_peer.pop(peer, None)

    def abort(self, peer: str) -> int:
        """Fail every request in flight to ``peer``; how many there were."""
        calls = list(self._by_peer.get(peer, ()))
        for call in calls:
            if not call.aborted:
                call.aborted = True
                call.task.cancel()
        return len(calls)
