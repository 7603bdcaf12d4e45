"""NIP-11: a relay's URL answers ``Accept: application/nostr+json`` with its information document, from the
last registration while a worker is live and while a replica keeps a lapsed relay readable; with CORS, no
token, and the URL's plain behaviour (404) kept for every other request."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from hypertuna.compat import hmac_hex
from hypertuna.compat.relaykeys import hex_to_npub
from relays import nip11, services
from relays.models import Relay
from tests.conftest import SECRET, hex_key, make_registration
from tests.replicas.helpers import ensure_replica

pytestmark = pytest.mark.django_db
NOSTR = {"HTTP_ACCEPT": "application/nostr+json"}
OWNER = "7e7e9c42a91bfef19fa929e5fda1b72e0ebc1a4c1141673e2794234d86addf4e"


def register(relay_key: str, peers: list[str] | None = None, **metadata) -> None:
    reg = make_registration(
        relay_key,
        peers=["1" * 64] if peers is None else peers,
        metadata={"name": "Test relay", "requiresAuth": True, **metadata},
    )
    services.register_relay(registration=reg, signature=hmac_hex(SECRET, reg))
    services.refresh_relay_cache(relay_key)


def lapse(relay_key: str) -> None:
    Relay.objects.filter(relay_key=relay_key).update(expires_at=timezone.now() - timedelta(seconds=1))
    services.expire_registrations()


def test_live_relay_document_from_its_registration(settings):
    settings.HYPERTUNA_MAX_FRAME_BYTES = 65536
    key = hex_key()
    register(key, description="Friends only", ownerPubkey=OWNER, contact="mailto:ops@example.org")
    response = Client().get(f"/{key}", **NOSTR)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/nostr+json")
    assert response["Access-Control-Allow-Origin"] == "*"
    assert "GET" in response["Access-Control-Allow-Methods"]
    assert "Accept" in response["Access-Control-Allow-Headers"]
    assert response.json() == {
        "name": "Test relay",
        "description": "Friends only",
        "pubkey": OWNER,
        "contact": "mailto:ops@example.org",
        "supported_nips": [1, 11],
        "software": "hypertuna-gateway",
        "version": nip11.gateway_version(),
        "limitation": {
            "max_message_length": 65536,
            "max_subscriptions": 64,
            "max_subid_length": 64,
            "max_filters": 20,
            "max_limit": 5000,
            "auth_required": True,
            "payment_required": False,
            "restricted_writes": True,
        },
    }
    assert nip11.gateway_version()


def test_every_path_form_and_ndk_slashes_without_a_token():
    npub = hex_to_npub(OWNER)
    register(f"{npub}:demo", requiresAuth=False, pathAliases=["demo-relay"])
    client = Client()
    for path in (f"/{npub}/demo", f"/{npub}/demo/", f"/{npub}:demo", "/demo-relay/?token=abc.def/"):
        response = client.get(path, **NOSTR)
        assert response.status_code == 200, path
        document = response.json()
        assert document["pubkey"] == OWNER, path
        assert document["limitation"]["auth_required"] is False
        assert document["limitation"]["restricted_writes"] is False


def test_accept_lists_and_parameters_are_understood():
    key = hex_key()
    register(key)
    response = Client().get(f"/{key}", HTTP_ACCEPT="text/html;q=0.9, Application/Nostr+JSON;q=1")
    assert response.status_code == 200 and response.json()["name"] == "Test relay"


def test_without_the_accept_header_the_url_is_unchanged():
    key = hex_key()
    register(key)
    client = Client()
    for accept in ({}, {"HTTP_ACCEPT": "*/*"}, {"HTTP_ACCEPT": "application/json"}):
        response = client.get(f"/{key}", **accept)
        assert response.status_code == 404
        assert "Access-Control-Allow-Origin" not in response
    # Not turned into a redirect to "/<key>/" by the catch-all route either.
    assert client.get(f"/{key}").status_code == 404
    assert client.post(f"/{key}", **NOSTR).status_code == 404
    # Routes that add a slash still do.
    assert client.get("/admin").status_code == 301


def test_unknown_and_unregistered_relays_answer_json_404():
    client = Client()
    unknown = client.get(f"/{hex_key()}/", **NOSTR)
    assert unknown.status_code == 404 and unknown.json()["error"] == "relay-not-registered"
    assert unknown["Access-Control-Allow-Origin"] == "*"
    for path in ("/not/a/relay", "/x//y", "/../etc/passwd", "/%2e%2e/x", "/x%2F%2Fy"):
        garbage = client.get(path, **NOSTR)
        assert garbage.status_code == 404 and garbage.json()["error"] == "relay-not-found", path


def test_offline_relay_is_described_from_its_replica(settings):
    settings.HYPERTUNA_REPLICA_MAX_LIMIT = 300
    mirrored, gone = hex_key(), hex_key()
    register(mirrored, ownerPubkey=OWNER)
    register(gone)
    ensure_replica(mirrored, "c" * 64)
    lapse(mirrored)
    lapse(gone)
    client = Client()
    response = client.get(f"/{mirrored}", **NOSTR)
    assert response.status_code == 200
    document = response.json()
    assert document["name"] == "Test relay" and document["pubkey"] == OWNER
    assert document["limitation"]["max_limit"] == 300
    assert document["limitation"]["restricted_writes"] is True
    assert client.get(f"/{gone}", **NOSTR).json()["error"] == "relay-not-registered"


def test_peerless_open_relay_is_served_from_its_replica_and_says_writes_are_restricted():
    key = hex_key()
    register(key, peers=[], requiresAuth=False)
    ensure_replica(key, "c" * 64)
    limitation = Client().get(f"/{key}", **NOSTR).json()["limitation"]
    assert limitation["auth_required"] is False and limitation["restricted_writes"] is True


def test_preflight_answers_cors():
    key = hex_key()
    register(key)
    response = Client().options(
        f"/{key}", HTTP_ORIGIN="https://client.example", HTTP_ACCESS_CONTROL_REQUEST_METHOD="GET"
    )
    assert response.status_code == 204
    assert response["Access-Control-Allow-Origin"] == "*"
    assert "OPTIONS" in response["Access-Control-Allow-Methods"]
    assert Client().options("/not/a/relay").status_code == 404


def test_rate_limited_per_address(settings):
    settings.HYPERTUNA_RATELIMIT_IP_PER_MINUTE = 2
    key = hex_key()
    register(key)
    client = Client()
    assert [client.get(f"/{key}", **NOSTR).status_code for _ in range(3)] == [200, 200, 429]
    limited = client.get(f"/{key}", **NOSTR)
    assert limited.json()["error"] == "rate-limited" and int(limited["Retry-After"]) >= 0
