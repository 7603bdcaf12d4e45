"""``GatewaySession``: one client WebSocket's conversation with the workers of one relay.

Plain asyncio, no Django: the consumer hands it frames and callbacks, tests drive it with fakes.

Guarantees:
- frames from the client are handled strictly in arrival order (one FIFO, worked by one task while frames
  wait), and the FIFO is bounded: a client that floods faster than the relay answers gets a
  ``rate-limited:`` NOTICE for the frames that do not fit, never unbounded memory;
- a frame is tried on each usable peer at most once (rotation); a peer that fails to answer is reported
  to the health tracker and skipped; an answer with an error status is relayed, not retried;
- when the current peer stops answering polls the session moves to the next peer and re-sends its open
  subscriptions there (``since`` advanced past what the client already has), so a second worker of the
  same relay takes over without the client reconnecting;
- with no usable peer left the client is told why (``NOTICE``) and the socket is closed with 1013, unless a
  fallback (read-only replica, leased writes) can serve it;
- every error the client sees is a ``NOTICE`` (or an ``OK false`` / ``CLOSED`` for the frame at fault);
- polling follows :class:`~relays.poll_schedule.PollSchedule`: once per idle interval, and fast right after
  a forwarded REQ until its EOSE arrives (workers that never push answer REQs only through polls); a worker
  that pushes is only polled to keep the connection known to it (``relays.session_poll``);
- the client sees only frames of subscriptions it has open, each live event once per subscription (the
  gateway's fan-out of an accepted EVENT and the worker's later copy are one delivery), and never the
  worker's subscription chatter; a worker that refuses the client's credentials ends the socket once,
  with a NOTICE and 4403;
- a worker whose connection closes (as this node's bridge reports it, :meth:`GatewaySession.peer_changed`)
  fails the requests in flight to it at once, so the next answer comes from another peer or the replica
  without waiting out a request timeout; a socket served by the replica returns to the worker, with its
  subscriptions re-opened, once the worker is back and serving the relay again (a worker that answers
  ``Relay not found`` is still reopening its relays: the message goes elsewhere and it is asked again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

from hypertuna.nostr import (
    CloseMessage,
    Event,
    EventMessage,
    FrameError,
    InvalidEvent,
    ReqMessage,
    UnknownMessageType,
    event_frame,
    notice_frame,
    ok_frame,
    parse_client_message,
    unsupported_frame,
    verify_event,
)
from relays.bridge_outage import BRIDGE_BACK_NOTICE, BRIDGE_DOWN_NOTICE, BridgeDown, outage_reply
from relays.forwarding import PeerError, PeerTransport, post_relay
from relays.frames_filter import (
    Frame,
    WorkerFrame,
    accepted_event,
    read_frame,
    relay_not_loaded,
    worker_frames_dropped,
)
from relays.inflight import InFlight
from relays.peer_rotation import PeerRotation
from relays.poll_schedule import PollSchedule
from relays.session_config import (
    CLOSE_AUTH_REJECTED,
    CLOSE_NO_PEERS,
    Fallback,
    HealthReporter,
    SessionConfig,
    SessionStats,
)
from relays.session_poll import SessionPolling
from relays.subscriptions import Subscriptions

logger = logging.getLogger(__name__)


class GatewaySession(SessionPolling):
    def __init__(
        self,
        *,
        relay_key: str,
        peers: list[str],
        transport: PeerTransport,
        send: Callable[[str], Awaitable[None]],
        close: Callable[[int, str], Awaitable[None]],
        auth_token: str | None,
        health: HealthReporter,
        refresh_peers: Callable[[], Awaitable[list[str]]] | None = None,
        fallback: Fallback | None = None,
        config: SessionConfig | None = None,
        on_forward: Callable[[str], None] | None = None,
        on_accepted: Callable[[Event], Awaitable[None]] | None = None,
        send_many: Callable[[list[str]], Awaitable[None]] | None = None,
    ) -> None:
        self.relay_key = relay_key
        self.connection_key = secrets.token_hex(16)
        self.transport = transport
        self.auth_token = auth_token
        self.health = health
        self.config = config or SessionConfig()
        self.fallback = fallback
        self.stats = SessionStats()
        self._send = send
        # Several frames of one answer at once (the consumer's batch send); else one ``send`` each.
        self._send_many = send_many
        self._close = close
        self._refresh_peers = refresh_peers
        self._on_forward = on_forward
        # Called once per EVENT a worker accepted through this socket: the gateway-side live fan-out.
        self._on_accepted = on_accepted
        self._rotation = PeerRotation(peers)
        self._subscriptions = Subscriptions(max_open=self.config.max_subscriptions)
        # Client frames waiting, and the task working through them: it exists only while frames wait, so an
        # idle socket holds no task for it.
        self._queue: deque[str] = deque()
        self._draining: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._poll_failures = 0
        self._schedule = PollSchedule(
            idle=self.config.poll_interval,
            min_gap=self.config.fast_poll_min_gap,
            growth=self.config.fast_poll_growth,
            bound=self.config.fast_poll_bound,
            keepalive=self.config.push_keepalive,
        )
        self._wake = asyncio.Event()
        self._fallback_polled = 0.0
        self._inflight = InFlight()
        # True while the fallback (replica) serves this socket because no worker could.
        self._on_fallback = False
        # This node's bridge is away (see relays.bridge_outage); back: re-open the subscriptions on the worker.
        self._bridge_down = False
        self._resume = False

    # --- lifecycle --------------------------------------------------------------------------------

    @property
    def current_peer(self) -> str | None:
        return self._rotation.current

    @property
    def closed(self) -> bool:
        return self._closed

    async def bridge_changed(self, *, up: bool) -> None:
        """This node's bridge went away (the client is told; nothing counts against the workers) or is back
        (the client is told; the poll loop re-opens the subscriptions on the worker)."""
        if up == (not self._bridge_down):
            return
        self._bridge_down = not up
        self._resume = up
        self._wake.set()
        await self.send(notice_frame(BRIDGE_BACK_NOTICE if up else BRIDGE_DOWN_NOTICE))

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._poll_loop(), name=f"session-poll-{self.connection_key[:8]}")]

    async def stop(self) -> None:
        """Cancel the session's tasks (the socket is closing or closed)."""
        self._closed = True
        current = asyncio.current_task()
        if self._draining is not None:
            self._tasks.append(self._draining)
        for task in self._tasks:
            if task is not current:
                task.cancel()
        for task in self._tasks:
            if task is not current:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._tasks = []
        self._queue.clear()

    def enqueue(self, raw: str) -> bool:
        """Queue a client frame; False (and a NOTICE) when the FIFO is full."""
        self.stats.frames_in += 1
        self.stats.bytes_in += len(raw)
        if len(self._queue) >= self.config.max_queued_frames:
            asyncio.get_running_loop().create_task(
                self.send(notice_frame("rate-limited: too many frames waiting for the relay; slow down"))
            )
            return False
        self._queue.append(raw)
        if self._draining is None and not self._closed:
            self._draining = asyncio.get_running_loop().create_task(
                self._process_frames(), name=f"session-frames-{self.connection_key[:8]}"
            )
        return True

    async def send(self, frame: str) -> None:
        if self._closed:
            return
        self.stats.frames_out += 1
        self.stats.bytes_out += len(frame)
        await self._send(frame)

    async def send_all(self, frames: list[str]) -> None:
        """Frames of one answer, in order, handed to the socket together."""
        if self._closed or not frames:
            return
        if self._send_many is None or len(frames) == 1:
            for frame in frames:
                await self.send(frame)
            return
        self.stats.frames_out += len(frames)
        self.stats.bytes_out += sum(map(len, frames))
        await self._send_many(frames)

    async def deliver(self, frames: Sequence[Frame], peer: str | None = None) -> None:
        """Frames pushed by a worker (``peer`` when known; a ws-frame message) for this connection."""
        self._pushed(peer)
        await self._relay_frames(frames)

    async def offer_live(self, event: Event) -> None:
        """An EVENT a worker accepted through the gateway (this node or another): deliver it now to this
        socket's subscriptions that match it and have had their EOSE (before EOSE it belongs to the stored
        answer the worker is producing). The worker's own copy, arriving later, is then dropped by id."""
        await self._relay_frames([event_frame(sub_id, event) for sub_id in self._subscriptions.matching(event)])

    async def _relay_frames(self, frames: Sequence[Frame]) -> None:
        """Send worker (or fallback) frames to the client, minus frames of subscriptions it has not opened and
        what it already has, and remember what each subscription delivered. Frames the gateway built itself
        come already read (``WorkerFrame``) and are not parsed again."""
        admitted: list[str] = []
        for item in frames:
            frame = item if isinstance(item, WorkerFrame) else read_frame(item)
            if frame.is_auth_rejection:
                await self.send_all(admitted)
                await self._auth_rejected(frame.notice or "")
                return
            dropped = self._subscriptions.admit(frame)
            if dropped is not None:
                worker_frames_dropped.labels(reason=dropped).inc()
                continue
            if frame.kind in ("EOSE", "CLOSED"):
                self._schedule.settled(frame.subscription_id or "")
            admitted.append(frame.text)
        await self.send_all(admitted)

    # --- frames -----------------------------------------------------------------------------------

    async def _process_frames(self) -> None:
        """Handle the waiting frames in order, then end (``enqueue`` starts it again for the next frame)."""
        try:
            while self._queue and not self._closed:
                raw = self._queue.popleft()
                try:
                    await self._handle(raw)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    # A bug handling one frame must not end the conversation: report and continue.
                    logger.exception("session frame handling failed", extra={"relay": self.relay_key})
                    await self.send(notice_frame("error: the gateway could not process this message"))
        finally:
            self._draining = None

    async def _handle(self, raw: str) -> None:
        try:
            message = parse_client_message(raw)
        except UnknownMessageType:
            message = None  # PING/PONG and newer types travel to the worker unchanged
        except FrameError as exc:
            await self.send(exc.reply())
            return
        if isinstance(message, EventMessage):
            # Verified here so that forged events never cost a worker anything, and so that the
            # fallback path (replica, leased writes) can rely on it.
            try:
                verify_event(message.event)
            except InvalidEvent as exc:
                await self.send(ok_frame(message.event.id, False, exc.message))
                return
        if isinstance(message, ReqMessage) and (refused := self._subscriptions.open(message, raw)) is not None:
            return await self.send(refused)
        if isinstance(message, CloseMessage):
            self._subscriptions.close(message.subscription_id)
        if isinstance(message, (ReqMessage, CloseMessage)):
            self._schedule.settled(message.subscription_id)
        frames, from_worker = await self._forward(raw, message)
        await self._relay_frames(frames)
        if self._closed:
            return
        if from_worker and isinstance(message, ReqMessage):
            self._await_eose(message.subscription_id)
        elif isinstance(message, EventMessage):
            if from_worker and self._subscriptions and not self.pushing():  # a pushing worker pushes live copies
                self._schedule.poll_now()
                self._wake.set()
            # Stored by a worker or under the escrow lease: live to the relay's sockets on every node now.
            if self._on_accepted is not None and accepted_event(frames, message.event.id):
                await self._on_accepted(message.event)

    def _await_eose(self, subscription_id: str) -> None:
        """A worker has the REQ: poll fast until its EOSE arrives (it comes only by poll from real workers)."""
        sub = self._subscriptions.get(subscription_id)
        if sub is not None and not sub.eose_sent and not self.pushing():
            self._schedule.await_eose(subscription_id, asyncio.get_running_loop().time())
            self._wake.set()

    async def _forward(self, raw: str, message: object) -> tuple[Sequence[Frame], bool]:
        """The frames answering ``raw``, and whether a worker gave them (not the fallback, not an error)."""
        tried: set[str] = set()
        last_error = "No peers available"
        down = self._bridge_down
        while not down:
            peer = self._rotation.pick(exclude=tried)
            if peer is None:
                break
            tried.add(peer)
            started = time.monotonic()
            try:
                frames = await self._post(peer, raw)
                if relay_not_loaded(frames):
                    # Up but not serving this relay yet (a worker reopening its relays after a restart):
                    # not a failure of the peer; this message goes elsewhere and the worker is asked again.
                    last_error = "the relay host is still starting"
                    continue
            except BridgeDown:
                down = True
                break
            except PeerError as exc:
                last_error = str(exc)
                if exc.status is not None and exc.status < 500 and exc.status != 404:
                    # The worker answered: its refusal (e.g. 403 for a protected read) is the answer; a
                    # refusal of the client's credentials is passed on so that the socket ends.
                    if any(read_frame(f).is_auth_rejection for f in exc.frames):
                        return exc.frames, False
                    return [notice_frame(f"Error: {exc}")], False
                await self._peer_failed(peer, str(exc))
                continue
            self.stats.forwarded += 1
            if self._on_forward:
                self._on_forward(self.relay_key)
            await self.health.peer_ok(peer, (time.monotonic() - started) * 1000)
            if peer != self._rotation.current:
                just_sent = message.subscription_id if isinstance(message, ReqMessage) else None
                await self._switch_to(peer, replay=True, skip=just_sent)
            return frames, True
        if down:
            return await outage_reply(message, raw, self.fallback), False
        if self.fallback is not None and isinstance(message, (EventMessage, ReqMessage, CloseMessage)):
            served = await self.fallback.handle(message, raw)
            if served is not None:
                self._on_fallback = True
                return served, False
        elif self.fallback is not None:
            # Served by the replica, a frame it cannot answer (COUNT, a verb for the worker) gets an answer and
            # the socket stays, as it would online where the worker answers it.
            # Sent as is: a COUNT's CLOSED names a subscription the socket never opened as a REQ.
            self._on_fallback = True
            await self.send(unsupported_frame(raw, "while the relay's workers are offline"))
            return [], False
        await self._no_peers(last_error)
        return [], False

    async def _post(self, peer: str, raw: str) -> list[WorkerFrame]:
        request = post_relay(
            self.transport,
            peer,
            relay_key=self.relay_key,
            message=raw,
            connection_key=self.connection_key,
            auth_token=self.auth_token,
            timeout=self.config.request_timeout,
        )
        return await self._inflight.run(peer, request)

    def peer_changed(self, peer: str, *, up: bool) -> None:
        """A worker peer of this relay became unreachable or reachable again, as this node's bridge saw it.

        Gone: requests in flight to it fail now and the poll loop fails over at once (another peer, or the
        replica). Back: a socket served by the replica returns to it, re-opening its subscriptions there.
        """
        if not self._rotation.mark(peer, up=up):
            return
        logger.debug(
            "worker peer changed",
            extra={"relay": self.relay_key, "peer": peer[:16], "up": up, "fallback": self._on_fallback},
        )
        if not up:
            self._inflight.abort(peer)
        if self._on_fallback if up else peer == self._rotation.current:
            self._wake.set()

    # --- peers ------------------------------------------------------------------------------------

    async def _peer_failed(self, peer: str, reason: str) -> None:
        self._rotation.failed.add(peer)
        await self.health.peer_failed(peer, reason)
        logger.info("peer failed for session", extra={"relay": self.relay_key, "peer": peer[:16], "reason": reason})
        await self._reload_peers()

    async def _reload_peers(self) -> None:
        """Take the relay's healthy peers from the registry; one it lists anew gets a new chance."""
        if self._refresh_peers is None:
            return
        with contextlib.suppress(Exception):
            self._rotation.refresh(await self._refresh_peers())

    async def _switch_to(self, peer: str, *, replay: bool, skip: str | None = None) -> bool:
        previous, self._rotation.current = self._rotation.current, peer
        self._poll_failures = 0
        if previous is not None and previous != peer:
            self._wake.set()  # the new peer may not push: the poll loop re-plans
            self.stats.failovers += 1
            logger.info(
                "session failed over",
                extra={"relay": self.relay_key, "from": (previous or "")[:16], "to": peer[:16]},
            )
        if replay:
            return await self._replay_subscriptions(peer, skip=skip)
        return True

    async def _replay_subscriptions(self, peer: str, *, skip: str | None = None) -> bool:
        """Open this connection's subscriptions on ``peer``, resuming after what was delivered; False when
        the peer could not take them (then the caller keeps whatever serves the socket now)."""
        for sub_id, sub in self._subscriptions.items():
            if sub_id == skip:
                continue
            try:
                frames = await self._post(peer, sub.resume_request())
            except PeerError as exc:
                logger.info("subscription replay failed", extra={"relay": self.relay_key, "reason": str(exc)})
                return False
            if relay_not_loaded(frames):
                return False
            await self._relay_frames(frames)
            self._await_eose(sub_id)
        return True

    async def _no_peers(self, reason: str) -> None:
        await self.send(notice_frame(f"Error: {reason}"))
        if not self._closed:
            self._closed = True
            await self._close(CLOSE_NO_PEERS, "No peers available")

    # --- polling: relays.session_poll ------------------------------------------------------------

    async def _auth_rejected(self, reason: str) -> None:
        """The worker refuses this client's credentials (and would say so on every poll): tell the client
        once and close with 4403, like a revoked token."""
        if self._closed:
            return
        logger.info("worker rejected the client's authentication", extra={"relay": self.relay_key})
        await self.send(
            notice_frame(f"restricted: the relay host rejected this connection's authentication ({reason})")
        )
        self._closed = True
        await self._close(CLOSE_AUTH_REJECTED, "Authentication rejected by the relay host")

    async def _failover_for_poll(self) -> bool:
        self._resume = False
        peer = self._rotation.pick(exclude=set())
        if peer is None and self._on_fallback:
            # Served by the replica: a worker may be back (a socket opened while all were away knows none).
            await self._reload_peers()
            peer = self._rotation.pick(exclude=set())
        if peer is None:
            if self.fallback is not None:
                self._on_fallback = True
                return False  # the fallback keeps serving; workers may come back
            await self._no_peers("relay hosts are unreachable")
            return False
        if not await self._switch_to(peer, replay=True) and self.fallback is not None:
            # The worker is back but cannot take the subscriptions yet: the replica keeps the socket for
            # now and the next poll tries again.
            self._on_fallback = True
            return False
        self._on_fallback = False
        return True
