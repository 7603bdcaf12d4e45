"""The relay WebSocket endpoint: ``/<npub…>/<name>?token=…`` or ``/<relayKey>``.

Thin on purpose: authentication happened in ``RelayAuthMiddleware``; the conversation with workers is
``GatewaySession``'s. This class wires the two to the socket, the channel layer (token revocation on
every node) and usage accounting.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from functools import cached_property, partial
from typing import Any

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings

from hypertuna.nostr import Event, notice_frame
from hypertuna.webserver import SEND_MANY
from relays import frame_limit, selectors, usage
from relays.bridge import BridgeDown, BridgePeerTransport, get_bridge
from relays.fallback import ReplicaFallback
from relays.health import tracker
from relays.middleware import GatewayAuth, Rejection
from relays.runtime import forwarded_messages, runtime
from relays.services import VerifiedToken, relay_group
from relays.session import GatewaySession
from relays.session_config import CLOSE_GATEWAY_ERROR, CLOSE_NO_PEERS, SessionConfig
from relays.tokens import refreshed_successor

CLOSE_TOKEN_REVOKED = 4403
CLOSE_TOKEN_EXPIRED = 4403
# A NOTICE is a line for a human. Workers may quote what a client sent (a 131 KB unknown verb, for one);
# the gateway passes at most this many characters of a NOTICE on, so a client cannot use the relay as a
# mirror that amplifies what it sends.
NOTICE_MAX_CHARS = 200


def bounded_notice(frame: str) -> str:
    """``frame`` unchanged, unless it is a NOTICE longer than ``NOTICE_MAX_CHARS``: then cut, ending in "…"."""
    if len(frame) <= NOTICE_MAX_CHARS or '"NOTICE"' not in frame[:12]:
        return frame
    try:
        parsed = json.loads(frame)
    except ValueError:
        return frame
    is_notice = isinstance(parsed, list) and len(parsed) == 2 and parsed[0] == "NOTICE"
    if is_notice and isinstance(parsed[1], str) and len(parsed[1]) > NOTICE_MAX_CHARS:
        return notice_frame(parsed[1][:NOTICE_MAX_CHARS] + "…")
    return frame


async def healthy_peers(relay_key: str) -> list[str]:
    """The relay's peers the registry holds healthy now (cached snapshot), less those whose connection this
    node's bridge saw close (a replicated relay is then answered at once instead of after a dial timeout)."""
    snapshot = await database_sync_to_async(selectors.live_relay)(relay_key)
    rt = runtime()
    return [p for p in snapshot.peers if not rt.peer_down(p)] if snapshot is not None else []


def bridge_transport() -> BridgePeerTransport:
    return BridgePeerTransport(get_bridge())


def carry_on(token: VerifiedToken) -> VerifiedToken | None:
    """The refresh a socket of the expired ``token`` answers to from now on (its live connection moves
    there), or None."""
    successor = refreshed_successor(token)
    if successor is not None:
        usage.connection_closed(token.token_id)
        usage.connection_opened(successor.token_id)
    return successor


Receive = Callable[[], Awaitable[Any]]


async def dispatch_each(sources: Sequence[Receive], dispatch: Callable[[Any], Awaitable[None]]) -> None:
    """Receive from every source (the socket, the channel layer) and dispatch each message in turn, until a
    dispatch or a source raises (``StopConsumer`` included), which is raised here once the others are stopped.

    What Channels' ``await_many_dispatch`` does, without its new task and ``asyncio.wait`` for every message
    (every client frame paid for them: 14 µs a message against 5 here, 20,000 messages through each in one
    run): one task per source receives in a loop, and a lock keeps the dispatches one at a time. As there, a
    source is asked for its next message only once its last one was dispatched, and the loop turns between
    two messages."""
    turn = asyncio.Lock()

    async def pump(receive: Receive) -> None:
        while True:
            message = await receive()
            async with turn:
                await dispatch(message)
            # A loop turn between messages, as Channels' loop gives: a burst that arrived in one read is not
            # dispatched in one go, ahead of the tasks its frames started (the session's) and other sockets.
            await asyncio.sleep(0)

    pumps = [asyncio.ensure_future(pump(source)) for source in sources]
    try:
        done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()
    finally:
        for task in pumps:
            task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)


