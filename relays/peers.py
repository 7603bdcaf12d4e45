"""Worker peer health observations (bridge events and probes)."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from django.utils import timezone

from relays import selectors
from relays.models import Peer
from relays.registration import refresh_relay_cache

logger = logging.getLogger(__name__)


def record_peer_health(
    *, peer_key: str, healthy: bool, latency_ms: float | None = None, now: datetime | None = None
) -> bool:
    """Record a health observation of a worker peer for every relay it serves.

    Returns True when the peer's reachability changed (and the relays' cached snapshots were refreshed,
    so new connections stop or start choosing it).
    """
    now = now or timezone.now()
    peers = Peer.objects.filter(peer_key=peer_key)
    if healthy:
        changed = peers.filter(unreachable_since__isnull=False).update(unreachable_since=None) > 0
        update: dict[str, Any] = {"last_healthy_at": now}
        if latency_ms is not None:
            update["latency_ms"] = latency_ms
        peers.update(**update)
    else:
        changed = peers.filter(unreachable_since__isnull=True).update(unreachable_since=now) > 0
    if changed:
        for relay_key in selectors.relays_served_by(peer_key):
            refresh_relay_cache(relay_key)
        logger.info("peer reachability changed", extra={"peer": peer_key[:16], "healthy": healthy})
    return changed
