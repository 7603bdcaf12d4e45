"""Gateway-side escrow coordinator: asks the escrow for write leases and keeps them in the vault.

The WebSocket fallback path calls, when an EVENT must be written and no peer is healthy::

    from escrow.coordinator import get_coordinator
    lease = await get_coordinator().ensure_write_lease(relay_key, healthy_peers=0)
    if lease is None:   # no escrow configured, policy refused, lease held elsewhere, escrow unreachable
        ...answer ["OK", id, false, "blocked: relay is read-only"]...
    else:
        with get_coordinator().vault.writer_secret(relay_key) as secret:
            ...hand ``secret`` to the bridge for this one append (never store or log it)...

``ensure_write_lease`` returns a ``LeaseHandle`` (identifiers, fence, expiry; no secret), or raises
``LeasePending`` when a new lease is not there within ``answer_within`` (the write is answered "retry" at
once, the request continues in the background). It reuses an unexpired lease from the vault without asking
the escrow anything, and otherwise requests a new one with a fresh X25519 session key. Concurrent callers
for one relay share one request.

A write never waits for the escrow beyond ``answer_within``: confirming and renewing a held lease happen in
its watcher, in the background (every ``confirm_interval`` s it asks whether the lease still stands, and
renews it when a third of its lifetime is left while ``renew_while`` says the relay still needs it). Whoever
must act on a grant or a renewal (the bridge's leased writer opens the relay as a writer at once, and passes
a new expiry on) subscribes with ``on_grant``.

Evidence sent with an unlock: the caller's healthy peer count and the mirror evidence from
``replicas.selectors.mirror_evidence(relay_key)`` (the worker's last observed contact, the length it
announced then, the length mirrored). That selector belongs to the replicas app; it is imported lazily
and, when it is missing (ImportError/AttributeError) or has nothing, the coordinator sends no mirror
evidence, which the escrow policy refuses (``mirror-evidence-missing``): fail closed.

A 409 ``lease-active`` for a lease this process does not hold means another gateway node holds it; this
node does not steal it (it would only thrash the fence) and answers read-only until it expires or an
operator revokes it.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from escrow import crypto, metrics
from escrow.transport import EscrowHTTPError, EscrowUnavailable, gateway_client
from escrow.vault import LeaseVault, StaleLease, VaultEntry
from escrow.worker_client import PolicyError, verify_policy

logger = logging.getLogger(__name__)


class LeasePending(Exception):
    """A lease request is still under way (a slow or unreachable escrow): answer the write "retry in
    ``retry_after`` s"; the request goes on in the background and, if granted, serves the next write."""

    def __init__(self, relay_key: str, *, retry_after: int) -> None:
        super().__init__(f"lease request for {relay_key[:16]} still under way")
        self.relay_key = relay_key
        self.retry_after = retry_after


class EscrowClient(Protocol):
    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]: ...


@dataclass(frozen=True)
class LeaseHandle:
    relay_key: str
    lease_id: str
    fence: int
    expires_at: int
    writer_public_key: str


@dataclass(frozen=True)
class LeaseResult:
    """Outcome of one lease request (no secret inside; safe to log and to return from operator APIs)."""

    status: str  # granted, refused, conflict, unavailable, disabled
    lease: LeaseHandle | None = None
    reasons: tuple[str, ...] = ()
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "lease": self.lease.__dict__ if self.lease else None,
            "reasons": list(self.reasons),
            "detail": self.detail,
        }


def _mirror_evidence_sync(relay_key: str) -> dict[str, int] | None:
    """``evidence.mirror`` for an unlock (``escrow/WIRE.md``) from ``replicas.selectors.mirror_evidence``;
    None (no mirror evidence: refused) when the selector is absent or answers nothing usable."""
    try:
        from replicas import selectors as replica_selectors

        selector = replica_selectors.mirror_evidence
    except (ImportError, AttributeError):
        return None
    result = selector(relay_key)
    if not isinstance(result, dict) or not isinstance(result.get("announcedAt"), datetime):
        return None
    # Whole seconds rounded down: the observation is never reported as later than it was.
    return {
        "announcedAt": math.floor(result["announcedAt"].timestamp()),
        "announcedLength": int(result["announcedLength"]),
        "mirroredLength": int(result["mirroredLength"]),
    }


