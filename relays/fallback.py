"""Serving a relay when no worker can: reads from the Postgres replica, writes only under an escrow lease.

- **REQ** is answered from the materialized replica (``replicas.queries.query_events``: NIP-01 order,
  per-filter limits, replaceable events and deletions applied), then one EOSE; afterwards the session's
  poll asks the replica for events newer than what each subscription has delivered.
- **EVENT** (already verified by the session) asks the escrow coordinator for a write lease, automatically
  — the coordinator sends the escrow its evidence (no healthy peer, mirror freshness) and the escrow
  decides. With a lease the bridge appends the event to the relay's Autobase as the leased gateway writer
  (``lease.open`` once per lease, then ``lease.append`` with the fencing token), the event is materialized
  into the replica at once as pending (``replicas.pending``: REQs on every node answer it), and the session
  hands it to the node's live fan-out (``relays.fanout``) like an event a worker accepted: the relay's
  subscribers on every node get it at once, not at their next poll of the replica. Without a lease the
  client is told the relay is read-only (``OK false``, ``blocked:``).
- **Bounded answer.** A write is answered within the coordinator's ``answer_within`` (plus one short step):
  the lease request, the bridge opening the relay as a writer (started in the background as soon as a lease
  is granted) and the append all go on in the background past it, and the client is told ``blocked: … retry
  in N s`` with the coordinator's figure. A retry of a write that completed meanwhile is a duplicate (``OK
  true``). An append that completes after its answer is materialized all the same.

The writer secret leaves the vault only inside ``lease.open``'s request to the local bridge: it is copied
into one base64 string for the RPC frame (Python cannot wipe that string; the vault's own buffer is wiped on
release, and the bridge zeroes its copy on ``lease.close``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import cache
from django.utils import timezone
from prometheus_client import Counter

from hypertuna.bridge import BridgeClient, BridgeClientError
from hypertuna.nostr import (
    CloseMessage,
    Event,
    EventMessage,
    Filter,
    ReqMessage,
    eose_frame,
    event_frame_head,
    notice_frame,
    ok_frame,
)
from relays.frames_filter import Frame, WorkerFrame
from relays.replica_reads import read_replica

if TYPE_CHECKING:
    from escrow.coordinator import EscrowCoordinator, LeaseHandle
    from replicas.queries import StoredEvent

logger = logging.getLogger(__name__)

fallback_reads = Counter("gateway_relay_fallback_reads_total", "REQs answered from a replica", ["relay"])
fallback_writes = Counter(
    "gateway_relay_fallback_writes_total", "EVENTs received while no worker served the relay", ["relay", "result"]
)

READ_ONLY = "blocked: relay is read-only while its workers are offline"
LEASE_PENDING = "blocked: the relay's workers are offline and its write lease is being prepared; retry in {} s"
# Past the coordinator's ``answer_within``, the bridge still gets this long to open the relay or append.
LAST_STEP_S = 0.25
# After the bridge failed to open a lease, writes under it fail at once for this long (no open per frame).
OPEN_RETRY_PAUSE_S = 5.0
# A worker that answered within this long serves the relay: the lease is then not renewed.
WORKER_HEALTHY_WITHIN_S = 30
# Live delivery remembers this many event ids per subscription, so no path delivers one twice.
RECENT_IDS = 1024


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


def relay_still_offline(relay_key: str) -> bool:
    """Whether no worker of the relay answered any gateway node lately (sync): the coordinator renews the
    relay's lease only while so. Asks for positive evidence (a recent healthy answer), not the registration's
    peer list, which keeps listing a worker that just went away until its failures are counted."""
    from relays.models import Peer

    lately = timezone.now() - timedelta(seconds=WORKER_HEALTHY_WITHIN_S)
    return not Peer.objects.filter(
        relay__relay_key=relay_key, active=True, unreachable_since__isnull=True, last_healthy_at__gt=lately
    ).exists()


async def materialize_leased(relay_key: str, event: Event) -> None:
    """Put an event the bridge accepted under a lease into the replica at once, marked pending.

    Never raises: the event is already durable in the relay's Autobase, so a failure here (database briefly
    away) must not turn into an error to the client or a lost write; the replica sync brings it later.
    """
    from replicas.pending import store_leased_event

    try:
        await sync_to_async(store_leased_event)(relay_key=relay_key, event=event)
    except Exception:
        logger.warning(
            "a leased write could not be materialized; the replica sync will bring it",
            extra={"relay": relay_key, "event_id": event.id},
            exc_info=True,
        )


@dataclass
class _Sub:
    filters: tuple[Filter, ...]
    newest: int | None = None
    seen_at_newest: set[str] = field(default_factory=set)
    # Ids delivered lately, in order: an event found twice by the poll (at the newest second) is sent once.
    recent: dict[str, None] = field(default_factory=dict)

    def note(self, event_id: str, created_at: int) -> bool:
        """Record a delivered event; False if the subscription already had it."""
        if event_id in self.recent:
            return False
        self.recent[event_id] = None
        if len(self.recent) > RECENT_IDS:
            del self.recent[next(iter(self.recent))]
        if self.newest is not None and created_at < self.newest:
            return True  # older than the poll window: only reachable through the initial answer
        if created_at == self.newest:
            if event_id in self.seen_at_newest:
                return False
            self.seen_at_newest.add(event_id)
            return True
        self.newest, self.seen_at_newest = created_at, {event_id}
        return True

    def note_answer(self, events: Sequence[StoredEvent]) -> None:
        """Record the subscription's initial answer (distinct events, newest first): the state ``note`` would
        leave after each of them in turn, set at once."""
        if not events:
            return
        self.recent.update(dict.fromkeys(stored.id for stored in events))
        for _ in range(len(self.recent) - RECENT_IDS):
            del self.recent[next(iter(self.recent))]
        newest = events[0].created_at
        if self.newest is None or newest > self.newest:
            self.newest, self.seen_at_newest = newest, set()
        if newest == self.newest:
            at_newest = itertools.takewhile(lambda stored: stored.created_at == newest, events)
            self.seen_at_newest.update(stored.id for stored in at_newest)


def _stored_frame(head: str, sub_id: str, stored: StoredEvent) -> WorkerFrame:
    """The EVENT frame of a replica row for a subscription (``head``: ``event_frame_head(sub_id)``), read."""
    return WorkerFrame(head + stored.json + "]", "EVENT", sub_id, stored.id, stored.created_at)


def _expires_ms(lease: LeaseHandle) -> int:
    return lease.expires_at * 1000 if lease.expires_at < 10**11 else lease.expires_at


class LeaseWriter:
    """Per-process link between the escrow vault and the bridge's leased writers."""

    def __init__(self, client: BridgeClient) -> None:
        self.client = client
        # lease id → (fence, expiresAt) the bridge holds; a renewal (later expiresAt) is passed on, or the
        # bridge would close the lease at its old expiry while the escrow has extended it.
        self._opened: dict[str, tuple[int, int]] = {}
        # lease id → (target, task) of the ``lease.open`` under way, and of the last one that failed (when).
        self._opening: dict[str, tuple[tuple[int, int], asyncio.Task[bool]]] = {}
        self._failed: dict[str, tuple[tuple[int, int], float]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        # Opens run one at a time: the bridge must never see two opens of one lease interleave.
        self._lock = asyncio.Lock()
        self._hooked: EscrowCoordinator | None = None

    def _hook(self, coordinator: EscrowCoordinator) -> None:
        if self._hooked is coordinator:
            return
        loop = asyncio.get_running_loop()

        def released(relay_key: str, lease_id: str, reason: str) -> None:
            # Called by the vault (any thread) when a lease is revoked, expires or is released: the bridge
            # must drop its copy of the key as well.
            self._failed.pop(lease_id, None)
            if self._opened.pop(lease_id, None) is not None:
                self._soon(loop, lambda: self._spawn(self._close(lease_id, reason)))

        def granted(lease: LeaseHandle) -> None:
            # A new lease (or a renewal): open the relay as a writer now, not when the next write waits for it.
            self._soon(loop, lambda: self._start_open(coordinator, lease))

        coordinator.vault.on_release(released)
        coordinator.on_grant(granted)
        coordinator.renew_while(relay_still_offline)
        self._hooked = coordinator

    @staticmethod
    def _soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], object]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone (interpreter exit): nothing to do
            loop.call_soon_threadsafe(callback)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _close(self, lease_id: str, reason: str) -> None:
        with contextlib.suppress(BridgeClientError):
            await self.client.call("lease.close", {"leaseId": lease_id, "reason": reason}, timeout_s=10)

    def _start_open(self, coordinator: EscrowCoordinator, lease: LeaseHandle) -> asyncio.Task[bool] | None:
        """The task opening ``lease`` on the bridge (started if needed); None when the bridge holds it."""
        target = (lease.fence, _expires_ms(lease))
        if self._opened.get(lease.lease_id) == target:
            return None
        current = self._opening.get(lease.lease_id)
        if current is not None and current[0] == target:
            return current[1]
        task = self._spawn(self._open(coordinator, lease, target))
        self._opening[lease.lease_id] = (target, task)
        return task

    async def _open(self, coordinator: EscrowCoordinator, lease: LeaseHandle, target: tuple[int, int]) -> bool:
        try:
            async with self._lock:
                if self._opened.get(lease.lease_id) == target:
                    return True
                entry = coordinator.vault.get(lease.relay_key)
                if entry is None or entry.lease_id != lease.lease_id:
                    return False  # released or superseded meanwhile
                with coordinator.vault.writer_secret(lease.relay_key) as secret:
                    if secret is None:
                        return False
                    params = {
                        "leaseId": lease.lease_id,
                        "relayKey": lease.relay_key,
                        "writerPublicKey": lease.writer_public_key,
                        "writerSecretKey": base64.b64encode(secret).decode("ascii"),
                        "fencing": lease.fence,
                        "expiresAt": target[1],
                    }
                try:
                    await self.client.call("lease.open", params, timeout_s=90)
                except BridgeClientError as exc:
                    self._failed[lease.lease_id] = (target, asyncio.get_running_loop().time())
                    logger.warning(
                        "the bridge could not open the relay for leased writes",
                        extra={"relay": lease.relay_key, "code": getattr(exc, "code", type(exc).__name__)},
                    )
                    return False
                finally:
                    params.clear()
                self._failed.pop(lease.lease_id, None)
                self._opened[lease.lease_id] = target
                return True
        finally:
            current = self._opening.get(lease.lease_id)
            if current is not None and current[0] == target:
                del self._opening[lease.lease_id]

    def _open_failed_lately(self, lease: LeaseHandle) -> bool:
        failed = self._failed.get(lease.lease_id)
        return (
            failed is not None
            and failed[0] == (lease.fence, _expires_ms(lease))
            and asyncio.get_running_loop().time() - failed[1] < OPEN_RETRY_PAUSE_S
        )

    async def append(self, relay_key: str, event: Event) -> str:
        """Append under a lease; returns a result label (``accepted``, ``duplicate``, ``readonly``, ``error``).

        Raises ``LeasePending`` (with the coordinator's retry figure) when the lease, the bridge opening the
        relay, or the append is not done within the coordinator's ``answer_within`` plus ``LAST_STEP_S``;
        each goes on in the background, and an append that completes later is materialized then.
        """
        from escrow.coordinator import get_coordinator

        coordinator = get_coordinator()
        if not coordinator.enabled:
            return "readonly"
        self._hook(coordinator)
        loop = asyncio.get_running_loop()
        budget = coordinator.answer_within
        deadline = None if budget is None else loop.time() + budget
        lease = await coordinator.ensure_write_lease(relay_key, healthy_peers=0)
        if lease is None:
            return "readonly"
        if deadline is not None:
            deadline = max(deadline, loop.time() + LAST_STEP_S)

        async def within(task: asyncio.Task[Any]) -> Any:
            timeout = None if deadline is None else max(deadline - loop.time(), 0.0)
            try:
                async with asyncio.timeout(timeout):  # not wait_for, which can lose a cancel on Python 3.11
                    return await asyncio.shield(task)
            except TimeoutError:
                raise coordinator.pending(relay_key) from None

        if self._open_failed_lately(lease):
            return "error"
        opening = self._start_open(coordinator, lease)
        if opening is not None and not await within(opening):
            return "error"
        appending = self._spawn(self._append(lease, event))
        try:
            return str(await within(appending))
        except BaseException:  # answered "retry" (or the socket went away): the append goes on regardless
            appending.add_done_callback(lambda task: self._appended_late(relay_key, event, task))
            raise

    async def _append(self, lease: LeaseHandle, event: Event) -> str:
        try:
            appended = await self.client.call(
                "lease.append",
                {"leaseId": lease.lease_id, "fencing": lease.fence, "event": event.to_dict()},
                timeout_s=30,
            )
        except BridgeClientError as exc:
            code = getattr(exc, "code", type(exc).__name__)
            logger.warning("leased append refused", extra={"relay": lease.relay_key, "code": code})
            if code in ("lease-expired", "stale-fencing", "fencing-mismatch", "not-a-writer", "not-found"):
                self._opened.pop(lease.lease_id, None)
            return "error"
        return "duplicate" if isinstance(appended, dict) and appended.get("duplicate") else "accepted"

    def _appended_late(self, relay_key: str, event: Event, task: asyncio.Task[Any]) -> None:
        """An append answered "retry" completed after all: make it visible like any leased write."""
        if not task.cancelled() and task.exception() is None and task.result() in ("accepted", "duplicate"):
            self._spawn(materialize_leased(relay_key, event))


