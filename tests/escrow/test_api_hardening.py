"""Hostile bodies sent by an authenticated escrow client answer JSON 4xx, never a 500 or an HTML page.

The client certificate is what the mTLS listener would put in the scope (tested in ``test_mtls``); here it
is handed to the authentication directly so the bodies reach the views."""

from __future__ import annotations

import base64
import json

import pytest
from django.test import Client

from escrow import pki
from escrow.api import auth
from tests.conftest import hex_key

pytestmark = [pytest.mark.urls("escrow.service_urls"), pytest.mark.django_db]

DEEP = "[" * 5000 + "]" * 5000
ALMOST = '{"relayKey":' + "[" * 900 + "]" * 900 + "}"
ENDPOINTS = {
    "/escrow": "worker",
    "/escrow/heartbeat": "worker",
    "/escrow/revoke": "worker",
    "/escrow/unlock": "gateway",
    "/escrow/renew": "gateway",
}


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    directory = tmp_path_factory.mktemp("escrow-pki")
    ca = pki.create_ca(directory)
    return {
        role: pki.issue(ca, directory, stem=role, common_name=f"{role}-1", role=role).cert.read_text()
        for role in ("worker", "gateway")
    }


@pytest.fixture
def as_role(monkeypatch, certificates):
    current = {"role": "gateway"}
    monkeypatch.setattr(auth, "peer_certificate", lambda request: certificates[current["role"]])

    def use(role: str) -> Client:
        current["role"] = role
        return Client(raise_request_exception=False)

    return use


def _json_error(response, status: int, code: str) -> None:
    assert response.status_code == status, response.content[:300]
    assert response["content-type"].startswith("application/json"), response.content[:300]
    assert response.json()["error"] == code


@pytest.mark.parametrize("url", sorted(ENDPOINTS))
@pytest.mark.parametrize("body", [DEEP, ALMOST], ids=["recursion", "under-recursion-limit"])
def test_deeply_nested_json_is_invalid_json(as_role, url, body):
    response = as_role(ENDPOINTS[url]).post(url, body, content_type="application/json")
    _json_error(response, 400, "invalid-json")


@pytest.mark.parametrize("url", sorted(ENDPOINTS))
def test_oversized_body_answers_json_413(as_role, url, settings):
    body = json.dumps({"pad": "x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1)})
    response = as_role(ENDPOINTS[url]).post(url, body, content_type="application/json")
    _json_error(response, 413, "body-too-large")


@pytest.mark.parametrize("fresh", [10**20, 1e300, 253402300800, -1, "1e400 as text"])
def test_unlock_with_out_of_range_mirror_fresh_at_is_400(as_role, fresh):
    body = {
        "relayKey": hex_key(),
        "sessionPublicKey": base64.b64encode(bytes(32)).decode(),
        "evidence": {"healthyPeers": 0, "mirrorFreshAt": fresh},
    }
    response = as_role("gateway").post("/escrow/unlock", body, content_type="application/json")
    _json_error(response, 400, "invalid-request")


def test_relay_status_with_a_nul_byte_is_400(as_role, django_assert_num_queries):
    with django_assert_num_queries(0):
        response = as_role("gateway").get("/escrow/relays/%00")
    _json_error(response, 400, "invalid-relay-key")
