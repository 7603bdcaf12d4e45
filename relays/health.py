"""Process-wide tracker of worker peer health, shared by every session of a web process.

Sessions report each success and failure; the tracker writes to the database only when a peer's
reachability flips, or to refresh ``last_healthy_at``/latency at most once a minute per peer, so a busy
relay costs no database write per frame. Observations are this node's (its bridge's swarm key names it):
a session failing on a worker another node still reaches does not mark it down for that node
(``relays.peers``).
"""

from __future__ import annotations

import time

from asgiref.sync import sync_to_async
from prometheus_client import Histogram

from relays import services

REFRESH_SECONDS = 60.0

peer_request_duration = Histogram(
    "gateway_peer_request_duration_seconds",
    "Time for a worker peer to answer a forwarded request",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


def this_node() -> str:
    """This node's name: the swarm key of the bridge its sessions use ("" before the bridge answered)."""
    from relays.bridge import get_bridge

    return str(get_bridge().server_info.get("gatewayPublicKey") or "")


class PeerHealthTracker:
    def __init__(self) -> None:
        self._state: dict[str, tuple[bool, float]] = {}

    async def peer_failed(self, peer_key: str, reason: str) -> None:
        previous = self._state.get(peer_key)
        self._state[peer_key] = (False, time.monotonic())
        if previous is None or previous[0]:
            await sync_to_async(services.record_peer_health)(peer_key=peer_key, healthy=False, node=this_node())

    async def peer_ok(self, peer_key: str, latency_ms: float) -> None:
        peer_request_duration.observe(latency_ms / 1000)
        previous = self._state.get(peer_key)
        now = time.monotonic()
        if previous is not None and previous[0] and now - previous[1] < REFRESH_SECONDS:
            return
        self._state[peer_key] = (True, now)
        await sync_to_async(services.record_peer_health)(
            peer_key=peer_key, healthy=True, latency_ms=latency_ms, node=this_node()
        )


tracker = PeerHealthTracker()
