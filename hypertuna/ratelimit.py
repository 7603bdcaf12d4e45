"""Fixed-window rate limits on the shared cache (Redis in production), so every gateway node counts
against the same budget. A limit of 0 disables the check."""

from __future__ import annotations

import time
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    retry_after: int


# Window keys this process created lately (bounded; forgetting one costs one extra ``add``).
CREATED_MEMO = 10_000
_created: set[str] = set()


def window_start(moment: int, window: int) -> int:
    """The start of the fixed window of ``window`` seconds that holds ``moment``."""
    return moment - moment % window


def window_key(scope: str, identity: str, start: int) -> str:
    """The shared cache key counting ``identity`` in ``scope`` for the window starting at ``start``."""
    return f"rl:{scope}:{identity}:{start}"


def add_to_window(key: str, amount: int, window: int) -> int:
    """Add ``amount`` to a window's count in the shared cache (every node adds to the same key); the new total.

    add() is SET NX on Redis: only the first hit of a window creates the key, so incr() never races a concurrent
    reset. The key outlives the window slightly and then expires on its own. This process remembers the windows
    it created, so later hits are one round trip (incr) instead of two."""
    if key not in _created:
        if len(_created) >= CREATED_MEMO:
            _created.clear()
        cache.add(key, 0, timeout=window + 5)
        _created.add(key)
    try:
        return int(cache.incr(key, amount))
    except ValueError:  # expired between add() and incr(): these hits start a fresh window
        cache.add(key, amount, timeout=window + 5)
        return amount


def hit(scope: str, identity: str, *, limit: int, window: int = 60) -> RateDecision:
    """Count one hit of ``identity`` in ``scope`` and say whether it is within ``limit`` per ``window`` s."""
    if limit <= 0:
        return RateDecision(True, 0)
    now = int(time.time())
    start = window_start(now, window)
    count = add_to_window(window_key(scope, identity, start), 1, window)
    return RateDecision(count <= limit, 0 if count <= limit else start + window - now)


def client_ip(request: HttpRequest) -> str:
    """The client address: the configured proxy header's first entry when one is trusted, else the peer."""
    header = settings.HYPERTUNA_TRUSTED_PROXY_HEADER
    if header:
        value = request.headers.get(header, "")
        first = value.split(",")[0].strip()
        if first:
            return first
    return str(request.META.get("REMOTE_ADDR") or "unknown")
