"""Per-process runtime of the WebSocket gateway: the session registry, worker push delivery, the periodic
usage flush, and the refresh of this node's channel-group memberships. Started lazily by the first
connection in each event loop.

Bridge restarts: the bridge client reconnects on its own (``hypertuna.bridge``). When it loses the bridge,
every session here is told (a NOTICE; the socket stays open, see ``relays.bridge_outage``). When it is back,
the restarted bridge knows no worker yet: the runtime dials the workers its sessions use, then lets each
session re-open its subscriptions there.

Group memberships: a membership whose ``group_discard`` was lost (a consumer cancelled mid-disconnect in a
mass disconnect) must not stay in the relay's group forever. The channel layer drops memberships older than
``HYPERTUNA_CHANNEL_GROUP_EXPIRY``; the runtime re-adds this node's open sockets four times per expiry, so
only the lost ones lapse.

Push-capable workers: a worker whose handshake (on this node's bridge) advertises ``wsframe-push`` delivers
every frame of a connection by push, so its sessions do not poll it at the idle rhythm (``relays.session_poll``).
The runtime learns it from ``peer.connected`` and, for a worker connected before, from one ``peer.connect`` call.

Dashboard: every ``relays.stats.PUBLISH_INTERVAL`` seconds the runtime publishes this node's open sessions and
its cumulative frame and fallback counters to the shared cache (one write per node, see ``relays.stats``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from prometheus_client import Counter, Gauge

from hypertuna.bridge import BridgeClient
from relays import frame_limit, stats, usage
from relays.bridge import BENIGN_CLOSES, REDIAL_TIMEOUT_MS, get_bridge
from relays.fallback import LeaseWriter, ReplicaFallback, fallback_reads, fallback_writes
from relays.fanout import NodeFanout
from relays.frames_filter import read_decoded
from relays.session import GatewaySession

logger = logging.getLogger(__name__)

USAGE_FLUSH_SECONDS = 30.0
# How often the bridge's state is checked against what the sessions were told (one look, no I/O).
BRIDGE_CHECK_SECONDS = 1.0
BRIDGE_TOPICS = ("peer.wsframe", "peer.connected", "peer.disconnected")

active_sessions = Gauge("gateway_active_sessions", "Open client WebSocket sessions on this node")
forwarded_messages = Counter("gateway_forwarded_messages_total", "Client frames forwarded to workers", ["relay"])
pushed_frames = Counter("gateway_pushed_frames_total", "Frames workers pushed to sessions (ws-frame)", ["result"])


class Runtime:
    def __init__(self) -> None:
        self.sessions: dict[str, GatewaySession] = {}
        # relay key -> this node's open sessions of it (live fan-out, relays.fanout).
        self.by_relay: dict[str, dict[str, GatewaySession]] = {}
        self.fanout = NodeFanout(
            lambda relay_key: list(self.by_relay.get(relay_key, {}).values()),
            get_channel_layer,
            presence_s=settings.HYPERTUNA_CHANNEL_GROUP_EXPIRY,
        )
        self.connections: dict[str, Callable[[], tuple[int | None, str]]] = {}
        # Workers whose connection this node's bridge reported closed (monotonic time of the report), until it
        # reports them connected again or the mark ages out: the registry may still list them as healthy for a
        # while (its snapshot is cached, and without Redis each process caches its own).
        self.down_peers: dict[str, float] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._writer: LeaseWriter | None = None
        # channel name -> (channel layer, group, the consumer's task) of each open socket of this node.
        self.memberships: dict[str, tuple[Any, str, asyncio.Task[Any] | None]] = {}
        self.bridge_up = True
        self._restore: asyncio.Task[None] | None = None
        # Worker peer -> whether its handshake advertised wsframe-push (absent: not known yet).
        self.push_peers: dict[str, bool] = {}
        self._learning: set[str] = set()
        self.node = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        # Sessions opened or closed so far, and what the last published stats snapshot was made of.
        self._sessions_changed = 0
        self._published: tuple[Any, ...] | None = None
        self._published_at = 0.0

    def fallback_for(self, relay_key: str) -> ReplicaFallback:
        """A fallback for one socket of ``relay_key`` (the node's one lease writer)."""
        if self._writer is None:
            self._writer = LeaseWriter(get_bridge())
        return ReplicaFallback(relay_key=relay_key, writer=self._writer)

    def ensure_started(self) -> None:
        if self._tasks and not all(t.done() for t in self._tasks):
            return
        self._tasks = [
            asyncio.create_task(self._deliver_pushes(), name="gateway-push-delivery"),
            asyncio.create_task(_every(USAGE_FLUSH_SECONDS, sync_to_async(usage.flush)), name="gateway-usage-flush"),
            asyncio.create_task(
                _every(frame_limit.SYNC_SECONDS, sync_to_async(frame_limit.limiter.sync, thread_sensitive=False)),
                name="gateway-frame-limit-sync",
            ),
            asyncio.create_task(self._refresh_groups(), name="gateway-group-refresh"),
            asyncio.create_task(self._publish_stats(), name="gateway-stats-publish"),
            asyncio.create_task(_every(BRIDGE_CHECK_SECONDS, self._check_bridge), name="gateway-bridge-check"),
        ]

    def add(self, session: GatewaySession, connection: Callable[[], tuple[int | None, str]] | None = None) -> None:
        """Register an open session; ``connection()`` says which token row (it changes when a refreshed token
        carries the socket on) and which client address it serves, for the operators' "connected now"."""
        self.sessions[session.connection_key] = session
        self._sessions_changed += 1
        self.by_relay.setdefault(session.relay_key, {})[session.connection_key] = session
        session.pushes = self.pushes
        if connection is not None:
            self.connections[session.connection_key] = connection
        active_sessions.set(len(self.sessions))

    def remove(self, session: GatewaySession) -> None:
        if self.sessions.pop(session.connection_key, None) is not None:
            self._sessions_changed += 1
        relay_sessions = self.by_relay.get(session.relay_key)
        if relay_sessions is not None:
            relay_sessions.pop(session.connection_key, None)
            if not relay_sessions:
                del self.by_relay[session.relay_key]
        self.connections.pop(session.connection_key, None)
        active_sessions.set(len(self.sessions))

    def joined(self, layer: Any, group: str, channel: str) -> None:
        """A socket of this node joined ``group`` (called from its consumer's task): its membership is kept
        fresh while that task runs, so a consumer cancelled before it could leave is no longer refreshed."""
        self.memberships[channel] = (layer, group, asyncio.current_task())

    def left(self, channel: str) -> None:
        self.memberships.pop(channel, None)

    async def refresh_groups(self) -> int:
        """Re-add every live membership of this node, its sockets' and its own node-group ones (one round), and
        leave the node groups of relays it holds no socket of any more; returns how many were refreshed."""
        refreshed = await self.fanout.refresh()
        for channel, (layer, group, task) in list(self.memberships.items()):
            if task is not None and task.done():
                del self.memberships[channel]  # the consumer is gone without leaving: let the membership lapse
                continue
            await layer.group_add(group, channel)
            refreshed += 1
        return refreshed

    async def _refresh_groups(self) -> None:
        while True:
            await asyncio.sleep(settings.HYPERTUNA_CHANNEL_GROUP_EXPIRY / 4)
            try:
                await self.refresh_groups()
            except Exception as exc:  # the layer is down: the next round tries again
                logger.warning("group membership refresh failed", extra={"error": str(exc)})

    async def _deliver_pushes(self) -> None:
        """Route what this node's bridge reports to this node's sessions: frames that workers push (message
        type 2) to the session holding that connection key, a worker connection closing or opening to
        every session of its relays (node-local on purpose: it is this node's bridge the sessions use), and
        the bridge itself going away or coming back to every session."""
        client = get_bridge()
        while True:
            try:
                if not client.connected:
                    await client.connect()
                async with client.events(*BRIDGE_TOPICS) as events:
                    await self._check_bridge()  # connected again after a failed (re)connect of this loop
                    async for event in events:
                        if event.name == "peer.wsframe":
                            self.deliver(event.data)
                        elif event.name == "bridge.disconnected":
                            await self.bridge_lost()
                        elif event.name == "bridge.reconnected":
                            self._bridge_back(client)
                        else:
                            self.peer_changed(event.name, event.data)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("push delivery interrupted", extra={"error": str(exc)})
                if not client.connected:
                    await self.bridge_lost()
                await asyncio.sleep(1.0)

    async def bridge_lost(self) -> None:
        if self._restore is not None:
            self._restore.cancel()
        if self.bridge_up:
            logger.warning("lost the bridge; client sockets stay open while it reconnects")
        self.bridge_up = False
        await self._tell_sessions(up=False)

    async def _check_bridge(self) -> None:
        """By state as well as by event: a bridge connected again resumes the sessions even if the
        ``bridge.reconnected`` that said so never reached :meth:`_deliver_pushes`."""
        client = get_bridge()
        if not self.bridge_up and client.connected:
            self._bridge_back(client)

    def _bridge_back(self, client: BridgeClient) -> None:
        if self._restore is None or self._restore.done():
            self._restore = asyncio.create_task(self._redial_then_resume(client), name="gateway-bridge-restore")
            self._restore.add_done_callback(_log_restore_failure)

    async def _redial_then_resume(self, client: BridgeClient) -> None:
        """A restarted bridge has an empty worker pool: dial the workers this node's sessions use (at once,
        each within ``REDIAL_TIMEOUT_MS``), then let the sessions re-open their subscriptions there (a worker
        still unreachable then is handled as any unreachable worker: another peer, the replica, or 1013)."""
        peers = {s.current_peer for s in self.sessions.values()} - {None}
        results = await asyncio.gather(
            *(client.peer_connect(peer, timeout_ms=REDIAL_TIMEOUT_MS) for peer in peers if peer), return_exceptions=True
        )
        failed = sum(isinstance(r, BaseException) for r in results)
        logger.info("bridge is back; sessions resume", extra={"workers": len(peers), "unreachable": failed})
        self.bridge_up = True  # before the sessions resume: what they start asks whether the bridge is up
        try:
            await self._tell_sessions(up=True)
        except BaseException:
            self.bridge_up = False  # not all were told: the next check tries again
            raise

    async def _tell_sessions(self, *, up: bool) -> None:
        sessions = list(self.sessions.values())
        await asyncio.gather(*(s.bridge_changed(up=up) for s in sessions), return_exceptions=True)

    def peer_changed(self, name: str, data: dict[str, Any]) -> None:
        peer = str(data.get("peerKey") or "")
        if not peer or (name == "peer.disconnected" and data.get("reason") in BENIGN_CLOSES):
            return
        if name == "peer.connected":
            self.down_peers.pop(peer, None)
            self.push_peers[peer] = _advertises_push(data.get("handshake"))
        else:
            self.down_peers[peer] = time.monotonic()
            self.push_peers.pop(peer, None)
        for session in list(self.sessions.values()):
            session.peer_changed(peer, up=name == "peer.connected")

    def peer_down(self, peer: str) -> bool:
        """Whether this node's bridge saw ``peer``'s connection close within ``HYPERTUNA_PEER_DOWN_MARK_SECONDS``
        and not open again since (after that, the relay's snapshot says whether it is tried again)."""
        at = self.down_peers.get(peer)
        if at is None:
            return False
        if time.monotonic() - at > settings.HYPERTUNA_PEER_DOWN_MARK_SECONDS:
            del self.down_peers[peer]
            return False
        return True

    def deliver(self, data: dict[str, Any]) -> None:
        frame = data.get("frame") if isinstance(data, dict) else None
        if not isinstance(frame, dict) or frame.get("type") != "nostr-frames":
            return
        session = self.sessions.get(str(frame.get("connectionKey")))
        frames = frame.get("frames")
        if session is None or not isinstance(frames, list):
            pushed_frames.labels(result="no-session").inc()
            return
        read = [read_decoded(f) for f in frames if isinstance(f, list)]  # the session does not parse them again
        pushed_frames.labels(result="delivered").inc(len(read))
        asyncio.get_running_loop().create_task(session.deliver(read, peer=str(data.get("peerKey") or "") or None))

    def pushes(self, peer: str) -> bool:
        """Whether ``peer`` advertised wsframe-push to this node's bridge; asked once per process in the
        background when not known yet (a worker connected before this runtime listened), False meanwhile."""
        known = self.push_peers.get(peer)
        if known is None and peer not in self._learning and self.bridge_up:
            self._learning.add(peer)
            asyncio.get_running_loop().create_task(self._learn_push(peer), name="gateway-learn-push")
        return bool(known)

    async def _learn_push(self, peer: str) -> None:
        try:
            entry = await get_bridge().peer_connect(peer, timeout_ms=REDIAL_TIMEOUT_MS)
            self.push_peers.setdefault(peer, _advertises_push(entry.get("handshake")))
        except Exception as exc:  # unreachable now: its peer.connected event tells later
            logger.debug("worker capabilities unknown", extra={"peer": peer[:16], "error": str(exc)})

    def live_sessions(self) -> list[stats.LiveSession]:
        """This node's open sessions, as the dashboard shows them (no token material: the token's row id)."""
        now_wall, now_mono = time.time(), time.monotonic()
        rows: list[stats.LiveSession] = []
        for session in list(self.sessions.values()):
            connection = self.connections.get(session.connection_key)
            token_id, address = connection() if connection is not None else (None, "")
            rows.append(
                {
                    "relay": session.relay_key,
                    "token": token_id,
                    "address": address,
                    "since": round(now_wall - (now_mono - session.stats.started), 3),
                    "framesIn": session.stats.frames_in,
                    "framesOut": session.stats.frames_out,
                    "node": self.node,
                }
            )
        return rows

    def publish_stats(self) -> None:
        """Publish this node's snapshot; when nothing in it changed since the last one (idle sockets), only
        keep the published one alive, so that idle sockets cost no per-socket work every interval."""
        totals = {
            "frames": _counter_total(forwarded_messages),
            "fallback_reads": _counter_total(fallback_reads),
            "fallback_writes": _counter_total(fallback_writes),
        }
        signature = (
            self._sessions_changed,
            sum(s.stats.frames_in + s.stats.frames_out for s in list(self.sessions.values())),
            tuple(totals.values()),
        )
        fresh = time.monotonic() - self._published_at < stats.SNAPSHOT_TTL / 2
        if signature == self._published and fresh and stats.refresh_node(self.node):
            return
        stats.publish_node(self.node, sessions=self.live_sessions(), totals=totals)
        self._published, self._published_at = signature, time.monotonic()

    async def _publish_stats(self) -> None:
        while True:
            try:
                await sync_to_async(self.publish_stats, thread_sensitive=False)()
            except Exception as exc:  # the cache is down: the dashboard shows this node again when it is back
                logger.debug("stats publish failed", extra={"error": str(exc)})
            await asyncio.sleep(stats.PUBLISH_INTERVAL)


async def _every(seconds: float, work: Callable[[], Awaitable[object]]) -> None:
    """Run ``work`` every ``seconds``; a failed turn (the cache or the database away) waits for the next."""
    while True:
        await asyncio.sleep(seconds)
        with contextlib.suppress(Exception):
            await work()


def _advertises_push(handshake: Any) -> bool:
    caps = handshake.get("capabilities") if isinstance(handshake, dict) else None
    return isinstance(caps, list) and "wsframe-push" in caps


def _counter_total(counter: Counter) -> int:
    """A labelled counter's value summed over its labels (this process's, since it started)."""
    return int(sum(s.value for metric in counter.collect() for s in metric.samples if s.name.endswith("_total")))


_runtimes: dict[int, Runtime] = {}


def runtime() -> Runtime:
    loop = asyncio.get_running_loop()
    rt = _runtimes.get(id(loop))
    if rt is None:
        rt = _runtimes[id(loop)] = Runtime()
    return rt


def _log_restore_failure(task: asyncio.Task[None]) -> None:
    """A failed resume is said at once (asyncio would say it only when the task is collected); the sessions
    stay told the bridge is away, and the next :meth:`Runtime._check_bridge` tries again."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        logger.warning("resuming sessions after the bridge came back failed; retrying", extra={"error": repr(exc)})
