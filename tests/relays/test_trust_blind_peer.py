"""Blind-peer trust decided from signed registrations (relays.blind_trust), pushed to a fake bridge."""

from __future__ import annotations

import secrets
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.utils import timezone

from hypertuna.bridge import BridgeEvent
from relays import bridge_events, services
from relays.blind_trust import relay_scopes
from relays.models import Peer, Registration, Relay
from replicas.models import MirrorCore
from tests.conftest import SECRET, hex_key, make_registration, signed
from tests.relays.test_bridge_events import FakeClient

pytestmark = pytest.mark.django_db

Z32 = "ybndrfg8ejkmcpqxot1uwisza345h769"


def z32(hex_value: str) -> str:
    """z-base-32 encoding (the hypercore-id form real workers send)."""
    bits = int(hex_value, 16)
    total = len(hex_value) * 4
    pad = (5 - total % 5) % 5
    bits <<= pad
    chars = (total + pad) // 5
    return "".join(Z32[(bits >> (5 * (chars - 1 - i))) & 31] for i in range(chars))


@pytest.fixture
def enqueued(monkeypatch):
    calls: list[tuple[str, bool]] = []
    monkeypatch.setattr(
        "relays.registration._enqueue_trust",
        lambda relay_key, *, withdraw=False: calls.append((relay_key, withdraw)),
    )
    return calls


def register(api, registration, secret=SECRET):
    return api.post("/api/relays", signed(registration, secret), format="json")


def scope(relay_key):
    (found,) = [s for s in relay_scopes([relay_key]) if s["relayKey"] == relay_key]
    return found


def test_a_signed_registration_trusts_its_blind_peering_key_for_its_relay_only(api, enqueued):
    relay, swarm, blind = hex_key(), hex_key(), hex_key()
    reg = make_registration(relay, peers=[swarm], metadata={"name": "r", "blindPeeringPublicKey": z32(blind)})
    assert register(api, reg).status_code == 200
    assert enqueued == [(relay, False)], "trust is pushed once the registration commits"
    assert Registration.objects.get(relay__relay_key=relay).blind_peering_key == blind
    s = scope(relay)
    assert s["peerKeys"] == sorted([swarm, blind])
    assert s["keys"] == [relay]


def test_hex_and_top_level_keys_are_accepted_and_a_bad_key_is_refused(api, enqueued):
    relay, blind = hex_key(), hex_key()
    assert register(api, make_registration(relay, blindPeeringPublicKey=blind.upper())).status_code == 200
    assert blind in scope(relay)["peerKeys"]
    response = register(api, make_registration(hex_key(), metadata={"blindPeeringPublicKey": "not-a-key"}))
    assert response.status_code == 400
    assert response.json()["error"] == "invalid-blind-peering-key"


def test_unsigned_replayed_or_stale_registrations_grant_nothing(api, enqueued):
    relay, blind = hex_key(), hex_key()
    forged = make_registration(relay, metadata={"blindPeeringPublicKey": blind})
    assert register(api, forged, secret="not-the-secret").status_code == 401
    stale = make_registration(relay, metadata={"blindPeeringPublicKey": blind})
    stale["issuedAt"] -= 3_600_000
    assert register(api, stale).status_code == 401
    assert scope(relay)["peerKeys"] == [], "no live relay, no trust"
    first = make_registration(relay)
    assert register(api, first).status_code == 200
    replay = {**first, "metadata": {"blindPeeringPublicKey": blind}}
    assert register(api, replay).status_code == 409, "same nonce: replayed"
    assert blind not in scope(relay)["peerKeys"]
    assert enqueued == [(relay, False)]


def test_a_registration_for_b_announcing_a_key_of_a_gets_only_b_scope(api, enqueued):
    relay_a, relay_b, blind_a = hex_key(), hex_key(), hex_key()
    core_a = hex_key()
    reg_a = make_registration(
        relay_a,
        metadata={"blindPeeringPublicKey": blind_a},
        relayCores=[{"key": z32(core_a), "role": "autobase-view"}],
    )
    assert register(api, reg_a).status_code == 200
    reg_b = make_registration(relay_b, metadata={"blindPeeringPublicKey": blind_a})
    assert register(api, reg_b).status_code == 200
    a, b = scope(relay_a), scope(relay_b)
    assert blind_a in a["peerKeys"] and blind_a in b["peerKeys"]
    assert set(a["keys"]) == {relay_a, core_a}
    assert b["keys"] == [relay_b], "B's scope holds none of A's keys: the bridge refuses A's cores for it"


