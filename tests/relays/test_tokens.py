from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import connection
from django.utils import timezone

from hypertuna.compat import decode_token, encode_token, token_digest
from relays import services, usage
from relays.models import Relay, RelayToken
from tests.conftest import SECRET, hex_key, make_registration, signed, signed_payload

pytestmark = pytest.mark.django_db


@pytest.fixture
def relay_key(api):
    key = hex_key()
    assert api.post("/api/relays", signed(make_registration(key)), format="json").status_code == 200
    return key


def issue(api, relay_key, **extra):
    payload = {"relayKey": relay_key, "relayAuthToken": "auth-1", "pubkey": "f" * 64, **extra}
    return api.post("/api/relay-tokens/issue", signed_payload(payload), format="json")


def test_issue_returns_a_verifiable_token_in_the_worker_format(api, relay_key, settings):
    response = issue(api, relay_key)
    assert response.status_code == 200, response.json()
    body = response.json()
    assert set(body) == {"token", "expiresAt", "refreshAfter", "sequence"}
    assert body["sequence"] == 1
    payload = decode_token(body["token"], SECRET)
    assert set(payload) == {"relayKey", "relayAuthToken", "pubkey", "scope", "expiresAt", "sequence", "issuedAt"}
    assert payload["scope"] == "relay-access" and payload["relayKey"] == relay_key
    assert payload["expiresAt"] - payload["issuedAt"] == settings.HYPERTUNA_TOKEN_TTL * 1000
    assert body["refreshAfter"] == payload["expiresAt"] - settings.HYPERTUNA_TOKEN_REFRESH_WINDOW * 1000
    verified = services.verify_token(body["token"], relay_key)
    assert verified.relay_auth_token == "auth-1" and verified.pubkey == "f" * 64
    # Only the digest is stored.
    row = RelayToken.objects.get()
    assert row.digest == token_digest(body["token"]) and body["token"] not in str(row.__dict__)


def test_many_tokens_per_relay_are_valid_at_once(api, relay_key):
    tokens = [issue(api, relay_key, relayAuthToken=f"user-{i}").json()["token"] for i in range(20)]
    for token in tokens:
        services.verify_token(token, relay_key)
    # Verifying one never invalidates another.
    for token in reversed(tokens):
        services.verify_token(token, relay_key)
    assert [decode_token(t, SECRET)["sequence"] for t in tokens] == list(range(1, 21))


@pytest.mark.django_db(transaction=True)
def test_concurrent_issues_get_distinct_sequences(relay_key):
    if connection.vendor == "sqlite":
        pytest.skip("SQLite serialises writers; the race needs a server database")
    results: list[int] = []
    lock = threading.Lock()

    def worker(i):
        try:
            issued = services.issue_token(relay_key=relay_key, relay_auth_token=f"u{i}")
            with lock:
                results.append(issued.sequence)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == list(range(1, 11))


@pytest.mark.parametrize(
    ("payload_override", "code"),
    [
        ({"relayAuthToken": ""}, "invalid-request"),
        ({"relayAuthToken": None}, "invalid-request"),
        ({"pubkey": "nothex"}, "invalid-pubkey"),
        ({"ttlSeconds": 1}, "invalid-ttl"),
        ({"ttlSeconds": "long"}, "invalid-ttl"),
        ({"scope": ""}, "invalid-scope"),
    ],
)
def test_issue_rejects_bad_claims(api, relay_key, payload_override, code):
    response = issue(api, relay_key, **payload_override)
    assert response.status_code == 400 and response.json()["error"] == code


def test_issue_for_unknown_or_expired_relay(api, relay_key):
    assert issue(api, hex_key()).json()["error"] == "relay-not-registered"
    Relay.objects.filter(relay_key=relay_key).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert issue(api, relay_key).json()["error"] == "relay-not-registered"


def test_token_endpoints_require_a_valid_signature(api, relay_key):
    body = signed_payload({"relayKey": relay_key, "relayAuthToken": "x"}, secret="wrong")
    for path in ("issue", "refresh", "revoke"):
        response = api.post(f"/api/relay-tokens/{path}", body, format="json")
        assert response.status_code == 401 and response.json()["error"] == "invalid-signature"


def test_verify_error_codes_in_order(api, relay_key, settings):
    token = issue(api, relay_key).json()["token"]
    cases = {
        "token-required": (None, relay_key),
        "token-invalid": (token[:-1] + ("0" if token[-1] != "0" else "1"), relay_key),
        "relay-mismatch": (token, hex_key()),
    }
    for code, (candidate, key) in cases.items():
        with pytest.raises(services.TokenRejected) as info:
            services.verify_token(candidate, key)
        assert info.value.code == code
    with pytest.raises(services.TokenRejected) as info:
        services.verify_token(
            token, relay_key, now=timezone.now() + timedelta(seconds=settings.HYPERTUNA_TOKEN_TTL + 1)
        )
    assert info.value.code == "token-expired"


def test_authentic_token_never_issued_here_is_refused(relay_key):
    forged = encode_token(
        {"relayKey": relay_key, "relayAuthToken": "x", "expiresAt": 10**13, "sequence": 99, "issuedAt": 1}, SECRET
    )
    with pytest.raises(services.TokenRejected) as info:
        services.verify_token(forged, relay_key)
    assert info.value.code == "token-mismatch"


