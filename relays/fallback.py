"""Serving a relay when no worker can: reads from the Postgres replica, writes only under an escrow lease.

- **REQ** is answered from the materialized replica (``replicas.selectors.query_events``: NIP-01 order,
  per-filter limits, replaceable events and deletions applied), then one EOSE; afterwards the session's
  poll asks the replica for events newer than what each subscription has delivered.
- **EVENT** (already verified by the session) asks the escrow coordinator for a write lease, automatically
  — the coordinator sends the escrow its evidence (no healthy peer, mirror freshness) and the escrow
  decides. With a lease the bridge appends the event to the relay's Autobase as the leased gateway writer
  (``lease.open`` once per lease, then ``lease.append`` with the fencing token) and the event is delivered
  live to this node's other fallback subscribers of the relay. Without one the client is told the relay is
  read-only (``OK false``, ``blocked:``).

The writer secret leaves the vault only inside ``lease.open``'s request to the local bridge: it is copied
into one base64 string for the RPC frame (Python cannot wipe that string; the vault's own buffer is wiped on
release, and the bridge zeroes its copy on ``lease.close``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import cache
from prometheus_client import Counter

from hypertuna.bridge import BridgeClient, BridgeClientError, BridgeError
from hypertuna.nostr import (
    CloseMessage,
    EventMessage,
    Filter,
    ReqMessage,
    eose_frame,
    event_frame_from_json,
    matches_any,
    notice_frame,
    ok_frame,
)

logger = logging.getLogger(__name__)

fallback_reads = Counter("gateway_relay_fallback_reads_total", "REQs answered from a replica", ["relay"])
fallback_writes = Counter(
    "gateway_relay_fallback_writes_total", "EVENTs received while no worker served the relay", ["relay", "result"]
)

READ_ONLY = "blocked: relay is read-only while its workers are offline"
LEASE_PENDING = "blocked: the relay's workers are offline and a write lease is being requested; retry in {} s"


def replica_available(relay_key: str) -> bool:
    """Whether a replica of the relay exists to read from (sync). A yes is cached briefly (every
    connection asks, and a replica is not removed while its relay is in use); a no is not, so a replica
    created a moment ago is found at once."""
    from replicas.selectors import has_replica

    key = f"relay:replica:{relay_key}"
    if cache.get(key):
        return True
    available = has_replica(relay_key)
    if available:
        cache.set(key, True, timeout=30)
    return available


@dataclass
class _Sub:
    filters: tuple[Filter, ...]
    newest: int | None = None
    seen_at_newest: set[str] = field(default_factory=set)

    def note(self, event_id: str, created_at: int) -> bool:
        """Record a delivered event; False if the subscription already had it."""
        if self.newest is not None and created_at < self.newest:
            return True  # older than the poll window: only reachable through the initial answer
        if created_at == self.newest:
            if event_id in self.seen_at_newest:
                return False
            self.seen_at_newest.add(event_id)
            return True
        self.newest, self.seen_at_newest = created_at, {event_id}
        return True


class LeaseWriter:
    """Per-process link between the escrow vault and the bridge's leased writers."""

    def __init__(self, client: BridgeClient) -> None:
        self.client = client
        # lease id → (fence, expiresAt) the bridge holds; a renewal (later expiresAt) is passed on, or the
        # bridge would close the lease at its old expiry while the escrow has extended it.
        self._opened: dict[str, tuple[int, int]] = {}
        self._lock = asyncio.Lock()
        self._hooked = False

    def _hook_release(self, coordinator: Any) -> None:
        if self._hooked:
            return
        loop = asyncio.get_running_loop()

        def released(relay_key: str, lease_id: str, reason: str) -> None:
            # Called by the vault (any thread) when a lease is revoked, expires or is released: the bridge
            # must drop its copy of the key as well.
            if self._opened.pop(lease_id, None) is not None:
                loop.call_soon_threadsafe(lambda: loop.create_task(self._close(lease_id, reason)))

        coordinator.vault.on_release(released)
        self._hooked = True

    async def _close(self, lease_id: str, reason: str) -> None:
        with contextlib.suppress(BridgeClientError):
            await self.client.call("lease.close", {"leaseId": lease_id, "reason": reason}, timeout_s=10)

    async def append(self, relay_key: str, event: dict[str, Any]) -> str:
        """Append under a lease; returns a result label (``accepted``, ``duplicate``, ``pending``: a lease is being
        requested, ``readonly``, ``error``)."""
        from escrow.coordinator import LeasePending, get_coordinator

        coordinator = get_coordinator()
        if not coordinator.enabled:
            return "readonly"
        self._hook_release(coordinator)
        try:
            lease = await coordinator.ensure_write_lease(relay_key, healthy_peers=0)
        except LeasePending:
            return "pending"
        if lease is None:
            return "readonly"
        expires_ms = lease.expires_at * 1000 if lease.expires_at < 10**11 else lease.expires_at
        async with self._lock:
            if self._opened.get(lease.lease_id) != (lease.fence, expires_ms):
                with coordinator.vault.writer_secret(relay_key) as secret:
                    if secret is None:
                        return "readonly"
                    params = {
                        "leaseId": lease.lease_id,
                        "relayKey": relay_key,
                        "writerPublicKey": lease.writer_public_key,
                        "writerSecretKey": base64.b64encode(secret).decode("ascii"),
                        "fencing": lease.fence,
                        "expiresAt": expires_ms,
                    }
                try:
                    await self.client.call("lease.open", params, timeout_s=90)
                finally:
                    params.clear()
                self._opened[lease.lease_id] = (lease.fence, expires_ms)
        try:
            appended = await self.client.call(
                "lease.append", {"leaseId": lease.lease_id, "fencing": lease.fence, "event": event}, timeout_s=30
            )
        except BridgeError as exc:
            logger.warning("leased append refused", extra={"relay": relay_key, "code": exc.code})
            if exc.code in ("lease-expired", "stale-fencing", "fencing-mismatch", "not-a-writer"):
                self._opened.pop(lease.lease_id, None)
            return "error"
        return "duplicate" if isinstance(appended, dict) and appended.get("duplicate") else "accepted"


