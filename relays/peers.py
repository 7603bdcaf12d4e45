"""Worker peer health observations (bridge events and probes).

With several gateway nodes each bridge observes the workers on its own. A peer is **healthy while any
node's bridge reaches it**: a bridge's ``peer.health`` ok or ``peer.connected`` leaves a mark in the shared
cache for ``REACH_SECONDS`` (refreshed by its health probes), and one node's "unreachable" does not mark
the peer down for every node while another node's mark is there. The last node that loses it marks it.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any

from django.core.cache import cache
from django.utils import timezone

from relays import selectors
from relays.models import Peer
from relays.registration import refresh_relay_cache

logger = logging.getLogger(__name__)

#: How long one node's sight of a peer keeps it healthy for every node: three default bridge health
#: intervals (30 s), so a node still connected refreshes its mark well before it lapses.
REACH_SECONDS = 90
NODES_KEY = "peer-reach:nodes"


def _reach_key(peer_key: str, node: str) -> str:
    return f"peer-reach:{peer_key}:{node}"


def _note_reach(peer_key: str, node: str, reached: bool) -> None:
    if not reached:
        cache.delete(_reach_key(peer_key, node))
        return
    cache.set(_reach_key(peer_key, node), time.time(), timeout=REACH_SECONDS)
    nodes = cache.get(NODES_KEY) or []
    if node not in nodes:
        cache.set(NODES_KEY, sorted({*nodes, node}), timeout=None)


def reached_elsewhere(peer_key: str, node: str) -> bool:
    """Whether a gateway node other than ``node`` reached ``peer_key`` within ``REACH_SECONDS``."""
    others = [other for other in cache.get(NODES_KEY) or [] if other != node]
    return bool(others) and any(cache.get_many([_reach_key(peer_key, other) for other in others]).values())


def record_peer_health(
    *, peer_key: str, healthy: bool, latency_ms: float | None = None, now: datetime | None = None, node: str = ""
) -> bool:
    """Record a health observation of a worker peer for every relay it serves.

    ``node`` names the gateway node whose bridge observed it (its swarm key): a node's "unreachable" is
    then not recorded while another node reaches the peer. Returns True when the peer's reachability
    changed (and the relays' cached snapshots were refreshed, so new connections stop or start choosing it).
    """
    now = now or timezone.now()
    if node:
        try:
            _note_reach(peer_key, node, healthy)
            if not healthy and reached_elsewhere(peer_key, node):
                logger.info("peer unreachable from this node only", extra={"peer": peer_key[:16]})
                return False
        except Exception as exc:  # the shared cache is away: judge from this node alone
            logger.warning("peer reach marks unavailable", extra={"error": str(exc)})
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
