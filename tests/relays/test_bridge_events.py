from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async

from hypertuna.bridge import BridgeEvent
from hypertuna.compat import hmac_hex
from relays import bridge_events, selectors, services
from relays.models import Peer
from tests.conftest import SECRET, hex_key, make_registration

pytestmark = pytest.mark.django_db(transaction=True)
PEER = "b" * 64


class FakeClient:
    def __init__(self, blind_peer=None):
        self.replies = []
        self.reply_params = []
        self.trust_pushes = []
        self.blind_peer = blind_peer

    async def call(self, method, params=None, *, timeout_s=None):
        if method == "register.reply":
            self.replies.append((params["registerId"], params["statusCode"], params.get("body")))
            self.reply_params.append(params)
            return {"delivered": True}
        if method == "blindPeer.trustRelays":
            self.trust_pushes.append(params)
            return {"relays": len(params["relays"])}
        assert method == "blindPeer.status"
        if self.blind_peer is None:
            from hypertuna.bridge import BridgeError

            raise BridgeError("unknown-method", "no blind peer")
        return self.blind_peer


def register(relay_key):
    reg = make_registration(relay_key, peers=[PEER])
    services.register_relay(registration=reg, signature=hmac_hex(SECRET, reg))
    services.refresh_relay_cache(relay_key)


async def test_unauthenticated_swarm_registration_never_adds_a_peer():
    client = FakeClient()
    await bridge_events.handle(
        client, BridgeEvent("peer.register", {"registerId": "r1", "peerKey": "c" * 64, "body": {"relays": [hex_key()]}})
    )
    assert client.replies[0][1] == 403 and client.replies[0][2]["error"] == "http-registration-required"
    assert not await sync_to_async(Peer.objects.exists)()


async def test_swarm_registration_of_a_known_peer_is_acknowledged():
    key = hex_key()
    await sync_to_async(register)(key)
    client = FakeClient()
    await bridge_events.handle(client, BridgeEvent("peer.register", {"registerId": "r2", "peerKey": PEER}))
    assert client.replies == [
        ("r2", 200, {"status": "ok", "relays": [key], "hyperbee": None, "blindPeer": {"enabled": False}})
    ]


async def test_disconnect_marks_unreachable_and_connect_restores():
    key = hex_key()
    await sync_to_async(register)(key)
    client = FakeClient()
    await bridge_events.handle(client, BridgeEvent("peer.disconnected", {"peerKey": PEER, "reason": "stream-close"}))
    assert (await sync_to_async(selectors.live_relay)(key)).peers == ()
    await bridge_events.handle(client, BridgeEvent("peer.disconnected", {"peerKey": PEER, "reason": "manual-destroy"}))
    await bridge_events.handle(client, BridgeEvent("peer.connected", {"peerKey": PEER}))
    assert (await sync_to_async(selectors.live_relay)(key)).peers == (PEER,)
    await bridge_events.handle(client, BridgeEvent("peer.health", {"peerKey": PEER, "ok": False}))
    assert (await sync_to_async(selectors.live_relay)(key)).peers == ()
    await bridge_events.handle(client, BridgeEvent("peer.health", {"peerKey": PEER, "ok": True, "latencyMs": 12.5}))
    peer = await sync_to_async(Peer.objects.get)(peer_key=PEER)
    assert peer.unreachable_since is None and peer.latency_ms == 12.5 and peer.last_healthy_at is not None


async def test_mirror_events_reach_the_replicas_app():
    from replicas.models import MirrorCore

    core = "e" * 64
    key = hex_key()
    await bridge_events.handle(
        FakeClient(),
        BridgeEvent(
            "mirror.added",
            {
                "coreKey": core,
                "relayKey": key,
                "type": "autobase-view",
                "announce": False,
                "priority": 1,
            },
        ),
    )
    assert await sync_to_async(MirrorCore.objects.filter(core_key=core).exists)()
    await bridge_events.handle(FakeClient(), BridgeEvent("mirror.added", {"coreKey": "not-a-key"}))  # no raise