class ReplicaFallback:
    """``session.Fallback`` for one socket: replica reads, leased writes, live events found in the replica."""

    def __init__(self, *, relay_key: str, writer: LeaseWriter) -> None:
        self.relay_key = relay_key
        self.writer = writer
        self._subs: dict[str, _Sub] = {}

    async def handle(self, message: EventMessage | ReqMessage | CloseMessage, raw: str) -> Sequence[Frame] | None:
        if isinstance(message, ReqMessage):
            return await self._req(message)
        if isinstance(message, CloseMessage):
            self._subs.pop(message.subscription_id, None)
            return []
        return await self._event(message)

    async def _req(self, message: ReqMessage) -> list[Frame]:
        events = await read_replica(self.relay_key, message.filters, max_limit=settings.HYPERTUNA_REPLICA_MAX_LIMIT)
        fallback_reads.labels(relay=self.relay_key).inc()
        sub_id = message.subscription_id
        sub = _Sub(message.filters)
        sub.note_answer(events)
        self._subs[sub_id] = sub
        head = event_frame_head(sub_id)
        frames: list[Frame] = [_stored_frame(head, sub_id, stored) for stored in events]
        frames.append(eose_frame(sub_id))
        return frames

    async def _event(self, message: EventMessage) -> list[str]:
        from escrow.coordinator import LeasePending

        event = message.event
        try:
            result = await self.writer.append(self.relay_key, event)
        except LeasePending as pending:
            fallback_writes.labels(relay=self.relay_key, result="pending").inc()
            return [ok_frame(event.id, False, LEASE_PENDING.format(pending.retry_after))]
        fallback_writes.labels(relay=self.relay_key, result=result).inc()
        if result in ("accepted", "duplicate"):
            # Also for a duplicate: the first attempt may have been answered "retry" before it was stored.
            await materialize_leased(self.relay_key, event)
        if result == "accepted":
            return [ok_frame(event.id, True, "")]
        if result == "duplicate":
            return [ok_frame(event.id, True, "duplicate: the relay already has this event")]
        if result == "readonly":
            return [
                notice_frame("Relay is read-only while its workers are offline"),
                ok_frame(event.id, False, READ_ONLY),
            ]
        return [ok_frame(event.id, False, "error: the gateway could not write this event; try again")]

    async def poll(self) -> list[Frame]:
        """Live events since the last answer, newly materialized (from the mirror, or leased writes of other
        sockets: those came live through the fan-out already, and the session drops them by id)."""
        frames: list[Frame] = []
        for sub_id, sub in list(self._subs.items()):
            if sub.newest is None:
                since_filters = sub.filters
            else:
                since_filters = tuple(
                    Filter.from_json({**f.to_dict(), "since": max(f.since or 0, sub.newest)}) for f in sub.filters
                )
            events = await read_replica(self.relay_key, since_filters, max_limit=100)
            head = event_frame_head(sub_id)
            for stored in reversed(events):  # oldest first, as live events arrive
                if sub.note(stored.id, stored.created_at):
                    frames.append(_stored_frame(head, sub_id, stored))
        return frames