class RelayConsumer(AsyncWebsocketConsumer):
    session: GatewaySession | None = None
    fallback: ReplicaFallback | None = None
    group: str | None = None
    _released = False
    _token_watch: asyncio.Task[None] | None = None
    # The way to reach workers; tests substitute an in-memory transport.
    transport_factory = staticmethod(bridge_transport)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        # Channels' ``AsyncConsumer.__call__`` with ``dispatch_each`` in place of ``await_many_dispatch``.
        self.scope = scope
        self.base_send = send
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        try:
            sources = [receive]
            if self.channel_layer is not None:
                self.channel_name = await self.channel_layer.new_channel()
                self.channel_receive = partial(self.channel_layer.receive, self.channel_name)
                sources.append(self.channel_receive)
            await dispatch_each(sources, self.dispatch)
        except StopConsumer:
            pass
        # A failure of the channel layer (Redis gone) ends the consumer without ``disconnect``: release the
        # session here; ``hypertuna.outage.WebSocketOutageGuard`` tells the client (NOTICE, close 1013).
        except Exception:
            with contextlib.suppress(Exception):
                await self.disconnect(CLOSE_GATEWAY_ERROR)
            raise

    async def connect(self) -> None:
        auth: GatewayAuth = self.scope["gateway"]
        rejection = auth.rejection
        if rejection is None and auth.relay is not None and not auth.relay.peers and not auth.replica:
            rejection = Rejection(CLOSE_NO_PEERS, "No peers available", "Error: No peers available")
        if rejection is None and auth.relay is not None:
            # Join the revocation group before the token's last check: a revocation committed after
            # the middleware's check is then either seen here or delivered to this socket, never lost.
            self.group = relay_group(auth.relay.id)
            await self.channel_layer.group_add(self.group, self.channel_name)
            runtime().joined(self.channel_layer, self.group, self.channel_name)
            if auth.token and not await database_sync_to_async(selectors.token_active)(auth.token.token_id):
                rejection = Rejection(
                    CLOSE_TOKEN_REVOKED, "Token revoked", "restricted: access token rejected (token-revoked)"
                )
        if rejection is not None or auth.relay is None:
            await self.accept()
            if rejection is not None:
                await self.send(notice_frame(rejection.notice))
                await self.close(code=rejection.code)
            return
        # Registered (live count, node registry, the relay's live fan-out) before the handshake completes, so
        # that anything that happens once the client sees the socket open also sees this session.
        await runtime().fanout.attach(auth.relay.relay_key)
        self.session = self._open_session(auth)
        await self.accept()
        self.session.start()
        if auth.token is not None:
            self._token_watch = asyncio.create_task(self._watch_token())

    def _open_session(self, auth: GatewayAuth) -> GatewaySession:
        assert auth.relay is not None
        rt = runtime()
        rt.ensure_started()
        self.fallback = rt.fallback_for(auth.relay.relay_key) if auth.replica else None
        session = GatewaySession(
            relay_key=auth.relay.relay_key,
            # With a replica to answer from, a worker this node's bridge saw go away is not tried first.
            peers=[p for p in auth.relay.peers if not (auth.replica and rt.peer_down(p))],
            transport=self.transport_factory(),
            send=self._send_frame,
            close=self._close_from_session,
            auth_token=auth.token.relay_auth_token if auth.token else None,
            health=tracker,
            config=SessionConfig(
                request_timeout=settings.HYPERTUNA_PEER_REQUEST_TIMEOUT,
                poll_interval=settings.HYPERTUNA_POLL_INTERVAL_MS / 1000,
                max_queued_frames=settings.HYPERTUNA_MAX_QUEUED_FRAMES,
                max_subscriptions=settings.HYPERTUNA_MAX_SUBSCRIPTIONS,
            ),
            on_forward=lambda relay: forwarded_messages.labels(relay=relay).inc(),
            on_accepted=self._publish_accepted,
            send_many=self._send_frames,
            fallback=self.fallback,
            refresh_peers=partial(healthy_peers, auth.relay.relay_key),
        )
        if auth.token:
            usage.connection_opened(auth.token.token_id)
        rt.add(session, connection=self._connection)
        return session

    def _connection(self) -> tuple[int | None, str]:
        """(token row id, client address) of this socket, as authenticated (the token follows a refresh)."""
        auth: GatewayAuth = self.scope["gateway"]
        return (auth.token.token_id if auth.token else None, str(auth.client_ip or ""))

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.session is None or self.session.closed or not await self._token_in_force():
            return
        if text_data is None:
            await self.send(notice_frame("invalid: binary frames are not supported; send JSON text"))
            return
        if len(text_data) > settings.HYPERTUNA_MAX_FRAME_BYTES:
            await self.send(
                notice_frame(f"invalid: message too large (max {settings.HYPERTUNA_MAX_FRAME_BYTES} bytes)")
            )
            return
        auth: GatewayAuth = self.scope["gateway"]
        token = auth.token
        limit = settings.HYPERTUNA_RATELIMIT_TOKEN_PER_MINUTE
        if limit > 0:
            # One token's budget holds across its sockets and gateway nodes; an open relay's clients are limited
            # per address instead. Counted in memory, shared through the cache in batches (relays/frame_limit).
            identity = f"token:{token.token_id}" if token else f"ip:{auth.client_ip}"
            limiter = frame_limit.limiter
            if not limiter.known(identity):  # once per identity and minute on this node
                await sync_to_async(limiter.prime, thread_sensitive=False)(identity)
            decision = limiter.hit(identity, limit)
            if not decision.allowed:
                await self.send(notice_frame(f"rate-limited: too many messages; retry in {decision.retry_after} s"))
                return
        if token:
            usage.record(token.token_id, frames=1, bytes_in=len(text_data))
        self.session.enqueue(text_data)

    async def dispatch(self, message: dict[str, Any]) -> None:
        # A client frame skips Channels' per-message ``close_old_connections`` (a hop to Django's one sync
        # thread for every frame of every socket): nothing here touches the ORM on the event loop, and every
        # database call goes through ``database_sync_to_async``, which closes old connections itself.
        if message["type"] == "websocket.receive":
            await self.websocket_receive(message)
            return
        await super().dispatch(message)

    async def disconnect(self, code: int) -> None:
        if self._released:
            return
        self._released = True
        if self._token_watch is not None and self._token_watch is not asyncio.current_task():
            self._token_watch.cancel()
            await asyncio.wait({self._token_watch})
        if self.session is not None:
            await self.session.stop()
            runtime().remove(self.session)
            token = self.scope["gateway"].token
            if token:
                usage.connection_closed(token.token_id)
        if self.group:
            runtime().left(self.channel_name)
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def token_revoked(self, event: dict[str, Any]) -> None:
        """Channel-layer message from ``services.revoke_tokens`` (any gateway node)."""
        # Under the token lock: a revocation of the refresh this socket is moving to is judged after the move.
        async with self._token_lock:
            token = self.scope["gateway"].token
            if token is None or (self.session is not None and self.session.closed):
                return
            if token.token_id not in event["token_ids"] and token.sequence > event["through_sequence"]:
                return
            reason = {"reason": event["reason"], "sequence": event["through_sequence"]}
            await self._end_for_token(json.dumps(["TOKEN", "REVOKED", reason]), CLOSE_TOKEN_REVOKED)

    @cached_property
    def _token_lock(self) -> asyncio.Lock:
        return asyncio.Lock()

    async def _watch_token(self) -> None:
        """One timer per socket: sleeps until the token expires (server clock), then again until the refresh
        that carried the socket on expires, and so on."""
        while await self._token_in_force():
            token = self.scope["gateway"].token
            await asyncio.sleep(max(0.0, token.expires_at / 1000 - time.time()))

    async def _token_in_force(self) -> bool:
        """Whether the socket may still be served. Once its token has expired the socket carries on under the
        newest refresh of that token if one outlives it; otherwise it gets ``["TOKEN","EXPIRED",…]`` and is
        closed with 4403."""
        token = self.scope["gateway"].token
        if token is None or token.expires_at > time.time() * 1000:
            return True
        async with self._token_lock:
            token = self.scope["gateway"].token
            if self.session is None or self.session.closed:
                return False
            if token.expires_at > time.time() * 1000:
                return True
            successor = await database_sync_to_async(carry_on)(token)
            if successor is not None:
                self.scope["gateway"] = replace(self.scope["gateway"], token=successor)
                return True
            detail = {"reason": "expired", "expiresAt": token.expires_at}
            await self._end_for_token(json.dumps(["TOKEN", "EXPIRED", detail]), CLOSE_TOKEN_EXPIRED)
            return False

    async def _end_for_token(self, frame: str, code: int) -> None:
        # The session stops first, so no relay frame follows the TOKEN frame.
        if self.session is not None:
            await self.session.stop()
        await self.send(frame)
        await self.close(code=code)

    async def _publish_accepted(self, event: Event) -> None:
        if self.session is not None:
            await runtime().fanout.publish(self.session.relay_key, event)

    async def _send_frame(self, frame: str) -> None:
        await self._send_frames([frame])

    async def _send_frames(self, frames: list[str]) -> None:
        """Frames to the client (several: the events of one answer), NOTICEs bounded, counted in one usage
        record, straight to the socket: in one ASGI send where the web server offers ``SEND_MANY``
        (``hypertuna/webserver.py``), else one send each."""
        frames = [bounded_notice(frame) for frame in frames]
        token = self.scope["gateway"].token
        if token:
            usage.record(token.token_id, bytes_out=sum(map(len, frames)))
        if len(frames) > 1 and SEND_MANY in (self.scope.get("extensions") or ()):
            await self.base_send({"type": SEND_MANY, "texts": frames})
            return
        send = self.base_send
        for frame in frames:
            await send({"type": "websocket.send", "text": frame})

    async def _close_from_session(self, code: int, reason: str) -> None:
        await self.close(code=code)


__all__ = ["CLOSE_GATEWAY_ERROR", "BridgeDown", "RelayConsumer"]
