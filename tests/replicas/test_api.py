"""Blind-peer APIs: operator auth (401/403, never 500), malformed input (4xx with a reason), worker
metadata signed with the registration secret, operator actions recorded then sent to the bridge."""

from __future__ import annotations

import secrets
import time

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from hypertuna import reqsign
from replicas import blindpeer, services
from replicas.models import MirrorAction, MirrorCore, Replica
from tests.conftest import signed_payload

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _operator_keys(settings):
    settings.HYPERTUNA_OPERATOR_KEYS = ["ops:operator-secret"]


@pytest.fixture
def api() -> APIClient:
    return APIClient()


def signed_headers(method: str, path: str, body: bytes = b"", query: str = "") -> dict[str, str]:
    return {
        "HTTP_X_HYPERTUNA_SIGNATURE": reqsign.sign(
            method, path, query=query, body=body, kid="ops", secret="operator-secret"
        )
    }


def metadata(relay_key: str, **overrides):
    payload = {
        "relayKey": relay_key,
        "publicIdentifier": "npub1abcdef:myRelay",
        "ownerPeerKey": "ab" * 32,
        "issuedAt": int(time.time() * 1000),
        "cores": [
            {"coreKey": "01" * 32, "type": "autobase-view", "announce": False, "priority": 1, "length": 40},
            {"coreKey": "02" * 32, "type": "autobase-system", "priority": 2},
            {"coreKey": "03" * 32, "type": "writer"},
        ],
    }
    payload.update(overrides)
    return payload


OPERATOR_ENDPOINTS = [
    ("get", "/api/blind-peer/replicas"),
    ("post", "/api/blind-peer/gc"),
    ("delete", f"/api/blind-peer/mirrors/{'01' * 32}"),
]


@pytest.mark.parametrize(("method", "path"), OPERATOR_ENDPOINTS)
def test_operator_endpoints_refuse_anonymous_callers(api, method, path):
    response = getattr(api, method)(path)
    assert response.status_code == 401
    assert response.json()["error"]


@pytest.mark.parametrize(("method", "path"), OPERATOR_ENDPOINTS)
def test_operator_endpoints_refuse_non_staff_users(api, method, path):
    api.force_login(User.objects.create_user("someone", password="x"))
    response = getattr(api, method)(path)
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden"


@pytest.mark.parametrize(("method", "path"), OPERATOR_ENDPOINTS)
def test_operator_endpoints_refuse_bad_signatures(api, method, path):
    header = reqsign.sign(method.upper(), path, body=b"", kid="ops", secret="wrong-secret")
    response = getattr(api, method)(path, HTTP_X_HYPERTUNA_SIGNATURE=header)
    assert response.status_code == 401


@pytest.fixture
def bridge_status(monkeypatch):
    from replicas import blindpeer

    calls = []

    async def fake():
        calls.append(1)
        return {"enabled": True, "publicKey": "aa" * 32, "encryptionKey": "bb" * 32, "maxBytes": 1_000_000}

    monkeypatch.setattr(blindpeer, "_public_from_bridge", fake)
    return calls


def test_blind_peer_keys_are_public_and_operator_detail_is_not(api, bridge_status):
    response = api.get("/api/blind-peer")
    assert response.status_code == 200
    body = response.json()
    public = {"enabled": True, "publicKey": "aa" * 32, "encryptionKey": "bb" * 32, "maxBytes": 1_000_000}
    # hyperpipe-core reads summary.publicKey / encryptionKey / maxBytes or summary.config.maxBytes.
    assert body == {**public, "summary": {**public, "config": {"maxBytes": 1_000_000}}}
    api.force_login(User.objects.create_user("someone", password="x"))
    assert "mirrors" not in api.get("/api/blind-peer").json(), "a non-staff session sees the public part only"
    assert len(bridge_status) == 1, "the bridge is asked once, then the answer is cached"
    signed = api.get("/api/blind-peer", **signed_headers("GET", "/api/blind-peer"))
    assert signed.status_code == 200 and signed.json()["publicKey"] == "aa" * 32 and "mirrors" in signed.json()
    bad = reqsign.sign("GET", "/api/blind-peer", body=b"", kid="ops", secret="wrong-secret")
    assert api.get("/api/blind-peer", HTTP_X_HYPERTUNA_SIGNATURE=bad).status_code == 401


def test_blind_peer_public_summary_says_disabled_without_a_bridge(api, settings, tmp_path):
    settings.HYPERTUNA_BRIDGE_SOCKET = str(tmp_path / "no-bridge.sock")
    body = api.get("/api/blind-peer").json()
    assert body["enabled"] is False and body["publicKey"] is None and body["summary"]["enabled"] is False
    # Not shared: on several nodes the replica node publishes its blind peer under this key for all of them.
    from django.core.cache import cache

    from replicas.blindpeer import PUBLIC_CACHE_KEY

    assert cache.get(PUBLIC_CACHE_KEY) is None


