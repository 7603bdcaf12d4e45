from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from hypertuna.compat import hmac_hex
from relays import selectors, services, tasks
from relays.models import HostPolicy, HostRule, Peer, Registration, Relay
from tests.conftest import SECRET, hex_key, make_registration, signed

pytestmark = pytest.mark.django_db


def register(api, registration, secret=SECRET):
    return api.post("/api/relays", signed(registration, secret), format="json")


def test_valid_registration_stores_relay_peers_and_ttl(api, settings):
    key = hex_key()
    reg = make_registration(
        key,
        metadata={
            "name": "Demo",
            "gatewayPath": "npub1zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygse4sl3h/demo",
            "ownerPubkey": "11" * 32,
            "requiresAuth": False,
        },
    )
    response = register(api, reg)
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["status"] == "ok" and body["hyperbee"] is None and body["relayKey"] == key
    relay = Relay.objects.get(relay_key=key)
    assert (
        relay.name == "Demo"
        and relay.gateway_path == "npub1zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygse4sl3h/demo"
        and not relay.requires_auth
    )
    assert relay.expires_at > timezone.now() + timedelta(seconds=settings.HYPERTUNA_REGISTRATION_TTL - 5)
    assert list(relay.peers.values_list("peer_key", flat=True)) == reg["peers"]
    assert Registration.objects.get(relay=relay).payload == reg
    assert selectors.live_relay(key).peers == tuple(reg["peers"])


def test_public_identifier_relay_keys_are_accepted(api):
    reg = make_registration("npub1yg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3q2pw2gm:relay-name", metadata={})
    assert register(api, reg).status_code == 200
    relay = Relay.objects.get(relay_key="npub1yg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3q2pw2gm:relay-name")
    assert relay.public_identifier == "npub1yg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3q2pw2gm:relay-name"
    assert relay.gateway_path == "npub1yg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3q2pw2gm/relay-name"
    assert (
        selectors.resolve_path("/npub1yg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3q2pw2gm/relay-name")
        == relay.relay_key
    )


def test_tampered_registration_is_rejected(api):
    reg = make_registration(hex_key())
    body = signed(reg)
    body["registration"]["peers"] = [hex_key()]
    response = api.post("/api/relays", body, format="json")
    assert response.status_code == 401
    assert response.json()["error"] == "invalid-signature"
    assert not Relay.objects.exists()


def test_wrong_secret_is_rejected(api):
    response = register(api, make_registration(hex_key()), secret="not-the-secret")
    assert response.status_code == 401 and response.json()["error"] == "invalid-signature"


def test_replayed_nonce_is_rejected_with_its_own_code(api):
    reg = make_registration(hex_key())
    assert register(api, reg).status_code == 200
    replay = register(api, reg)
    assert replay.status_code == 409 and replay.json()["error"] == "registration-replayed"
    assert Registration.objects.count() == 1


def test_replay_is_caught_by_the_database_when_the_cache_forgot(api):
    from django.core.cache import cache

    reg = make_registration(hex_key())
    assert register(api, reg).status_code == 200
    cache.clear()
    replay = register(api, reg)
    assert replay.status_code == 409 and replay.json()["error"] == "registration-replayed"


@pytest.mark.parametrize("skew_s", [-301, 301, -3600])
def test_stale_or_future_issued_at_is_rejected(api, skew_s):
    reg = make_registration(hex_key(), issuedAt=int((time.time() + skew_s) * 1000))
    response = register(api, reg)
    assert response.status_code == 401 and response.json()["error"] == "registration-stale"


def test_issued_at_inside_window_is_accepted(api):
    assert register(api, make_registration(hex_key(), issuedAt=int((time.time() - 250) * 1000))).status_code == 200


@pytest.mark.parametrize(
    ("override", "code"),
    [
        ({"relayKey": "not-a-key"}, "invalid-relay-key"),
        ({"relayKey": None}, "invalid-relay-key"),
        ({"issuedAt": "yesterday"}, "invalid-issued-at"),
        ({"issuedAt": True}, "invalid-issued-at"),
        ({"nonce": "x"}, "invalid-nonce"),
        ({"nonce": 12345678}, "invalid-nonce"),
        ({"peers": ["zz"]}, "invalid-peers"),
        ({"peers": "abc"}, "invalid-peers"),
        ({"metadata": []}, "invalid-metadata"),
    ],
)
def test_malformed_fields_get_distinct_codes(api, override, code):
    reg = make_registration(hex_key(), **override)
    response = register(api, reg)
    assert response.status_code == 400 and response.json()["error"] == code


