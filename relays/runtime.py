"""Per-process runtime of the WebSocket gateway: the session registry, worker push delivery, and the
periodic usage flush. Started lazily by the first connection in each event loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from asgiref.sync import sync_to_async
from prometheus_client import Counter, Gauge

from relays import usage
from relays.bridge import BENIGN_CLOSES, get_bridge
from relays.fallback import LeaseWriter, ReplicaFallback
from relays.session import GatewaySession

logger = logging.getLogger(__name__)

USAGE_FLUSH_SECONDS = 30.0
BRIDGE_TOPICS = ("peer.wsframe", "peer.connected", "peer.disconnected")

active_sessions = Gauge("gateway_active_sessions", "Open client WebSocket sessions on this node")
forwarded_messages = Counter("gateway_forwarded_messages_total", "Client frames forwarded to workers", ["relay"])
pushed_frames = Counter("gateway_pushed_frames_total", "Frames workers pushed to sessions (ws-frame)", ["result"])


class Runtime:
    def __init__(self) -> None:
        self.sessions: dict[str, GatewaySession] = {}
        self.fallbacks: dict[str, set[ReplicaFallback]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._writer: LeaseWriter | None = None

    def fallback_for(self, relay_key: str) -> ReplicaFallback:
        """A fallback for one socket of ``relay_key``, linked to this node's other sockets of the relay."""
        if self._writer is None:
            self._writer = LeaseWriter(get_bridge())
        fallback = ReplicaFallback(
            relay_key=relay_key,
            writer=self._writer,
            peers_of_relay=lambda: list(self.fallbacks.get(relay_key, ())),
        )
        self.fallbacks.setdefault(relay_key, set()).add(fallback)
        return fallback

    def drop_fallback(self, fallback: ReplicaFallback) -> None:
        group = self.fallbacks.get(fallback.relay_key)
        if group is not None:
            group.discard(fallback)
            if not group:
                del self.fallbacks[fallback.relay_key]

    def ensure_started(self) -> None:
        if self._tasks and not all(t.done() for t in self._tasks):
            return
        self._tasks = [
            asyncio.create_task(self._deliver_pushes(), name="gateway-push-delivery"),
            asyncio.create_task(self._flush_usage(), name="gateway-usage-flush"),
        ]

    def add(self, session: GatewaySession) -> None:
        self.sessions[session.connection_key] = session
        active_sessions.set(len(self.sessions))

    def remove(self, session: GatewaySession) -> None:
        self.sessions.pop(session.connection_key, None)
        active_sessions.set(len(self.sessions))

    async def _deliver_pushes(self) -> None:
        """Route what this node's bridge reports to this node's sessions: frames that workers push (message
        type 2) to the session holding that connection key, and a worker connection closing or opening to
        every session of its relays (node-local on purpose: it is this node's bridge the sessions use)."""
        client = get_bridge()
        while True:
            try:
                if not client.connected:
                    await client.connect()
                async with client.events(*BRIDGE_TOPICS) as events:
                    async for event in events:
                        if event.name == "peer.wsframe":
                            self.deliver(event.data)
                        else:
                            self.peer_changed(event.name, event.data)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("push delivery interrupted", extra={"error": str(exc)})
                await asyncio.sleep(1.0)

    def peer_changed(self, name: str, data: dict[str, Any]) -> None:
        peer = str(data.get("peerKey") or "")
        if not peer or (name == "peer.disconnected" and data.get("reason") in BENIGN_CLOSES):
            return
        for session in list(self.sessions.values()):
            session.peer_changed(peer, up=name == "peer.connected")

    def deliver(self, data: dict[str, Any]) -> None:
        frame = data.get("frame") if isinstance(data, dict) else None
        if not isinstance(frame, dict) or frame.get("type") != "nostr-frames":
            return
        session = self.sessions.get(str(frame.get("connectionKey")))
        frames = frame.get("frames")
        if session is None or not isinstance(frames, list):
            pushed_frames.labels(result="no-session").inc()
            return
        texts = [json.dumps(f, ensure_ascii=False, separators=(",", ":")) for f in frames if isinstance(f, list)]
        pushed_frames.labels(result="delivered").inc(len(texts))
        asyncio.get_running_loop().create_task(session.deliver(texts))

    async def _flush_usage(self) -> None:
        while True:
            await asyncio.sleep(USAGE_FLUSH_SECONDS)
            with contextlib.suppress(Exception):
                await sync_to_async(usage.flush)()


_runtimes: dict[int, Runtime] = {}


def runtime() -> Runtime:
    loop = asyncio.get_running_loop()
    rt = _runtimes.get(id(loop))
    if rt is None:
        rt = _runtimes[id(loop)] = Runtime()
    return rt