def test_summary_and_replicas_with_a_signed_request(api, bridge_status):
    relay_key = secrets.token_hex(32)
    services.record_worker_metadata(payload=(p := metadata(relay_key)), signature=signed_payload(p)["signature"])
    response = api.get("/api/blind-peer", **signed_headers("GET", "/api/blind-peer"))
    assert response.status_code == 200
    body = response.json()
    assert body["mirrors"]["total"] == 3 and body["replicas"]["total"] == 1
    response = api.get(
        "/api/blind-peer/replicas",
        {"cores": "true"},
        **signed_headers("GET", "/api/blind-peer/replicas", query="cores=true"),
    )
    assert response.status_code == 200
    [replica] = response.json()["replicas"]
    assert replica["relayKey"] == relay_key and replica["remoteLength"] == 40 and replica["lagEntries"] == 40
    assert {c["type"] for c in replica["cores"]} == {"autobase-view", "autobase-system", "writer"}


def test_replicas_query_is_validated(admin_client):
    response = admin_client.get("/api/blind-peer/replicas", {"limit": "lots"})
    assert response.status_code == 400 and response.json()["error"] == "invalid-request"


def test_gc_is_recorded_then_sent_to_the_bridge(
    admin_client, monkeypatch, django_capture_on_commit_callbacks, settings
):
    settings.CELERY_TASK_ALWAYS_EAGER = True
    calls = []

    async def fake_gc(*, reason):
        calls.append(reason)
        return {"status": "ok", "totalEvictions": 2}

    monkeypatch.setattr(blindpeer, "run_gc", fake_gc)
    from hypertuna.celery import app

    app.conf.task_always_eager = True
    try:
        with django_capture_on_commit_callbacks(execute=True):
            response = admin_client.post("/api/blind-peer/gc", {"reason": "disk"}, content_type="application/json")
    finally:
        app.conf.task_always_eager = False
    assert response.status_code == 202
    action = MirrorAction.objects.get(pk=response.json()["id"])
    assert calls == ["disk"]
    assert action.status == "done" and action.result["totalEvictions"] == 2
    assert action.requested_by == "user:admin"


def test_drop_unknown_mirror_is_404_and_bad_key_is_400(admin_client):
    assert admin_client.delete(f"/api/blind-peer/mirrors/{'ef' * 32}").status_code == 404
    response = admin_client.delete("/api/blind-peer/mirrors/not-a-key")
    assert response.status_code == 400 and response.json()["error"] == "invalid-core-key"


def test_drop_marks_removing_and_bridge_answer_completes_it(
    admin_client, monkeypatch, django_capture_on_commit_callbacks
):
    relay_key = secrets.token_hex(32)
    services.record_worker_metadata(payload=(p := metadata(relay_key)), signature=signed_payload(p)["signature"])
    sent = []
    monkeypatch.setattr("replicas.tasks.perform_mirror_action.delay", lambda action_id: sent.append(action_id))
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.delete(f"/api/blind-peer/mirrors/{'02' * 32}?reason=evict")
    assert response.status_code == 202 and sent == [response.json()["id"]]
    assert MirrorCore.objects.get(core_key="02" * 32).state == "removing"
    services.complete_mirror_action(action_id=sent[0], ok=False, error="bridge down")
    assert MirrorCore.objects.get(core_key="02" * 32).state == "active"


def test_worker_metadata_creates_mirrors_and_the_replica(api):
    relay_key = secrets.token_hex(32)
    response = api.post("/api/blind-peer/metadata", signed_payload(metadata(relay_key)), format="json")
    assert response.status_code == 200, response.json()
    assert response.json()["cores"] == ["01" * 32, "02" * 32, "03" * 32]
    replica = Replica.objects.get(relay_key=relay_key)
    assert replica.view_core_key == "01" * 32 and replica.public_identifier == "npub1abcdef:myRelay"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"payload": {"relayKey": "x"}, "signature": "00"}, 401, "invalid-signature"),
        ({"payload": "nope", "signature": "00"}, 400, "invalid-request"),
        ({"signature": "00"}, 400, "invalid-request"),
        ("not json at all", 400, None),
    ],
)
def test_worker_metadata_refuses_unsigned_or_malformed_bodies(api, body, status, code):
    if isinstance(body, str):
        response = api.generic("POST", "/api/blind-peer/metadata", body, content_type="application/json")
    else:
        response = api.post("/api/blind-peer/metadata", body, format="json")
    assert response.status_code == status
    assert response.json()["error"] == (code or response.json()["error"])
    assert response.json()["message"]


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"relayKey": "not a relay"}, "invalid-relay-key"),
        ({"ownerPeerKey": 5}, "invalid-owner"),
        ({"issuedAt": 1}, "metadata-stale"),
        ({"cores": []}, "invalid-cores"),
        ({"cores": [{"coreKey": "zz", "type": "writer"}]}, "invalid-core-key"),
        ({"cores": [{"coreKey": "01" * 32, "type": "teapot"}]}, "invalid-core-type"),
        ({"cores": [{"coreKey": "01" * 32, "type": "writer", "priority": "high"}]}, "invalid-field"),
        ({"cores": [{"coreKey": "01" * 32, "type": "writer", "announce": "yes"}]}, "invalid-field"),
    ],
)
def test_worker_metadata_reports_why_a_signed_payload_is_refused(api, overrides, code):
    response = api.post(
        "/api/blind-peer/metadata", signed_payload(metadata(secrets.token_hex(32), **overrides)), format="json"
    )
    assert 400 <= response.status_code < 500
    assert response.json()["error"] == code