@pytest.mark.parametrize(
    "body",
    [{}, {"registration": {}}, {"signature": "ab"}, {"registration": "x", "signature": "ab"}, ["x"]],
)
def test_malformed_bodies_are_4xx_not_500(api, body):
    response = api.post("/api/relays", body, format="json")
    assert response.status_code in (400, 401)
    assert "error" in response.json()


def test_non_json_body_is_400(api):
    response = api.post("/api/relays", "{not json", content_type="application/json")
    assert response.status_code == 400 and response.json()["error"] == "invalid-json"


def test_registration_disabled_without_secret(api, settings):
    settings.HYPERTUNA_REGISTRATION_SECRET = None
    response = register(api, make_registration(hex_key()))
    assert response.status_code == 503 and response.json()["error"] == "registration-disabled"


def test_re_registration_refreshes_ttl_and_merges_peers_of_independent_workers(api, settings):
    key = hex_key()
    first = make_registration(key)
    assert register(api, first).status_code == 200
    Relay.objects.filter(relay_key=key).update(expires_at=timezone.now() + timedelta(seconds=5))
    second = make_registration(key, peers=[hex_key(), hex_key()])
    assert register(api, second).status_code == 200
    relay = Relay.objects.get(relay_key=key)
    assert relay.expires_at > timezone.now() + timedelta(seconds=250)
    everyone = set(first["peers"]) | set(second["peers"])
    assert set(Peer.objects.filter(relay=relay, active=True).values_list("peer_key", flat=True)) == everyone
    assert set(selectors.live_relay(key).peers) == everyone
    # A peer nobody lists again within the TTL drops out at the next registration.
    Peer.objects.filter(peer_key=first["peers"][0]).update(
        last_seen_at=timezone.now() - timedelta(seconds=settings.HYPERTUNA_REGISTRATION_TTL + 1)
    )
    assert register(api, make_registration(key, peers=second["peers"])).status_code == 200
    assert not Peer.objects.get(relay=relay, peer_key=first["peers"][0]).active
    assert set(selectors.live_relay(key).peers) == set(second["peers"])


def test_ttl_expiry_by_the_beat_task(api):
    key = hex_key()
    assert register(api, make_registration(key)).status_code == 200
    assert selectors.live_relay(key) is not None
    Relay.objects.filter(relay_key=key).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert tasks.expire_registrations.apply().get() == 1
    relay = Relay.objects.get(relay_key=key)
    assert relay.status == Relay.Status.EXPIRED
    assert selectors.live_relay(key) is None
    assert tasks.expire_registrations.apply().get() == 0
    # A later registration brings it back.
    assert register(api, make_registration(key)).status_code == 200
    assert selectors.live_relay(key) is not None


def test_cached_snapshot_is_not_served_past_expiry(api):
    key = hex_key()
    assert register(api, make_registration(key)).status_code == 200
    assert selectors.live_relay(key) is not None
    # Even before the sweep runs, a snapshot whose TTL passed is not live.
    assert selectors.live_relay(key) is not None
    services.expire_registrations(now=timezone.now() + timedelta(hours=1))
    assert selectors.live_relay(key) is None


@pytest.mark.parametrize("max_age", [0, 1])
def test_a_snapshot_is_read_again_after_its_max_age(api, settings, max_age):
    """Another process marks a peer unreachable in the database without reaching this process's cache (the
    embedded default's cache is per process): with a max age the snapshot drops the peer once that age has
    passed; without one (a shared cache, refreshed by whoever changes it) the cached snapshot stands."""
    settings.HYPERTUNA_RELAY_SNAPSHOT_MAX_AGE = max_age
    key = hex_key()
    registration = make_registration(key)
    assert register(api, registration).status_code == 200
    gone = registration["peers"][0]
    assert gone in selectors.live_relay(key).peers
    Peer.objects.filter(relay__relay_key=key, peer_key=gone).update(unreachable_since=timezone.now())
    assert gone in selectors.live_relay(key).peers  # cached
    time.sleep(1.2)
    assert (gone in selectors.live_relay(key).peers) is (max_age == 0)


def test_unregister_with_header_signature(api):
    key = hex_key()
    assert register(api, make_registration(key)).status_code == 200
    bad = api.delete(f"/api/relays/{key}", HTTP_X_SIGNATURE=hmac_hex(SECRET, {"relayKey": hex_key()}))
    assert bad.status_code == 401 and bad.json()["error"] == "invalid-signature"
    missing = api.delete(f"/api/relays/{key}")
    assert missing.status_code == 401 and missing.json()["error"] == "missing-signature"
    ok = api.delete(f"/api/relays/{key}", HTTP_X_SIGNATURE=hmac_hex(SECRET, {"relayKey": key}))
    assert ok.status_code == 200 and ok.json() == {"status": "ok"}
    assert Relay.objects.get(relay_key=key).status == Relay.Status.UNREGISTERED
    assert selectors.live_relay(key) is None