class ReplicaFallback:
    """``session.Fallback`` for one socket: replica reads, leased writes, live fan-out on this node."""

    def __init__(self, *, relay_key: str, writer: LeaseWriter, peers_of_relay: Any) -> None:
        self.relay_key = relay_key
        self.writer = writer
        self._subs: dict[str, _Sub] = {}
        self._pending: list[str] = []
        self._siblings = peers_of_relay  # callable: other fallbacks of this relay on this node

    async def handle(self, message: EventMessage | ReqMessage | CloseMessage, raw: str) -> list[str] | None:
        if isinstance(message, ReqMessage):
            return await self._req(message)
        if isinstance(message, CloseMessage):
            self._subs.pop(message.subscription_id, None)
            return []
        return await self._event(message)

    async def _req(self, message: ReqMessage) -> list[str]:
        from replicas.selectors import query_events

        events = await sync_to_async(query_events)(
            self.relay_key, message.filters, max_limit=settings.HYPERTUNA_REPLICA_MAX_LIMIT
        )
        fallback_reads.labels(relay=self.relay_key).inc()
        sub = _Sub(message.filters)
        frames = []
        for stored in events:
            sub.note(stored.id, stored.created_at)
            frames.append(event_frame_from_json(message.subscription_id, stored.json))
        self._subs[message.subscription_id] = sub
        frames.append(eose_frame(message.subscription_id))
        return frames

    async def _event(self, message: EventMessage) -> list[str]:
        event = message.event.to_dict()
        result = await self.writer.append(self.relay_key, event)
        fallback_writes.labels(relay=self.relay_key, result=result).inc()
        if result == "accepted":
            for sibling in self._siblings():
                sibling.offer(message.event.id, message.event.created_at, message.event)
            return [ok_frame(message.event.id, True, "")]
        if result == "duplicate":
            return [ok_frame(message.event.id, True, "duplicate: the relay already has this event")]
        if result == "pending":
            retry = math.ceil(settings.HYPERTUNA_ESCROW_ANSWER_WITHIN)
            return [ok_frame(message.event.id, False, LEASE_PENDING.format(retry))]
        if result == "readonly":
            return [
                notice_frame("Relay is read-only while its workers are offline"),
                ok_frame(message.event.id, False, READ_ONLY),
            ]
        return [ok_frame(message.event.id, False, "error: the gateway could not write this event; try again")]

    def offer(self, event_id: str, created_at: int, event: Any) -> None:
        """A live event written through this node: queue it for matching subscriptions."""
        for sub_id, sub in self._subs.items():
            if matches_any(sub.filters, event) and sub.note(event_id, created_at):
                self._pending.append(
                    json.dumps(["EVENT", sub_id, event.to_dict()], ensure_ascii=False, separators=(",", ":"))
                )

    async def poll(self) -> list[str]:
        """Live events since the last answer: written here, or newly materialized from the mirror."""
        from replicas.selectors import query_events

        frames, self._pending = self._pending, []
        for sub_id, sub in list(self._subs.items()):
            if sub.newest is None:
                since_filters = sub.filters
            else:
                since_filters = tuple(
                    Filter.from_json({**f.to_dict(), "since": max(f.since or 0, sub.newest)}) for f in sub.filters
                )
            events = await sync_to_async(query_events)(self.relay_key, since_filters, max_limit=100)
            for stored in reversed(events):  # oldest first, as live events arrive
                if sub.note(stored.id, stored.created_at):
                    frames.append(event_frame_from_json(sub_id, stored.json))
        return frames