def test_a_core_of_another_relay_and_owner_cannot_be_claimed(api):
    first, second = secrets.token_hex(32), secrets.token_hex(32)
    assert api.post("/api/blind-peer/metadata", signed_payload(metadata(first)), format="json").status_code == 200
    claim = metadata(second, ownerPeerKey="cd" * 32)
    response = api.post("/api/blind-peer/metadata", signed_payload(claim), format="json")
    assert response.status_code == 409 and response.json()["error"] == "core-owned-elsewhere"
    assert MirrorCore.objects.get(core_key="01" * 32).relay_key == first


def test_z32_core_keys_are_stored_as_hex(api):
    from replicas.services import normalize_core_key

    # hypercore-id-encoding (z-base-32) of 32 bytes 0x00..0x1f
    raw = bytes(range(32))
    alphabet = "ybndrfg8ejkmcpqxot1uwisza345h769"
    bits = "".join(f"{b:08b}" for b in raw) + "0" * 4
    z32 = "".join(alphabet[int(bits[i : i + 5], 2)] for i in range(0, len(bits), 5))
    assert normalize_core_key(z32) == raw.hex()
    services.record_mirror_added(data={"coreKey": z32, "type": "autobase-view"})
    assert MirrorCore.objects.filter(core_key=raw.hex()).exists()


def test_bridge_events_are_dispatched_and_bad_ones_ignored():
    from replicas.events import handle_bridge_event

    relay_key = secrets.token_hex(32)
    assert handle_bridge_event(
        "mirror.added",
        {
            "coreKey": "0a" * 32,
            "relayKey": relay_key,
            "type": "autobase-view",
            "ownerPeerKey": "ab" * 32,
            "announce": True,
            "priority": 1,
        },
    )
    assert handle_bridge_event(
        "mirror.progress",
        {
            "coreKey": "0a" * 32,
            "length": 9,
            "contiguousLength": 9,
            "remoteLength": 12,
            "updatedAt": int(time.time() * 1000),
        },
    )
    core = MirrorCore.objects.get(core_key="0a" * 32)
    assert core.mirrored_length == 9 and core.remote_length == 12 and core.behind_since is not None
    assert Replica.objects.get(relay_key=relay_key).remote_length == 12
    assert not handle_bridge_event("mirror.progress", {"coreKey": "nope"})
    assert not handle_bridge_event("mirror.unknown", {})
    assert handle_bridge_event("mirror.removed", {"coreKey": "0a" * 32, "reason": "gc"})
    assert MirrorCore.objects.get(core_key="0a" * 32).state == "removed"


def test_mirror_action_task_records_the_bridge_answer_or_the_final_failure(monkeypatch):
    from hypertuna.bridge import BridgeUnavailable
    from replicas import tasks

    relay_key = secrets.token_hex(32)
    services.record_worker_metadata(payload=(p := metadata(relay_key)), signature=signed_payload(p)["signature"])
    monkeypatch.setattr("replicas.tasks.perform_mirror_action.delay", lambda action_id: None)

    async def deleted(*, core_key, reason):
        return {"deleted": True}

    monkeypatch.setattr(blindpeer, "delete_core", deleted)
    ok = services.request_drop(core_key="03" * 32, reason="r")
    assert tasks.perform_mirror_action.run(ok.pk) == "done"
    assert tasks.perform_mirror_action.run(ok.pk) == "skipped"  # idempotent: never performed twice
    assert MirrorCore.objects.get(core_key="03" * 32).state == "removed"

    async def down(*, core_key, reason):
        raise BridgeUnavailable("no bridge")

    monkeypatch.setattr(blindpeer, "delete_core", down)
    monkeypatch.setattr(tasks.perform_mirror_action, "max_retries", 0)
    failing = services.request_drop(core_key="02" * 32, reason="r")
    assert tasks.perform_mirror_action.run(failing.pk) == "failed"
    failing.refresh_from_db()
    assert failing.status == "failed" and "no bridge" in failing.error
    assert MirrorCore.objects.get(core_key="02" * 32).state == "active"
