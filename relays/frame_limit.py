"""The per-frame rate limit of relay sockets, counted in process memory and shared between nodes in batches.

A fixed window per identity (a token, or the client address on an open relay), like ``hypertuna.ratelimit``,
but with no I/O on the frame path: ``hit`` only touches this process's counters. ``sync`` (every
``SYNC_SECONDS`` from the runtime's loop, in a worker thread) adds what each identity spent here since the
last sync to the window's shared count (``hypertuna.ratelimit.add_to_window``, the same keys) and reads back
the total of every node (identities with no new hits here are read back too). A decision is that total plus
what this process counted since, so one token's budget holds across its sockets at once and across nodes
within one sync. Before an identity's first frame of a window on this node, ``prime`` reads its shared total
(one cache read per identity and minute). The budget can be overrun by what the other nodes let through in
the last ``SYNC_SECONDS``, never more. When the cache is unreachable, each process keeps limiting on its own
count and hands the backlog over at the next sync that succeeds.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from django.core.cache import cache

from hypertuna.ratelimit import RateDecision, add_to_window, window_key, window_start

logger = logging.getLogger(__name__)

SCOPE = "ws-frames"
WINDOW_SECONDS = 60
SYNC_SECONDS = 1.0


@dataclass
class _Window:
    start: int
    shared: int = 0  # the window's total in the shared cache at the last sync (every node's hits)
    pending: int = 0  # hits counted here and not yet added to the shared total


class FrameLimiter:
    def __init__(self, *, scope: str = SCOPE, window: int = WINDOW_SECONDS) -> None:
        self.scope = scope
        self.window = window
        self._windows: dict[str, _Window] = {}
        self._lock = threading.Lock()

    def reset(self) -> None:
        """Forget every count of this process (the shared totals stay in the cache)."""
        with self._lock:
            self._windows.clear()

    def key(self, identity: str, start: int) -> str:
        return window_key(self.scope, identity, start)

    def known(self, identity: str, *, now: float | None = None) -> bool:
        """Whether this process counts ``identity`` in the current window already (else ``prime`` it first)."""
        entry = self._windows.get(identity)
        return entry is not None and entry.start == self._start(now)

    def prime(self, identity: str, *, now: float | None = None) -> None:
        """Start counting ``identity`` here from the window's shared total (one cache read per identity and
        window, before its first frame on this node): frames another node already let through count at once,
        not only after this node's next sync. An unreachable cache starts the count at zero."""
        start = self._start(now)
        try:
            total = cache.get(self.key(identity, start))
        except Exception as exc:
            logger.debug("frame limit read failed", extra={"error": str(exc)})
            total = None
        with self._lock:
            entry = self._entry(identity, start)
            if isinstance(total, int):
                entry.shared = max(entry.shared, total)

    def _entry(self, identity: str, start: int) -> _Window:
        """``identity``'s count for the window starting at ``start`` (a new one past the window); under the lock."""
        entry = self._windows.get(identity)
        if entry is None or entry.start != start:
            entry = self._windows[identity] = _Window(start)
        return entry

    def _start(self, now: float | None) -> int:
        return window_start(int(time.time() if now is None else now), self.window)

    def hit(self, identity: str, limit: int, *, now: float | None = None) -> RateDecision:
        """Count one frame of ``identity`` and say whether it is within ``limit`` per window (0: no limit)."""
        if limit <= 0:
            return RateDecision(True, 0)
        moment = int(time.time() if now is None else now)
        start = window_start(moment, self.window)
        with self._lock:
            entry = self._entry(identity, start)
            entry.pending += 1
            count = entry.shared + entry.pending
        if count <= limit:
            return RateDecision(True, 0)
        return RateDecision(False, start + self.window - moment)

    def sync(self, *, now: float | None = None) -> int:
        """Add this process's new hits to the shared totals and read them back; returns how many identities
        were written. Windows that ended are forgotten (their keys expire in the cache on their own)."""
        current = self._start(now)
        with self._lock:
            for identity in [i for i, w in self._windows.items() if w.start < current]:
                del self._windows[identity]
            due = [(identity, w.start, w.pending) for identity, w in self._windows.items() if w.pending]
            quiet = {self.key(identity, w.start): identity for identity, w in self._windows.items() if not w.pending}
        if quiet:
            # Identities with no new hits here still learn what the other nodes spent (one round trip).
            try:
                totals = cache.get_many(list(quiet))
            except Exception as exc:
                logger.debug("frame limit sync failed", extra={"error": str(exc)})
                return 0
            with self._lock:
                for key, total in totals.items():
                    entry = self._windows.get(quiet[key])
                    if entry is not None and entry.start == current and isinstance(total, int):
                        entry.shared = max(entry.shared, total)
        written = 0
        for identity, start, spent in due:
            key = self.key(identity, start)
            try:
                total = add_to_window(key, spent, self.window)
            except Exception as exc:  # cache down: keep the backlog and limit on the local count meanwhile
                logger.debug("frame limit sync failed", extra={"error": str(exc)})
                break
            with self._lock:
                entry = self._windows.get(identity)
                if entry is not None and entry.start == start:
                    entry.pending -= spent  # hits counted while the cache answered stay pending
                    entry.shared = total
            written += 1
        return written


limiter = FrameLimiter()
