"""The gateway's in-memory lease vault: the only place a released writer secret lives on the gateway.

Never persisted: not in the database, Redis, Celery arguments, logs or exception text. One entry per
relay; a new lease for a relay wipes the previous one; a lease with a lower fence than one already seen
for the relay is refused (a delayed or replayed grant cannot roll the gateway back to an older key).

Expiry is local and early: an entry stops being usable ``SKEW_MARGIN`` seconds before the escrow's
expiry, so clock skew between gateway and escrow cannot stretch a lease. Expired or released entries are
wiped at once (``bytearray`` overwritten with zeros).

Limits, honestly: Python cannot guarantee that no other copy of the secret exists. PyNaCl returns
immutable ``bytes`` when it opens the sealed box; that object (and any copy a caller makes, e.g. to hand
the key to the bridge) stays in the heap until the allocator reuses it. Wiping the vault's ``bytearray``
removes the long-lived copy, not transient ones. Deploy with swap off or encrypted and core dumps
disabled (see the runbook).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from escrow import crypto

SKEW_MARGIN = 2.0

logger = logging.getLogger(__name__)


@dataclass
class VaultEntry:
    relay_key: str
    lease_id: str
    fence: int
    expires_at: float  # escrow expiry, Unix seconds
    writer_public: bytes
    writer_secret: bytearray = field(repr=False)
    stored_at: float = 0.0
    # When the current term began: the store, or the last renewal (a renewal starts a new term of one TTL).
    term_started_at: float = 0.0
    requested_by: str = "auto"

    def __repr__(self) -> str:
        return f"VaultEntry(relay_key={self.relay_key!r}, lease_id={self.lease_id!r}, fence={self.fence})"

    def summary(self) -> dict[str, Any]:
        return {
            "relayKey": self.relay_key,
            "leaseId": self.lease_id,
            "fence": self.fence,
            "expiresAt": int(self.expires_at),
            "writerPublicKey": self.writer_public.hex(),
            "requestedBy": self.requested_by,
        }


class StaleLease(ValueError):
    """A grant older (lower fence) than one the vault already saw for the relay."""


class LeaseVault:
    def __init__(self, *, clock: Callable[[], float] = time.time, skew_margin: float = SKEW_MARGIN) -> None:
        self._clock = clock
        self._margin = skew_margin
        self._entries: dict[str, VaultEntry] = {}
        self._fences: dict[str, int] = {}
        self._health: dict[str, dict[str, Any]] = {}
        self._listeners: list[Callable[[str, str, str], None]] = []
        self._lock = threading.RLock()

    def on_release(self, callback: Callable[[str, str, str], None]) -> None:
        """Call ``callback(relay_key, lease_id, reason)`` whenever an entry is dropped (expired, released,
        revoked, superseded, shutdown): the place to tell the bridge to forget its copy of the writer key.
        Called under the vault lock: keep it quick (schedule the work, do not block on I/O)."""
        self._listeners.append(callback)

    def _note(self, relay_key: str, status: str, **details: Any) -> None:
        self._health[relay_key] = {"relayKey": relay_key, "status": status, "updatedAt": int(self._clock()), **details}

    def put(self, opened: crypto.OpenedLease, *, requested_by: str = "auto") -> VaultEntry:
        """Take ownership of an opened lease (its ``writer_secret`` is not copied; the vault wipes it)."""
        with self._lock:
            if opened.fence <= self._fences.get(opened.relay_key, 0):
                crypto.wipe(opened.writer_secret)
                raise StaleLease(f"fence {opened.fence} is not newer than the last seen for this relay")
            self._drop_locked(opened.relay_key, "superseded")
            entry = VaultEntry(
                relay_key=opened.relay_key,
                lease_id=opened.lease_id,
                fence=opened.fence,
                expires_at=float(opened.expires_at),
                writer_public=opened.writer_public,
                writer_secret=opened.writer_secret,
                stored_at=self._clock(),
                requested_by=requested_by,
            )
            self._entries[opened.relay_key] = entry
            self._fences[opened.relay_key] = opened.fence
            self._note(
                opened.relay_key, "active", leaseId=opened.lease_id, fence=opened.fence, expiresAt=opened.expires_at
            )
            return entry

    def _usable(self, entry: VaultEntry) -> bool:
        return self._clock() < entry.expires_at - self._margin

    def get(self, relay_key: str) -> VaultEntry | None:
        """The usable entry for a relay, or None (an expired one is wiped on the way)."""
        with self._lock:
            entry = self._entries.get(relay_key)
            if entry is None:
                return None
            if not self._usable(entry):
                self._drop_locked(relay_key, "expired")
                return None
            return entry

    @contextmanager
    def writer_secret(self, relay_key: str) -> Iterator[memoryview | None]:
        """Borrow the writer secret (read-only view) for one write; None when no usable lease exists.

        The view must not outlive the ``with`` block: a concurrent release wipes the underlying buffer.
        """
        with self._lock:
            entry = self.get(relay_key)
            view = memoryview(entry.writer_secret).toreadonly() if entry else None
        try:
            yield view
        finally:
            if view is not None:
                view.release()

    def update_expiry(self, relay_key: str, lease_id: str, expires_at: float) -> None:
        with self._lock:
            entry = self._entries.get(relay_key)
            if entry is not None and entry.lease_id == lease_id:
                entry.expires_at = expires_at
                entry.term_started_at = self._clock()
                self._note(relay_key, "active", leaseId=lease_id, fence=entry.fence, expiresAt=int(expires_at))

    def drop(self, relay_key: str, reason: str) -> VaultEntry | None:
        with self._lock:
            return self._drop_locked(relay_key, reason)

    def _drop_locked(self, relay_key: str, reason: str) -> VaultEntry | None:
        entry = self._entries.pop(relay_key, None)
        if entry is not None:
            crypto.wipe(entry.writer_secret)
            for callback in self._listeners:
                try:
                    callback(relay_key, entry.lease_id, reason)
                except Exception:  # a listener must not keep a dropped lease alive or break the sweep
                    logger.exception("escrow vault: release listener failed", extra={"relay_key": relay_key})
            self._note(
                relay_key,
                "expired" if reason == "expired" else "released",
                leaseId=entry.lease_id,
                fence=entry.fence,
                reason=reason,
            )
        return entry

    def drop_lease(self, lease_id: str, reason: str) -> VaultEntry | None:
        with self._lock:
            for relay_key, entry in list(self._entries.items()):
                if entry.lease_id == lease_id:
                    return self._drop_locked(relay_key, reason)
        return None

    def sweep(self) -> list[str]:
        """Wipe every entry past its (early) expiry; returns the relay keys dropped."""
        with self._lock:
            expired = [key for key, entry in self._entries.items() if not self._usable(entry)]
            for key in expired:
                self._drop_locked(key, "expired")
            return expired

    def clear(self, reason: str = "shutdown") -> None:
        with self._lock:
            for key in list(self._entries):
                self._drop_locked(key, reason)

    def note_refusal(self, relay_key: str, reasons: list[str]) -> None:
        with self._lock:
            if relay_key not in self._entries:
                self._note(relay_key, "refused", reasons=list(reasons))

    def count(self) -> int:
        with self._lock:
            return len(self._entries)

    def leases(self) -> list[dict[str, Any]]:
        with self._lock:
            return [entry.summary() for entry in self._entries.values() if self._usable(entry)]

    def health(self) -> list[dict[str, Any]]:
        with self._lock:
            return sorted((dict(item) for item in self._health.values()), key=lambda h: -h["updatedAt"])
