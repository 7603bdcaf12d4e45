"""Signed operator APIs on the gateway: /api/escrow/leases/query, /request and /release."""

from __future__ import annotations

import json
import threading
import time

import pytest
from django.db import connections
from rest_framework.test import APIClient

from escrow import coordinator as coordinator_module
from escrow import crypto, leases, selectors
from escrow.coordinator import EscrowCoordinator
from escrow.transport import EscrowHTTPError
from hypertuna import reqsign
from hypertuna.exceptions import ApiError
from tests.escrow.conftest import WorkerSim

pytestmark = pytest.mark.django_db(transaction=True)


class InProcessEscrow:
    """The escrow services behind the coordinator's client interface (same database, no TLS)."""

    def request(self, method, path, body=None):
        try:
            return self._answer(path, body)
        finally:
            # The coordinator calls from worker threads of an event loop's executor: like a remote escrow,
            # keep no database session open in them (the test database could not be dropped at the end).
            if threading.current_thread() is not threading.main_thread():
                connections.close_all()

    def _answer(self, path, body):
        try:
            if path == "/policy":
                return selectors.policy_document()
            if path == "/escrow/unlock":
                return leases.unlock(request=leases.parse_unlock(body), requester="gateway:gw-test")
            if path == "/escrow/revoke":
                return leases.revoke_lease_by_id(
                    lease_id=body["leaseId"], actor="gateway:gw-test", reason=body["reason"]
                )
            if path == "/escrow/renew":
                return leases.renew(lease_id=body["leaseId"], requester="gateway:gw-test", ttl=body.get("ttl"))
        except ApiError as exc:
            raise EscrowHTTPError(exc.status_code, exc.as_dict()) from None
        raise AssertionError(path)


@pytest.fixture(autouse=True)
def operator_keys(settings):
    settings.HYPERTUNA_OPERATOR_KEYS = ["ops:operator-secret-0123456789"]


@pytest.fixture
def coordinator():
    mirror = {"announcedAt": int(time.time()) - 3, "announcedLength": 1, "mirroredLength": 1}
    instance = EscrowCoordinator(InProcessEscrow(), mirror_evidence=lambda key: mirror)
    previous = coordinator_module.set_coordinator(instance)
    yield instance
    coordinator_module.set_coordinator(previous)


def signed_post(path: str, body: dict | None = None):
    raw = json.dumps(body or {}).encode()
    header = reqsign.sign("POST", path, body=raw, kid="ops", secret="operator-secret-0123456789")
    return APIClient().post(path, raw, content_type="application/json", HTTP_X_HYPERTUNA_SIGNATURE=header)


@pytest.fixture
def deposited(clock):
    worker = WorkerSim(clock)
    worker.deposit()
    return worker


def test_operator_apis_require_authentication(coordinator):
    client = APIClient()
    for path in ("/api/escrow/leases/query", f"/api/escrow/leases/{'ab' * 32}/request"):
        response = client.post(path, {}, format="json")
        assert response.status_code in (401, 403)
    forged = reqsign.sign("POST", "/api/escrow/leases/query", body=b"{}", kid="ops", secret="wrong")
    response = client.post(
        "/api/escrow/leases/query", b"{}", content_type="application/json", HTTP_X_HYPERTUNA_SIGNATURE=forged
    )
    assert response.status_code == 401


def test_manual_request_refused_lists_the_reasons(coordinator, deposited):
    response = signed_post(f"/api/escrow/leases/{deposited.relay_key}/request")
    assert response.status_code == 412
    assert response.json()["reasons"] == ["worker-heartbeat-recent"]


def test_manual_request_grant_query_and_release(coordinator, deposited, escrow_settings):
    escrow_settings.HYPERTUNA_ESCROW_HEARTBEAT_SILENCE = 0
    response = signed_post(f"/api/escrow/leases/{deposited.relay_key}/request", {"healthyPeers": 0})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "granted" and body["lease"]["fence"] == 1
    assert deposited.writer.secret.hex() not in response.content.decode()

    query = signed_post("/api/escrow/leases/query").json()
    assert query["escrowConfigured"] is True
    assert [lease["relayKey"] for lease in query["leases"]] == [deposited.relay_key]
    assert query["leases"][0]["requestedBy"] == "operator:ops"
    assert deposited.writer.secret.hex() not in json.dumps(query)

    released = signed_post(f"/api/escrow/leases/{deposited.relay_key}/release").json()
    assert released == {"relayKey": deposited.relay_key, "released": True}
    assert signed_post("/api/escrow/leases/query").json()["leases"] == []


def test_manual_request_rejects_bad_input(coordinator):
    assert signed_post("/api/escrow/leases/not-a-key/request").status_code == 400
    assert signed_post(f"/api/escrow/leases/{'ab' * 32}/request", {"healthyPeers": -1}).status_code == 400


def test_unconfigured_escrow_answers_503(settings):
    previous = coordinator_module.set_coordinator(EscrowCoordinator(None))
    try:
        response = signed_post(f"/api/escrow/leases/{'ab' * 32}/request")
        assert response.status_code == 503 and response.json()["status"] == "disabled"
    finally:
        coordinator_module.set_coordinator(previous)


def test_session_keys_are_fresh_per_request(coordinator, deposited, escrow_settings, monkeypatch):
    escrow_settings.HYPERTUNA_ESCROW_HEARTBEAT_SILENCE = 0
    seen = []
    original = crypto.generate_session_keypair

    def spy():
        pair = original()
        seen.append(pair.public)
        return pair

    monkeypatch.setattr(crypto, "generate_session_keypair", spy)
    signed_post(f"/api/escrow/leases/{deposited.relay_key}/request")
    signed_post(f"/api/escrow/leases/{deposited.relay_key}/release")
    signed_post(f"/api/escrow/leases/{deposited.relay_key}/request")
    assert len(seen) == 2 and seen[0] != seen[1]