def _handle(entry: VaultEntry) -> LeaseHandle:
    return LeaseHandle(entry.relay_key, entry.lease_id, entry.fence, int(entry.expires_at), entry.writer_public.hex())


class EscrowCoordinator:
    def __init__(
        self,
        client: EscrowClient | None,
        *,
        vault: LeaseVault | None = None,
        mirror_evidence: Callable[[str], dict[str, int] | None] = _mirror_evidence_sync,
        request_ttl: int = 300,
        clock: Callable[[], float] = time.time,
        pinned_verify_key: bytes | None = None,
        confirm_interval: float = 3.0,
        refusal_pause: float = 5.0,
        answer_within: float | None = None,
    ) -> None:
        self.client = client
        self.vault = vault or LeaseVault(clock=clock)
        self._mirror_evidence = mirror_evidence
        self._request_ttl = request_ttl
        self._clock = clock
        self._verify_key = pinned_verify_key
        self._confirm_interval = confirm_interval
        self._refusal_pause = refusal_pause
        self._pause_until: dict[str, float] = {}
        # Relays whose last automatic request found the escrow unreachable: their writes are answered "retry
        # in N s" (a short outage), not "read-only" (a policy refusal), until a request gets an answer.
        self._unreachable: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        self._locks_guard = threading.Lock()
        # How long a write waits for a new lease before it is answered "retry" (the request goes on in the
        # background and its lease serves the next write); None waits for the escrow's answer.
        self._answer_within = answer_within
        self._acquiring: dict[str, asyncio.Future[LeaseHandle | None]] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._grant_listeners: list[Callable[[LeaseHandle], None]] = []
        self._still_needed: Callable[[str], bool] | None = None
        metrics.leases_active.set_function(self.vault.count)

    @property
    def enabled(self) -> bool:
        return self.client is not None

    @property
    def answer_within(self) -> float | None:
        """How long a write may wait for a lease before it is answered "retry" (None: no bound)."""
        return self._answer_within

    def pending(self, relay_key: str) -> LeasePending:
        """The "retry in N s" answer for a write that cannot be served within ``answer_within`` (the one place
        that figure is computed)."""
        return LeasePending(relay_key, retry_after=max(1, math.ceil(self._answer_within or 1)))

    def on_grant(self, callback: Callable[[LeaseHandle], None]) -> None:
        """Call ``callback(handle)`` on the event loop whenever a lease is granted or renewed here."""
        self._grant_listeners.append(callback)

    def renew_while(self, predicate: Callable[[str], bool]) -> None:
        """The watcher renews a relay's lease only while ``predicate(relay_key)`` (sync, may use the ORM) is
        true, e.g. while the relay still has no healthy worker. Without one it always renews; the escrow
        refuses a renewal once the worker is back anyway."""
        self._still_needed = predicate

    def _granted(self, lease: LeaseHandle) -> None:
        for callback in list(self._grant_listeners):
            try:
                callback(lease)
            except Exception:
                logger.exception("escrow: a lease grant listener failed", extra={"relay_key": lease.relay_key})

    def _lock_for(self, relay_key: str) -> asyncio.Lock:
        with self._locks_guard:
            return self._locks.setdefault(relay_key, asyncio.Lock())

    # --- Public API --------------------------------------------------------------------------------------

    async def ensure_write_lease(self, relay_key: str, *, healthy_peers: int = 0) -> LeaseHandle | None:
        """A usable write lease for ``relay_key``, requesting one if needed; None if refused. A held lease is
        returned at once (its watcher confirms and renews it in the background)."""
        self.vault.sweep()
        entry = self.vault.get(relay_key)
        if entry is not None:
            return _handle(entry)
        if not self.enabled:
            return None
        if self._answer_within is None:
            return await self._acquire(relay_key, healthy_peers)
        # One request per relay at a time; a write never waits longer than ``answer_within`` for it.
        pending = self._acquiring.get(relay_key)
        if pending is None or pending.done():
            pending = asyncio.ensure_future(self._acquire(relay_key, healthy_peers))
            # A LeasePending raised after every waiting write has been answered must not be logged as lost.
            pending.add_done_callback(lambda f: f.cancelled() or f.exception())
            self._acquiring[relay_key] = pending
        try:
            async with asyncio.timeout(self._answer_within):  # not wait_for, which can lose a cancel on 3.11
                return await asyncio.shield(pending)
        except TimeoutError:
            raise self.pending(relay_key) from None

    async def _acquire(self, relay_key: str, healthy_peers: int) -> LeaseHandle | None:
        async with self._lock_for(relay_key):
            # Another caller may have obtained the lease while this one waited.
            entry = self.vault.get(relay_key)
            if entry is not None:
                return _handle(entry)
            # After a refusal or an unreachable escrow, automatic requests for the relay pause briefly:
            # a client repeating EVENTs on a read-only relay must not turn into one audited unlock per
            # frame at the escrow. Operators' manual requests are not held back.
            paused_until = self._pause_until.get(relay_key, 0.0)
            if self._clock() < paused_until:
                if relay_key in self._unreachable:
                    raise LeasePending(relay_key, retry_after=max(1, math.ceil(paused_until - self._clock())))
                return None
            result = await self.request_lease(relay_key, healthy_peers=healthy_peers, requested_by="auto")
            if result.lease is None:
                self._pause_until[relay_key] = self._clock() + self._refusal_pause
            else:
                self._pause_until.pop(relay_key, None)
            if result.status != "unavailable":
                self._unreachable.discard(relay_key)
            else:
                self._unreachable.add(relay_key)
                raise LeasePending(relay_key, retry_after=max(1, math.ceil(self._refusal_pause)))
        return result.lease

    async def request_lease(self, relay_key: str, *, healthy_peers: int, requested_by: str) -> LeaseResult:
        if self.client is None:
            return LeaseResult("disabled", detail="HYPERTUNA_ESCROW_URL is not configured")
        mirror = await sync_to_async(self._mirror_evidence, thread_sensitive=True)(relay_key)
        result = await asyncio.to_thread(self._request_lease_sync, relay_key, healthy_peers, mirror, requested_by)
        metrics.unlock_requests_total.labels(result.status).inc()
        if result.lease is not None:
            self._schedule_expiry(result.lease)
            self._watch(result.lease)
            self._granted(result.lease)
        logger.info(
            "escrow lease request",
            extra={
                "relay_key": relay_key,
                "result": result.status,
                "reasons": list(result.reasons),
                "lease_id": result.lease.lease_id if result.lease else None,
                "requested_by": requested_by,
            },
        )
        return result

    async def release(self, relay_key: str, *, reason: str) -> bool:
        """Drop the local lease (wiping the secret) and tell the escrow, so it can grant again."""
        entry = self.vault.drop(relay_key, reason)
        if entry is None:
            return False
        if self.client is not None:
            try:
                await asyncio.to_thread(
                    self.client.request, "POST", "/escrow/revoke", {"leaseId": entry.lease_id, "reason": reason}
                )
            except (EscrowUnavailable, EscrowHTTPError) as exc:
                # The local copy is already gone; the escrow lease lapses at its expiry at the latest.
                logger.warning(
                    "escrow: could not report lease release",
                    extra={"lease_id": entry.lease_id, "error": type(exc).__name__},
                )
        return True

    def shutdown(self) -> None:
        for task in list(self._watchers.values()):
            with contextlib.suppress(RuntimeError):  # its loop may be gone already (interpreter exit)
                task.cancel()
        self.vault.clear("shutdown")

    # --- Internals -----------------------------------------------------------------------------------------

    def _escrow_verify_key(self) -> bytes:
        if self._verify_key is None:
            assert self.client is not None
            policy = verify_policy(self.client.request("GET", "/policy"))
            self._verify_key = bytes.fromhex(policy["verifyKey"])
        return self._verify_key

    def _request_lease_sync(
        self, relay_key: str, healthy_peers: int, mirror: dict[str, int] | None, requested_by: str
    ) -> LeaseResult:
        assert self.client is not None
        session = crypto.generate_session_keypair()
        evidence: dict[str, Any] = {"healthyPeers": healthy_peers}
        if mirror is not None:
            evidence["mirror"] = mirror
        body = {
            "relayKey": relay_key,
            "sessionPublicKey": crypto.b64encode(session.public),
            "evidence": evidence,
            "ttl": self._request_ttl,
        }
        try:
            verify_key = self._escrow_verify_key()
            grant = self.client.request("POST", "/escrow/unlock", body)
        except EscrowHTTPError as exc:
            session.discard()
            if exc.status == 412:
                reasons = tuple(str(r) for r in exc.body.get("reasons", []))
                self.vault.note_refusal(relay_key, list(reasons))
                return LeaseResult("refused", reasons=reasons)
            if exc.status == 409:
                return LeaseResult("conflict", detail=exc.code)
            return LeaseResult("error", detail=exc.code)
        except (EscrowUnavailable, PolicyError) as exc:
            session.discard()
            return LeaseResult("unavailable", detail=type(exc).__name__)
        try:
            opened = crypto.open_lease(
                session,
                sealed=crypto.b64decode(grant.get("sealedSecret"), field="sealedSecret"),
                signature=crypto.b64decode(grant.get("signature"), field="signature", length=crypto.SIGNATURE_BYTES),
                escrow_verify_key=verify_key,
                lease_id=str(grant.get("leaseId")),
                relay_key=relay_key,
                fence=int(grant.get("fence", 0)),
                expires_at=int(grant.get("expiresAt", 0)),
                writer_public=bytes.fromhex(str(grant.get("writerPublicKey", ""))),
            )
        except (crypto.CryptoError, ValueError, TypeError) as exc:
            # A grant we cannot open or that does not match what we asked for is a security event.
            code = getattr(exc, "code", type(exc).__name__)
            logger.error("escrow: lease envelope rejected", extra={"relay_key": relay_key, "error": code})
            return LeaseResult("error", detail=f"envelope-rejected:{code}")
        try:
            entry = self.vault.put(opened, requested_by=requested_by)
        except StaleLease:
            return LeaseResult("error", detail="stale-fence")
        return LeaseResult("granted", lease=_handle(entry))

    def _watch(self, lease: LeaseHandle) -> None:
        """Confirm a held lease every ``confirm_interval`` seconds while it is in the vault, writes or not, so
        an escrow-side end (the worker came back, an operator revoked) wipes it here within one interval."""
        previous = self._watchers.pop(lease.lease_id, None)
        if previous is not None:
            previous.cancel()
        self._watchers[lease.lease_id] = asyncio.get_running_loop().create_task(
            self._watch_loop(lease), name=f"escrow-lease-watch-{lease.lease_id[:8]}"
        )

    async def _watch_loop(self, lease: LeaseHandle) -> None:
        loop = asyncio.get_running_loop()
        confirmed = loop.time()
        # The expiry a renewal was last tried for without extending it (refused, unreachable, not needed):
        # tried again one interval later, not in a loop.
        tried: float | None = None

        def current() -> VaultEntry | None:
            entry = self.vault.get(lease.relay_key)
            return entry if entry is not None and entry.lease_id == lease.lease_id else None

        try:
            while (entry := current()) is not None:
                # Wake for the next confirmation, or earlier when the renewal falls due (a short lease would
                # otherwise lapse between two confirmations).
                due_in = self._renew_at(entry) - self._clock()
                delay = self._confirm_interval if tried == entry.expires_at else min(self._confirm_interval, due_in)
                await asyncio.sleep(max(delay, 0.0))
                if (entry := current()) is None:
                    return
                if loop.time() - confirmed >= self._confirm_interval * 0.99:
                    await self._confirm(entry)
                    confirmed = loop.time()
                    if (entry := current()) is None:
                        return
                if self._renew_at(entry) <= self._clock():
                    if await self._needed(entry.relay_key):
                        await self._renew(entry)
                    renewed = current()
                    if renewed is not None and renewed.expires_at == entry.expires_at:
                        tried = entry.expires_at
        finally:
            self._watchers.pop(lease.lease_id, None)

    async def _confirm(self, entry: VaultEntry) -> None:
        """Ask the escrow whether the lease still stands (the watcher does, every ``confirm_interval`` s).

        This bounds how long the gateway can keep writing after the escrow revoked the lease (a worker
        came back, an operator revoked): one interval. If the escrow cannot be reached the lease is kept
        until its own expiry, which is the hard bound.
        """
        if self.client is None:
            return
        try:
            status = await asyncio.to_thread(self.client.request, "GET", f"/escrow/relays/{entry.relay_key}")
        except (EscrowUnavailable, EscrowHTTPError):
            return
        current = status.get("lease") or {}
        if current.get("leaseId") != entry.lease_id:
            self.vault.drop(entry.relay_key, "revoked-at-escrow")

    def _renew_at(self, entry: VaultEntry) -> float:
        """When a third of the lease's usable lifetime is left (the vault stops using it ``margin`` s early)."""
        lifetime = max(entry.expires_at - max(entry.stored_at, entry.term_started_at), 1.0)
        return entry.expires_at - self.vault._margin - lifetime / 3

    async def _needed(self, relay_key: str) -> bool:
        if self._still_needed is None:
            return True
        try:
            return bool(await sync_to_async(self._still_needed, thread_sensitive=True)(relay_key))
        except Exception:
            # Cannot tell (database briefly away): renew; the escrow refuses once a worker is back.
            logger.warning("escrow: could not tell whether a lease is still needed", exc_info=True)
            return True

    async def _renew(self, entry: VaultEntry) -> None:
        if self.client is None:
            return
        try:
            renewed = await asyncio.to_thread(
                self.client.request, "POST", "/escrow/renew", {"leaseId": entry.lease_id, "ttl": self._request_ttl}
            )
        except EscrowHTTPError as exc:
            if exc.status in (404, 409):
                # The escrow ended the lease (worker returned, revoked, expired): stop writing now.
                self.vault.drop(entry.relay_key, exc.code)
            return
        except EscrowUnavailable:
            return  # keep using the lease until its own expiry
        self.vault.update_expiry(entry.relay_key, entry.lease_id, float(renewed["expiresAt"]))
        self._schedule_expiry(_handle(entry), at=float(renewed["expiresAt"]))
        current = self.vault.get(entry.relay_key)
        if current is not None and current.lease_id == entry.lease_id:
            self._granted(_handle(current))

    def _schedule_expiry(self, lease: LeaseHandle, at: float | None = None) -> None:
        """Wipe the secret at (early) expiry even if nobody touches the vault again."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        delay = max((at or lease.expires_at) - self._clock() - self.vault._margin, 0.0)
        loop.call_later(delay, self.vault.sweep)


_coordinator: EscrowCoordinator | None = None
_coordinator_lock = threading.Lock()


def build_default_coordinator() -> EscrowCoordinator:
    client: EscrowClient | None = gateway_client()
    if settings.HYPERTUNA_ESCROW_URL and client is None:
        # Never fall back to plain TLS or the system trust store (system check escrow.E001 says the same).
        raise ImproperlyConfigured(
            "HYPERTUNA_ESCROW_URL needs HYPERTUNA_ESCROW_CA, _CLIENT_CERT and _CLIENT_KEY (mutual TLS only)."
        )
    return EscrowCoordinator(
        client,
        request_ttl=settings.HYPERTUNA_ESCROW_REQUEST_TTL,
        answer_within=settings.HYPERTUNA_ESCROW_ANSWER_WITHIN,
    )


def get_coordinator() -> EscrowCoordinator:
    """The process-wide coordinator (one vault per gateway process)."""
    global _coordinator
    if _coordinator is None:
        with _coordinator_lock:
            if _coordinator is None:
                _coordinator = build_default_coordinator()
                # Wipe leased secrets on interpreter exit too (the server's SIGTERM path ends here).
                atexit.register(_coordinator.shutdown)
    return _coordinator


def set_coordinator(coordinator: EscrowCoordinator | None) -> EscrowCoordinator | None:
    """Replace the process-wide coordinator (tests, or a composition root with its own client)."""
    global _coordinator
    with _coordinator_lock:
        previous, _coordinator = _coordinator, coordinator
    if previous is not None and previous is not coordinator:
        previous.shutdown()
    return previous


async def ensure_write_lease(relay_key: str, *, healthy_peers: int = 0) -> LeaseHandle | None:
    """Shortcut for the WebSocket fallback path: ``await ensure_write_lease(relay_key, healthy_peers=0)``."""
    return await get_coordinator().ensure_write_lease(relay_key, healthy_peers=healthy_peers)
