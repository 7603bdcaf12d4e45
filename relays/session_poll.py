"""The poll side of a :class:`~relays.session.GatewaySession` (``GET /get/relay/<id>/<connectionKey>``).

A worker that pushes (ws-frame, message type 2) delivers every frame of a connection by push: polling it
every idle interval only costs CPU on both ends. So a session stops idle polling while its current peer
pushes for it — a push for this connection came from that peer, or the peer's handshake advertised
``wsframe-push`` (:attr:`SessionPolling.pushes`, answered by the runtime) — and polls it only every
``push_keepalive`` seconds, which keeps the connection known to the worker (a worker forgets a connection it
has not heard of for minutes). A failover to a peer that has shown neither resumes the idle rhythm at once;
a REQ forwarded to a pushing peer starts no fast polls (its EOSE comes in the reply or by push), and a push
ends the fast polls of REQs awaiting their EOSE. Workers that never push (the published runtime) are
polled exactly as before.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from relays.bridge_outage import BridgeDown
from relays.forwarding import PeerError, PeerTransport, poll_relay
from relays.frames_filter import Frame
from relays.peer_rotation import PeerRotation
from relays.poll_schedule import PollSchedule
from relays.session_config import Fallback, SessionConfig, SessionStats

logger = logging.getLogger(__name__)


class SessionPolling:
    # Set by the runtime: whether a worker peer advertised that it pushes (None: nothing known).
    pushes: Callable[[str], bool] | None = None
    # The peer a push for this connection came from last.
    _pushed_by: str | None = None

    if TYPE_CHECKING:
        relay_key: str
        connection_key: str
        auth_token: str | None
        transport: PeerTransport
        config: SessionConfig
        fallback: Fallback | None
        stats: SessionStats
        _closed: bool
        _bridge_down: bool
        _on_fallback: bool
        _resume: bool
        _poll_failures: int
        _fallback_polled: float
        _wake: asyncio.Event
        _rotation: PeerRotation
        _schedule: PollSchedule

        async def send(self, frame: str) -> None: ...
        async def _relay_frames(self, frames: Sequence[Frame]) -> None: ...
        async def _peer_failed(self, peer: str, reason: str) -> None: ...
        async def _failover_for_poll(self) -> bool: ...

    def pushing(self) -> bool:
        """Whether the peer serving this socket delivers its frames by push (then idle polls are not needed)."""
        peer = self._rotation.current
        if peer is None or self._on_fallback or self._bridge_down or self._resume or self._rotation.stuck():
            return False
        return peer == self._pushed_by or (self.pushes is not None and self.pushes(peer))

    def _pushed(self, peer: str | None) -> None:
        """A push for this connection arrived from ``peer`` (None: not known which)."""
        if peer is not None and peer == self._rotation.current:
            if self._pushed_by != peer:
                self._pushed_by = peer
                self._wake.set()  # the loop sleeps for the push keepalive from now on
            self._schedule.pushed()

    async def _poll_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closed:
            self._schedule.pushing = self.pushing()
            delay = self._schedule.next_delay(loop.time())
            if delay > 0:
                self._wake.clear()
                try:
                    # A timeout scope, not ``wait_for``: no extra task per wait on every idle socket.
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                    continue  # woken early (a REQ or EVENT was forwarded, the peer changed): the schedule changed
                except TimeoutError:
                    pass
            if self._closed:
                return
            try:
                if self._bridge_down:
                    await self._poll_fallback(loop.time())
                    continue
                needs_failover = self._rotation.stuck() or self._on_fallback or self._resume
                if needs_failover and not await self._failover_for_poll():
                    await self._poll_fallback(loop.time())
                    continue
                await self._poll_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                # Polling must outlive any single failure, or the client silently stops getting events.
                logger.exception("session poll failed", extra={"relay": self.relay_key})
            finally:
                self._schedule.polled(loop.time())

    async def _poll_once(self) -> None:
        peer = self._rotation.current
        if peer is None:
            return
        self.stats.polls += 1
        try:
            frames = await poll_relay(
                self.transport,
                peer,
                relay_key=self.relay_key,
                connection_key=self.connection_key,
                auth_token=self.auth_token,
                timeout=self.config.poll_timeout,
            )
        except BridgeDown:
            return  # not the worker's failure: the bridge's return re-opens the subscriptions
        except PeerError as exc:
            self._poll_failures += 1
            if self._poll_failures >= self.config.poll_failures_before_failover or exc.unreachable:
                await self._peer_failed(peer, f"poll: {exc}")
                await self._failover_for_poll()
            return
        self._poll_failures = 0
        await self._relay_frames(frames)
        await self._poll_fallback(asyncio.get_running_loop().time())

    async def _poll_fallback(self, now: float) -> None:
        """Live events from the fallback (a database query per subscription): at the idle rhythm only,
        never at the fast rhythm of a REQ awaiting its EOSE from a worker."""
        if self.fallback is None or now - self._fallback_polled < self.config.poll_interval * 0.9:
            return
        self._fallback_polled = now
        # Through the same admission as a worker's frames: an event this socket already got live (another
        # node's fan-out, or a worker before the failover) is dropped by id, not sent again from the replica.
        await self._relay_frames(await self.fallback.poll())
