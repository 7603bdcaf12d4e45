from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from hypertuna.env import Env, EnvError
from tests.conftest import hex_key, make_registration, signed

pytestmark = pytest.mark.django_db


def test_health_is_ok(client):
    response = client.get("/health")
    assert response.status_code == 200 and response.json() == {"status": "ok"}
    assert len(response["X-Request-ID"]) >= 8


def test_request_id_is_echoed_when_well_formed(client):
    assert client.get("/health", HTTP_X_REQUEST_ID="abc123-def456")["X-Request-ID"] == "abc123-def456"
    assert client.get("/health", HTTP_X_REQUEST_ID="bad id with spaces")["X-Request-ID"] != "bad id with spaces"


def test_ready_reports_each_dependency(client):
    response = client.get("/ready")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["checks"]["database"]["ok"] and body["checks"]["cache"]["ok"]


def test_ready_fails_when_a_probe_fails(client, monkeypatch):
    from hypertuna import views

    def broken():
        raise ConnectionError("down")

    monkeypatch.setitem(views.READINESS_PROBES, "bridge", broken)
    response = client.get("/ready")
    assert response.status_code == 503
    assert response.json()["checks"]["bridge"] == {"ok": False, "detail": "ConnectionError"}


def test_metrics_export_gateway_series(client):
    APIClient().post("/api/relays", signed(make_registration(hex_key())), format="json")
    APIClient().post("/api/relays", {"registration": {}, "signature": "00"}, format="json")
    text = client.get("/metrics").content.decode()
    assert 'gateway_registrations_total{result="accepted"}' in text
    assert 'gateway_registrations_total{result="invalid-signature"}' in text
    assert "gateway_registered_relays 1.0" in text
    for name in ("gateway_relay_token_issues_total", "gateway_token_validations_total", "django_http_requests_total"):
        assert name in text


def test_metrics_token_when_configured(client, settings):
    settings.HYPERTUNA_METRICS_TOKEN = "scrape-secret"
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-secret").status_code == 200


def test_openapi_schema_and_docs_are_served(client):
    schema = client.get("/api/schema/")
    assert schema.status_code == 200
    text = schema.content.decode()
    for path in ("/api/relays", "/api/relay-tokens/issue", "/api/relay-tokens/refresh", "/api/relay-tokens/revoke"):
        assert path in text
    assert client.get("/api/docs/").status_code == 200


def test_unknown_api_route_is_404_json_not_500(client):
    assert client.get("/api/relay-tokens/nope").status_code == 404


def test_env_parsing_fails_clearly():
    env = Env({"A": "maybe", "B": "x", "C": "5", "D": "ftp://x", "E": " "})
    with pytest.raises(EnvError, match="A must be a boolean"):
        env.bool("A", False)
    with pytest.raises(EnvError, match="B must be an integer"):
        env.int("B", 1)
    with pytest.raises(EnvError, match="C must be at least 10"):
        env.int("C", 1, min_value=10)
    with pytest.raises(EnvError, match="D must be a URL with scheme"):
        env.url("D", schemes=("http",))
    assert env.str("E", "default") == "default"
    with pytest.raises(EnvError, match="F is required"):
        env.str("F")


def test_bad_setting_fails_at_start_with_the_variable_named():
    import os
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        env={**os.environ, "HYPERTUNA_REGISTRATION_TTL": "soon"},
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "HYPERTUNA_REGISTRATION_TTL must be an integer" in result.stderr


def test_deploy_checks_warn_about_unsafe_settings(settings):
    from hypertuna.checks import check_production_settings

    settings.DEBUG = False
    settings.REDIS_URL = None
    settings.DATABASE_IS_SQLITE = False
    settings.SECRET_KEY_IS_GENERATED = True
    settings.HYPERTUNA_REGISTRATION_SECRET = "short"
    settings.HYPERTUNA_METRICS_TOKEN = None
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    ids = {w.id for w in check_production_settings()}
    assert {"hypertuna.W002", "hypertuna.W003", "hypertuna.W005", "hypertuna.W006"} <= ids


def test_openapi_schema_generates_without_warnings(tmp_path):
    from django.core.management import call_command

    target = tmp_path / "schema.yml"
    call_command("spectacular", "--fail-on-warn", "--file", str(target))
    text = target.read_text()
    for path in ("/api/blind-peer", "/api/escrow/leases/query", "/api/relays", "signedRequest"):
        assert path in text
