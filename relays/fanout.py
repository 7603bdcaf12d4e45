"""Gateway-side live fan-out of accepted events, on every gateway node.

A worker that never pushes queues a live event for each of its connections until the gateway polls: up to
one idle poll interval late. The gateway knows sooner: when a worker answers ``OK true`` to an EVENT a
client sent through it, the session hands that event to this node's :class:`NodeFanout`, which

- delivers it in-process, at once, to every socket of the relay on this node (the sending socket included,
  as a relay would): each delivers it to its own subscriptions that match (``GatewaySession.offer_live``);
- sends it once to the other gateway nodes holding sockets of the relay: one channel-layer message per
  batch of events, to the relay's *node group*, whose members are one channel per node (not one per
  socket). Events accepted while a message to the group is on its way go out together in the next one, so
  a node never has more than one message per relay in flight and never one per event at high rates.

The worker's copy arriving later by poll or push is dropped by id (:class:`relays.frames_filter.DeliveredIds`).
The channel layer stays off the per-frame path (``ARCHITECTURE.md``): nothing here runs per frame, and
nothing crosses Redis when the relay's sockets are all on one node except that one message per batch.

Membership: a node joins a relay's node group when its first socket of the relay opens (before the socket is
accepted, so nothing published afterwards misses it) and leaves at the first membership refresh that finds
no socket of the relay left (``refresh``, called by the runtime four times per group expiry, which also
keeps the memberships from lapsing). A node that dies without leaving lapses with the group expiry.

Presence: a node sends the relay's events to the other nodes only while it knows of one. Joining, a node
says ``hello`` to the group and every member answers with its own; each refresh says it again, and a batch
from another node counts too. A node not heard of for a group expiry is taken to be gone. So a single node
(the common deployment) sends nothing through the channel layer for its live events. Until the answers to
its hello arrive (one round trip), a joining node's live events reach the other nodes' sockets through
their workers only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from prometheus_client import Counter

from hypertuna.nostr import Event, InvalidEvent

logger = logging.getLogger(__name__)

MESSAGE_TYPE = "relay.events"  # handled by NodeFanout's receive loop
HELLO_TYPE = "relay.nodes.hello"
# At most this many events in one message to the other nodes; more go in the following ones.
BATCH_MAX = 256

fanout_published = Counter("gateway_fanout_events_total", "Accepted events published to the relay's sockets")
fanout_messages = Counter("gateway_fanout_messages_total", "Fan-out messages to other gateway nodes", ["direction"])


class LiveSession(Protocol):
    @property
    def closed(self) -> bool: ...

    async def offer_live(self, event: Event) -> None: ...


def node_group(relay_key: str) -> str:
    """The channel-layer group of the nodes holding sockets of ``relay_key``: named after a digest, since a relay
    key may hold characters a group name cannot (``npub…:name``)."""
    return f"relay-nodes.{hashlib.sha256(relay_key.encode()).hexdigest()[:40]}"


def message(relay_key: str, origin: str, events: list[Event]) -> dict[str, Any]:
    """The channel-layer message carrying accepted events of one relay to the other nodes."""
    return {"type": MESSAGE_TYPE, "relay": relay_key, "origin": origin, "events": [e.to_dict() for e in events]}


def events_of(payload: dict[str, Any]) -> list[Event]:
    """The events of a fan-out message (from this gateway's channel layer: parsed, not re-verified); entries that
    do not parse are skipped."""
    out = []
    for raw in payload.get("events") or ():
        with contextlib.suppress(InvalidEvent, ValueError, TypeError):
            out.append(Event.from_json(raw))
    return out


async def offer(sessions: Iterable[LiveSession], event: Event) -> None:
    """Offer one live event to sessions; one failing socket does not keep it from the others."""
    for session in sessions:
        if session.closed:
            continue
        try:
            await session.offer_live(event)
        except Exception as exc:  # a socket closing under us
            logger.debug("live delivery to a socket failed", extra={"error": str(exc)})


class NodeFanout:
    """One per process (owned by ``relays.runtime.Runtime``). ``sessions_of(relay_key)`` lists this node's open
    sessions of a relay; ``layer_factory()`` gives the channel layer (None: a single node, nothing leaves the
    process)."""

    def __init__(
        self,
        sessions_of: Callable[[str], list[LiveSession]],
        layer_factory: Callable[[], Any],
        *,
        presence_s: float = 300.0,
    ) -> None:
        self._sessions_of = sessions_of
        # relay key -> when another node with sockets of it was last heard of (loop time).
        self._others: dict[str, float] = {}
        self._presence_s = presence_s
        self._layer_factory = layer_factory
        self._layer: Any = None
        self.channel: str | None = None
        self._joined: set[str] = set()
        self._lock = asyncio.Lock()
        self._receiver: asyncio.Task[None] | None = None
        self._outbox: dict[str, list[Event]] = {}
        self._sending: dict[str, asyncio.Task[None]] = {}

    # --- membership -------------------------------------------------------------------------------------

    async def attach(self, relay_key: str) -> None:
        """A socket of ``relay_key`` is opening on this node: make sure the node is in the relay's node group."""
        if relay_key in self._joined:
            return
        async with self._lock:
            if relay_key in self._joined:
                return
            layer = await self._ensure_channel()
            if layer is not None and self.channel is not None:
                await layer.group_add(node_group(relay_key), self.channel)
                await self._hello(relay_key, answer=True)
            self._joined.add(relay_key)

    async def refresh(self) -> int:
        """Re-add the node groups of relays with sockets here, leave the others, forget nodes not heard of within
        the presence window; returns how many groups were kept."""
        now = asyncio.get_running_loop().time()
        self._others = {key: heard for key, heard in self._others.items() if now - heard < self._presence_s}
        async with self._lock:
            layer, kept = self._layer, 0
            for relay_key in list(self._joined):
                if self._sessions_of(relay_key):
                    if layer is not None and self.channel is not None:
                        await layer.group_add(node_group(relay_key), self.channel)
                        await self._hello(relay_key, answer=False)
                    kept += 1
                    continue
                self._joined.discard(relay_key)
                if layer is not None and self.channel is not None:
                    await layer.group_discard(node_group(relay_key), self.channel)
            return kept

    async def _hello(self, relay_key: str, *, answer: bool) -> None:
        """Tell the relay's other nodes this one holds sockets of it (``answer``: ask them to say so too)."""
        hello = {"type": HELLO_TYPE, "relay": relay_key, "origin": self.channel, "answer": answer}
        try:
            await self._layer.group_send(node_group(relay_key), hello)
        except Exception as exc:  # the channel layer (Redis) may be briefly unavailable: the next refresh says it
            logger.warning("live fan-out hello failed", extra={"error": str(exc)})

    def others_present(self, relay_key: str) -> bool:
        """Whether another node with sockets of the relay was heard of within the presence window."""
        heard = self._others.get(relay_key)
        return heard is not None and asyncio.get_running_loop().time() - heard < self._presence_s

    async def _ensure_channel(self) -> Any:
        if self._layer is None:
            self._layer = self._layer_factory()
        if self._layer is not None and self.channel is None:
            self.channel = await self._layer.new_channel()
        if self.channel is not None and (self._receiver is None or self._receiver.done()):
            self._receiver = asyncio.get_running_loop().create_task(self._receive(), name="gateway-fanout-receive")
        return self._layer

    # --- publishing -------------------------------------------------------------------------------------

    async def publish(self, relay_key: str, event: Event) -> None:
        """An event a worker accepted through a socket of this node: to this node's sockets of the relay now,
        to the other nodes' in the next batch. Never raises (a failure costs live copies, which the workers
        still deliver, never the client's OK)."""
        fanout_published.inc()
        if self.channel is not None and relay_key in self._joined and self.others_present(relay_key):
            self._outbox.setdefault(relay_key, []).append(event)
            if relay_key not in self._sending:
                self._sending[relay_key] = asyncio.get_running_loop().create_task(self._send(relay_key))
        await offer(self._sessions_of(relay_key), event)

    async def _send(self, relay_key: str) -> None:
        try:
            while batch := self._outbox.pop(relay_key, []):
                for start in range(0, len(batch), BATCH_MAX):
                    chunk = batch[start : start + BATCH_MAX]
                    try:
                        await self._layer.group_send(
                            node_group(relay_key), message(relay_key, self.channel or "", chunk)
                        )
                        fanout_messages.labels(direction="out").inc()
                    except Exception as exc:  # the channel layer (Redis) may be briefly unavailable
                        logger.warning("live fan-out to other nodes failed", extra={"error": str(exc)})
        finally:
            self._sending.pop(relay_key, None)

    # --- receiving --------------------------------------------------------------------------------------

    async def _receive(self) -> None:
        """Deliver other nodes' batches to this node's sockets (this node's own come back too: skipped)."""
        while True:
            try:
                payload = await self._layer.receive(self.channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("live fan-out receive failed", extra={"error": str(exc)})
                await asyncio.sleep(1.0)
                continue
            kind, relay_key = payload.get("type"), str(payload.get("relay") or "")
            if kind not in (MESSAGE_TYPE, HELLO_TYPE) or payload.get("origin") == self.channel:
                continue
            self._others[relay_key] = asyncio.get_running_loop().time()
            if kind == HELLO_TYPE:
                if payload.get("answer") and relay_key in self._joined:
                    await self._hello(relay_key, answer=False)
                continue
            fanout_messages.labels(direction="in").inc()
            sessions = self._sessions_of(relay_key)
            for event in events_of(payload):
                await offer(sessions, event)

    async def close(self) -> None:
        tasks = [t for t in (self._receiver, *self._sending.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