def test_refresh_supersedes_the_old_token(api, relay_key):
    token = issue(api, relay_key).json()["token"]
    response = api.post(
        "/api/relay-tokens/refresh", signed_payload({"relayKey": relay_key, "token": token}), format="json"
    )
    assert response.status_code == 200
    fresh = response.json()
    assert fresh["sequence"] == 2 and fresh["token"] != token
    assert services.verify_token(fresh["token"], relay_key).relay_auth_token == "auth-1"
    with pytest.raises(services.TokenRejected) as info:
        services.verify_token(token, relay_key)
    assert info.value.code == "token-stale"
    again = api.post(
        "/api/relay-tokens/refresh", signed_payload({"relayKey": relay_key, "token": token}), format="json"
    )
    assert again.status_code == 400 and again.json()["error"] == "token-stale"
    missing = api.post("/api/relay-tokens/refresh", signed_payload({"relayKey": relay_key}), format="json")
    assert missing.status_code == 400 and missing.json()["error"] == "invalid-request"


def test_revoke_one_token_leaves_the_others(api, relay_key):
    a = issue(api, relay_key, relayAuthToken="a").json()["token"]
    b = issue(api, relay_key, relayAuthToken="b").json()["token"]
    response = api.post(
        "/api/relay-tokens/revoke", signed_payload({"relayKey": relay_key, "token": a, "reason": "lost"}), format="json"
    )
    assert response.status_code == 200
    assert response.json()["status"] == "revoked" and response.json()["revoked"] == 1
    with pytest.raises(services.TokenRejected) as info:
        services.verify_token(a, relay_key)
    assert info.value.code == "token-revoked"
    services.verify_token(b, relay_key)


def test_revoke_by_sequence_cut_off(api, relay_key):
    tokens = [issue(api, relay_key).json()["token"] for _ in range(5)]
    response = api.post(
        "/api/relay-tokens/revoke", signed_payload({"relayKey": relay_key, "sequence": 3}), format="json"
    )
    assert response.json()["sequence"] == 3 and response.json()["revoked"] == 3
    for i, token in enumerate(tokens, start=1):
        if i <= 3:
            with pytest.raises(services.TokenRejected):
                services.verify_token(token, relay_key)
        else:
            services.verify_token(token, relay_key)
    # New tokens after a cut-off are valid.
    services.verify_token(issue(api, relay_key).json()["token"], relay_key)


def test_revoke_all_and_bad_input(api, relay_key):
    tokens = [issue(api, relay_key).json()["token"] for _ in range(3)]
    assert (
        api.post("/api/relay-tokens/revoke", signed_payload({"relayKey": relay_key}), format="json").json()["revoked"]
        == 3
    )
    for token in tokens:
        with pytest.raises(services.TokenRejected):
            services.verify_token(token, relay_key)
    bad_seq = api.post(
        "/api/relay-tokens/revoke", signed_payload({"relayKey": relay_key, "sequence": -1}), format="json"
    )
    assert bad_seq.status_code == 400 and bad_seq.json()["error"] == "invalid-sequence"
    bad_token = api.post(
        "/api/relay-tokens/revoke", signed_payload({"relayKey": relay_key, "token": "x.y"}), format="json"
    )
    assert bad_token.status_code == 400 and bad_token.json()["error"] == "token-invalid"


def test_revocation_survives_the_relay_expiring_and_coming_back(api, relay_key):
    token = issue(api, relay_key).json()["token"]
    api.post("/api/relay-tokens/revoke", signed_payload({"relayKey": relay_key}), format="json")
    services.expire_registrations(now=timezone.now() + timedelta(hours=1))
    assert api.post("/api/relays", signed(make_registration(relay_key)), format="json").status_code == 200
    with pytest.raises(services.TokenRejected) as info:
        services.verify_token(token, relay_key)
    assert info.value.code == "token-revoked"


@pytest.mark.django_db(transaction=True)
def test_revoke_broadcasts_to_live_sockets_after_commit(relay_key):
    issued = services.issue_token(relay_key=relay_key, relay_auth_token="x")
    verified = services.verify_token(issued.token, relay_key)
    usage.connection_opened(verified.token_id)
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(services.relay_group(verified.relay_id), channel)
    result = services.revoke_tokens(relay_key=relay_key, token=issued.token, reason="compromised")
    assert result.disconnected == 1
    message = async_to_sync(layer.receive)(channel)
    assert message == {
        "type": "token.revoked",
        "through_sequence": 0,
        "token_ids": [verified.token_id],
        "reason": "compromised",
    }
    usage.connection_closed(verified.token_id)
    assert usage.live_connections([verified.token_id]) == 0


def test_usage_is_accounted_in_memory_and_flushed_in_batches(relay_key, django_assert_max_num_queries):
    issued = services.issue_token(relay_key=relay_key, relay_auth_token="x")
    token_id = services.verify_token(issued.token, relay_key).token_id
    usage.connection_opened(token_id)
    for _ in range(100):
        usage.record(token_id, frames=1, bytes_in=10, bytes_out=20)
    with django_assert_max_num_queries(4):
        assert usage.flush() == 1
    row = RelayToken.objects.get(pk=token_id)
    assert (row.connections, row.frames, row.bytes_in, row.bytes_out) == (1, 100, 1000, 2000)
    assert row.last_used_at is not None
    assert usage.flush() == 0