def test_trust_lapses_with_the_registration_and_goes_on_unregister_and_expiry(api, enqueued, settings):
    relay, blind, later = hex_key(), hex_key(), hex_key()
    assert register(api, make_registration(relay, metadata={"blindPeeringPublicKey": blind})).status_code == 200
    # Another worker keeps the relay alive; the first one's registration lapses after the TTL.
    Registration.objects.filter(relay__relay_key=relay).update(
        received_at=timezone.now() - timedelta(seconds=settings.HYPERTUNA_REGISTRATION_TTL + 5)
    )
    assert register(api, make_registration(relay, metadata={"blindPeeringPublicKey": later})).status_code == 200
    peers = scope(relay)["peerKeys"]
    assert later in peers and blind not in peers
    enqueued.clear()
    from hypertuna.compat import hmac_hex

    response = api.delete(f"/api/relays/{relay}", HTTP_X_SIGNATURE=hmac_hex(SECRET, {"relayKey": relay}))
    assert response.status_code == 200
    assert enqueued == [(relay, True)]
    assert scope(relay)["peerKeys"] == []
    # A re-registration after the unregister does not revive trust announced before it.
    assert register(api, make_registration(relay)).status_code == 200
    assert later not in scope(relay)["peerKeys"]

    other = hex_key()
    assert register(api, make_registration(other, metadata={"blindPeeringPublicKey": blind})).status_code == 200
    enqueued.clear()
    Relay.objects.filter(relay_key=other).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert services.expire_registrations() >= 1
    assert (other, True) in enqueued
    assert scope(other)["peerKeys"] == []


def test_startup_race_swarm_registration_first_then_http_registration_brings_trust(api, enqueued):
    relay, swarm, blind = hex_key(), hex_key(), hex_key()
    client = FakeClient()
    body = {"publicKey": swarm, "relays": [{"identifier": relay}], "blindPeeringPublicKey": z32(blind)}
    event = BridgeEvent("peer.register", {"registerId": "early", "peerKey": swarm, "body": body})
    async_to_sync(bridge_events.handle)(client, event)
    assert client.replies[0][1] == 403
    assert client.trust_pushes == [] and "blindPeerTrust" not in client.reply_params[0]
    # The signed HTTP registration lands afterwards: trust follows without the worker re-registering.
    reg = make_registration(relay, peers=[swarm], metadata={"blindPeeringPublicKey": z32(blind)})
    assert register(api, reg).status_code == 200
    assert enqueued == [(relay, False)]
    assert scope(relay)["peerKeys"] == sorted([swarm, blind])


def test_an_acknowledged_swarm_registration_pushes_trust_before_answering(api, enqueued):
    relay, swarm, swarm_blind = hex_key(), hex_key(), hex_key()
    assert register(api, make_registration(relay, peers=[swarm])).status_code == 200
    client = FakeClient()
    body = {"publicKey": swarm, "metadata": {"blindPeeringPublicKey": z32(swarm_blind)}}
    async_to_sync(bridge_events.handle)(
        client, BridgeEvent("peer.register", {"registerId": "r", "peerKey": swarm, "body": body})
    )
    assert client.replies[0][1] == 200
    (push,) = client.trust_pushes
    assert push["replaceAll"] is False
    assert push["relays"] == [{"relayKey": relay, "peerKeys": sorted([swarm, swarm_blind]), "keys": [relay]}]
    assert client.reply_params[0]["blindPeerTrust"] == [{"relayKey": relay, "keys": [relay]}]
    assert Peer.objects.get(peer_key=swarm).blind_peering_key == swarm_blind


def test_an_unlisted_peer_announcing_a_key_changes_nothing(api, enqueued):
    relay, swarm, stranger = hex_key(), hex_key(), hex_key()
    assert register(api, make_registration(relay, peers=[swarm])).status_code == 200
    client = FakeClient()
    body = {"publicKey": stranger, "blindPeeringPublicKey": secrets.token_hex(32)}
    async_to_sync(bridge_events.handle)(
        client, BridgeEvent("peer.register", {"registerId": "x", "peerKey": stranger, "body": body})
    )
    assert client.replies[0][1] == 403 and client.trust_pushes == []
    assert scope(relay)["peerKeys"] == [swarm]


def test_reconcile_replaces_the_whole_table_and_follows_mirror_attribution(api, enqueued):
    relay, other, blind = hex_key(), hex_key(), hex_key()
    assert register(api, make_registration(relay, metadata={"blindPeeringPublicKey": blind})).status_code == 200
    assert register(api, make_registration(other)).status_code == 200
    MirrorCore.objects.create(core_key="0d" * 32, relay_key=relay)
    MirrorCore.objects.create(core_key="0e" * 32, relay_key=relay, state=MirrorCore.State.REMOVED)
    client = FakeClient()
    async_to_sync(bridge_events.handle)(client, BridgeEvent("bridge.reconnected", {}))
    (push,) = client.trust_pushes
    assert push["replaceAll"] is True
    by_relay = {s["relayKey"]: s for s in push["relays"]}
    assert set(by_relay) == {relay, other}
    assert by_relay[relay]["keys"] == sorted([relay, "0d" * 32]), "removed mirrors are not the relay's keys"
    assert blind in by_relay[relay]["peerKeys"]


def test_npub_relays_trust_only_their_declared_cores(api, enqueued):
    relay = "npub1yg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3q2pw2gm:named"
    autobase, local = hex_key(), hex_key()
    reg = make_registration(
        relay,
        metadata={"blindPeeringPublicKey": hex_key()},
        relayCores=[{"key": z32(autobase), "role": "autobase"}, {"key": local, "role": "autobase-local"}],
    )
    assert register(api, reg).status_code == 200
    assert scope(relay)["keys"] == sorted([autobase, local])
