from __future__ import annotations

import time

import pytest
from rest_framework.response import Response
from rest_framework.test import APIRequestFactory, force_authenticate
from rest_framework.views import APIView

from hypertuna import reqsign
from hypertuna.operator_auth import OPERATOR_AUTHENTICATION, IsOperator

pytestmark = pytest.mark.django_db


class Probe(APIView):
    authentication_classes = OPERATOR_AUTHENTICATION
    permission_classes = [IsOperator]

    def post(self, request):
        return Response({"kid": request.auth.kid if request.auth else None})


@pytest.fixture(autouse=True)
def _keys(settings):
    settings.HYPERTUNA_OPERATOR_KEYS = ["ops:first-secret", "ops:rotated-secret", "other:x"]


def call(body=b'{"a":1}', path="/api/probe", query="", header=None, **sign_kwargs):
    factory = APIRequestFactory()
    if header is None:
        header = reqsign.sign("POST", path, query=query, body=body, kid="ops", secret="first-secret", **sign_kwargs)
    url = path + (f"?{query}" if query else "")
    request = factory.post(url, body, content_type="application/json", HTTP_X_HYPERTUNA_SIGNATURE=header)
    return Probe.as_view()(request)


def test_signed_request_is_accepted():
    response = call()
    assert response.status_code == 200 and response.data == {"kid": "ops"}


def test_rotated_secret_is_accepted():
    header = reqsign.sign("POST", "/api/probe", body=b"{}", kid="ops", secret="rotated-secret")
    assert call(body=b"{}", header=header).status_code == 200


def test_replayed_signature_is_refused():
    header = reqsign.sign("POST", "/api/probe", body=b"{}", kid="ops", secret="first-secret")
    assert call(body=b"{}", header=header).status_code == 200
    replay = call(body=b"{}", header=header)
    assert replay.status_code == 401 and replay.data["error"] == "signature-replayed"


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (
            lambda: reqsign.sign("POST", "/api/probe", body=b'{"a":2}', kid="ops", secret="first-secret"),
            "invalid-signature",
        ),
        (
            lambda: reqsign.sign("POST", "/api/other", body=b'{"a":1}', kid="ops", secret="first-secret"),
            "invalid-signature",
        ),
        (
            lambda: reqsign.sign("GET", "/api/probe", body=b'{"a":1}', kid="ops", secret="first-secret"),
            "invalid-signature",
        ),
        (lambda: reqsign.sign("POST", "/api/probe", body=b'{"a":1}', kid="ops", secret="wrong"), "invalid-signature"),
        (lambda: reqsign.sign("POST", "/api/probe", body=b'{"a":1}', kid="ghost", secret="x"), "unknown-key"),
        (
            lambda: reqsign.sign("POST", "/api/probe", body=b'{"a":1}', kid="other", secret="first-secret"),
            "invalid-signature",
        ),
        (
            lambda: reqsign.sign(
                "POST",
                "/api/probe",
                body=b'{"a":1}',
                kid="ops",
                secret="first-secret",
                timestamp=int(time.time()) - 301,
            ),
            "signature-expired",
        ),
        (
            lambda: reqsign.sign(
                "POST",
                "/api/probe",
                body=b'{"a":1}',
                kid="ops",
                secret="first-secret",
                timestamp=int(time.time()) + 301,
            ),
            "signature-expired",
        ),
        (lambda: "kid=ops,t=1", "invalid-signature-header"),
        (lambda: "garbage header; drop table", "invalid-signature-header"),
    ],
)
def test_tampered_expired_or_malformed_signatures_are_refused(mutate, code):
    response = call(header=mutate())
    assert response.status_code == 401 and response.data["error"] == code


def test_query_is_bound_to_the_signature():
    header = reqsign.sign("POST", "/api/probe", query="relay=a", body=b"{}", kid="ops", secret="first-secret")
    assert call(body=b"{}", query="relay=b", header=header).status_code == 401
    header = reqsign.sign("POST", "/api/probe", query="b=2&a=1", body=b"{}", kid="ops", secret="first-secret")
    assert call(body=b"{}", query="a=1&b=2", header=header).status_code == 200


def test_unsigned_anonymous_request_is_refused():
    request = APIRequestFactory().post("/api/probe", b"{}", content_type="application/json")
    assert Probe.as_view()(request).status_code in (401, 403)


def test_staff_session_is_accepted(admin_user):
    request = APIRequestFactory().post("/api/probe", b"{}", content_type="application/json")
    force_authenticate(request, user=admin_user)
    assert Probe.as_view()(request).status_code == 200


def test_cache_outage_refuses_instead_of_accepting(monkeypatch):
    from hypertuna import operator_auth

    def down(*args, **kwargs):
        raise ConnectionError("redis down")

    monkeypatch.setattr(operator_auth.cache, "add", down)
    response = call()
    assert response.status_code == 503 and response.data["error"] == "replay-check-unavailable"
