"""Several gateway nodes share Postgres and Redis, each with its own bridge: a worker is healthy while any
node's bridge reaches it, and only the replica node's bridge runs the blind peer every worker mirrors into
(its summary is published for the other nodes' answers)."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.core.cache import cache

from hypertuna.bridge import BridgeEvent
from hypertuna.compat import hmac_hex
from relays import bridge_events, services
from relays.models import Peer
from replicas.blindpeer import PUBLIC_CACHE_KEY
from tests.conftest import SECRET, hex_key, make_registration

pytestmark = pytest.mark.django_db(transaction=True)
PEER = "d" * 64
NODE_A, NODE_B = "a" * 64, "b" * 64
BLIND = {"enabled": True, "publicKey": "e" * 64, "encryptionKey": "f" * 64, "maxBytes": 10**9}


@pytest.fixture(autouse=True)
def clean_cache():
    cache.clear()
    yield
    cache.clear()


class NodeBridge:
    """One node's bridge as the event consumer sees it: its swarm key, and a blind peer or none."""

    def __init__(self, node: str, blind_peer: dict | None) -> None:
        self.server_info = {"gatewayPublicKey": node}
        self.blind_peer = blind_peer
        self.trust_pushes: list[dict] = []
        self.replies: list[dict] = []

    async def call(self, method, params=None, *, timeout_s=None):
        if method == "blindPeer.status":
            return self.blind_peer or {"enabled": False}
        if method == "blindPeer.trustRelays":
            assert self.blind_peer, "a bridge without a blind peer refuses trust"
            self.trust_pushes.append(params)
            return {"relays": len(params["relays"])}
        assert method == "register.reply"
        self.replies.append(params)
        return {"delivered": True}


def register(relay_key: str) -> None:
    reg = make_registration(relay_key, peers=[PEER])
    services.register_relay(registration=reg, signature=hmac_hex(SECRET, reg))


def unreachable() -> bool:
    return Peer.objects.get(peer_key=PEER).unreachable_since is not None


def test_a_peer_stays_healthy_while_another_node_reaches_it():
    register(hex_key())
    assert services.record_peer_health(peer_key=PEER, healthy=True, node=NODE_A) is False
    services.record_peer_health(peer_key=PEER, healthy=True, node=NODE_B)
    # Node B's bridge lost it; node A's still reaches it: healthy for every node.
    assert services.record_peer_health(peer_key=PEER, healthy=False, node=NODE_B) is False
    assert not unreachable()
    # The last node that reached it loses it too: unreachable.
    assert services.record_peer_health(peer_key=PEER, healthy=False, node=NODE_A) is True
    assert unreachable()
    # Either node reaching it again makes it healthy.
    assert services.record_peer_health(peer_key=PEER, healthy=True, node=NODE_B) is True
    assert not unreachable()


def test_one_node_alone_still_marks_its_peer_unreachable():
    register(hex_key())
    services.record_peer_health(peer_key=PEER, healthy=True, node=NODE_A)
    assert services.record_peer_health(peer_key=PEER, healthy=False, node=NODE_A) is True
    assert unreachable()


def test_bridge_facts_are_recorded_per_node():
    register(hex_key())
    node_a, node_b = NodeBridge(NODE_A, BLIND), NodeBridge(NODE_B, None)
    async_to_sync(bridge_events.handle)(node_a, BridgeEvent("peer.connected", {"peerKey": PEER}))
    async_to_sync(bridge_events.handle)(node_b, BridgeEvent("peer.connected", {"peerKey": PEER}))
    closed = BridgeEvent("peer.disconnected", {"peerKey": PEER, "reason": "error"})
    async_to_sync(bridge_events.handle)(node_b, closed)
    assert not unreachable()
    async_to_sync(bridge_events.handle)(node_a, closed)
    assert unreachable()


async def test_the_replica_node_publishes_its_blind_peer_and_the_others_answer_with_it():
    relay = hex_key()
    await sync_to_async(register)(relay)
    replica_node, other = NodeBridge(NODE_A, BLIND), NodeBridge(NODE_B, None)
    # Before the replica node published anything, a node without a blind peer offers none.
    assert await bridge_events.blind_peer_summary(other) == {"enabled": False}
    assert await bridge_events.reconcile_trust(other) == {}
    assert other.trust_pushes == [] and await cache.aget(PUBLIC_CACHE_KEY) is None

    await bridge_events.reconcile_trust(replica_node)
    assert replica_node.trust_pushes[0]["replaceAll"] is True
    assert await cache.aget(PUBLIC_CACHE_KEY) == BLIND
    assert await bridge_events.blind_peer_summary(other) == BLIND

    # A worker's swarm registration on the other node is told the replica node's blind peer; no trust is
    # pushed to a bridge that has no blind peer.
    await bridge_events.handle(other, BridgeEvent("peer.register", {"registerId": "r", "peerKey": PEER}))
    (reply,) = other.replies
    assert reply["statusCode"] == 200 and reply["body"]["blindPeer"] == BLIND
    assert other.trust_pushes == [] and "blindPeerTrust" not in reply