def test_unregister_public_identifier_with_encoded_colon(api):
    key = "npub1xvenxvenxvenxvenxvenxvenxvenxvenxvenxvenxvenxvenxves35z8z4:name"
    assert register(api, make_registration(key)).status_code == 200
    ok = api.delete(
        "/api/relays/npub1xvenxvenxvenxvenxvenxvenxvenxvenxvenxvenxvenxvenxves35z8z4%3Aname",
        HTTP_X_SIGNATURE=hmac_hex(SECRET, {"relayKey": key}),
    )
    assert ok.status_code == 200
    assert selectors.live_relay(key) is None


def test_resync_complete_clears_pending_marks(api):
    key = hex_key()
    reg = make_registration(key, metadata={"gatewayPendingWrites": True, "gatewayPendingSince": 1, "name": "x"})
    assert register(api, reg).status_code == 200
    sig = hmac_hex(SECRET, {"action": "resync-complete", "relayKey": key})
    assert api.post(f"/api/relays/{key}/resync-complete", HTTP_X_SIGNATURE="00" * 32).status_code == 401
    response = api.post(
        f"/api/relays/{key}/resync-complete",
        {"action": "resync-complete", "relayKey": key},
        format="json",
        HTTP_X_SIGNATURE=sig,
    )
    assert response.status_code == 200
    assert Relay.objects.get(relay_key=key).metadata == {"name": "x"}
    other = hex_key()
    unknown = api.post(
        f"/api/relays/{other}/resync-complete",
        HTTP_X_SIGNATURE=hmac_hex(SECRET, {"action": "resync-complete", "relayKey": other}),
    )
    assert unknown.status_code == 404 and unknown.json()["error"] == "relay-not-registered"


def test_host_policy_allowlist_and_blocklist(api):
    owner = hex_key()
    HostPolicy.objects.update_or_create(pk=1, defaults={"mode": HostPolicy.Mode.ALLOWLIST})
    reg = make_registration(hex_key(), ownerPeerKey=owner)
    refused = register(api, reg)
    assert refused.status_code == 403 and refused.json()["error"] == "host-not-allowed"
    HostRule.objects.create(identity=owner, action=HostRule.Action.ALLOW)
    assert register(api, make_registration(hex_key(), ownerPeerKey=owner)).status_code == 200
    HostPolicy.objects.filter(pk=1).update(mode=HostPolicy.Mode.BLOCKLIST)
    blocked_owner = hex_key()
    HostRule.objects.create(identity=blocked_owner, action=HostRule.Action.BLOCK)
    blocked = register(api, make_registration(hex_key(), metadata={"owner": {"peerKey": blocked_owner}}))
    assert blocked.status_code == 403
    assert register(api, make_registration(hex_key())).status_code == 200


def test_rate_limit_per_client_ip(api, settings):
    settings.HYPERTUNA_RATELIMIT_IP_PER_MINUTE = 3
    codes = [register(api, make_registration(hex_key())).status_code for _ in range(5)]
    assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429]


@pytest.mark.django_db(transaction=True)
def test_concurrent_registrations_of_one_relay_leave_one_row():
    if connection.vendor == "sqlite":
        pytest.skip("SQLite serialises writers; the race needs a server database")
    key = hex_key()
    errors: list[Exception] = []

    def worker():
        try:
            reg = make_registration(key)
            services.register_relay(registration=reg, signature=hmac_hex(SECRET, reg))
        except Exception as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert Relay.objects.filter(relay_key=key).count() == 1
    assert Registration.objects.filter(relay__relay_key=key).count() == 8


def test_hex_relay_is_reachable_by_its_public_path(api):
    key = hex_key()
    reg = make_registration(
        key,
        metadata={
            "identifier": "npub1g3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zqysvy7t:demo",
            "gatewayPath": "npub1g3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zqysvy7t/demo",
        },
    )
    assert register(api, reg).status_code == 200
    assert selectors.resolve_path("/npub1g3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zqysvy7t/demo") == key
    assert selectors.resolve_path("npub1g3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zqysvy7t:demo") == key
    assert selectors.resolve_path(f"/{key}/") == key
    assert selectors.resolve_path("/npub1242424242424242424242424242424242424242424242424242sl9qf59/demo") is None
