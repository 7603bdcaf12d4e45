"""Scrape-time dependency, replica-state and pending-write gauges (hypertuna/health_metrics.py)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from hypertuna import health_metrics
from replicas.models import Replica, ReplicaEvent
from replicas.pending import store_leased_event
from tests.escrow.mtls import escrow_listener, make_pki
from tests.nostr.factories import make_event

pytestmark = pytest.mark.django_db


def scrape(*collectors) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    for collector in collectors:
        registry.register(collector)
    samples = {}
    for family in registry.collect():
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def up(samples, component: str) -> float | None:
    return samples.get(("gateway_dependency_up", (("component", component),)))


@pytest.fixture
def no_escrow(settings):
    settings.HYPERTUNA_ESCROW_URL = None
    settings.REDIS_URL = None
    settings.HYPERTUNA_BRIDGE_REQUIRED = True
    return settings


def test_dependencies_report_up_and_a_failing_probe_down(no_escrow, monkeypatch):
    from hypertuna import views

    monkeypatch.setitem(views.READINESS_PROBES, "bridge", lambda: (True, "ping 0.1ms"))
    samples = scrape(health_metrics.DependencyCollector())
    assert up(samples, "database") == 1.0 and up(samples, "bridge") == 1.0
    assert up(samples, "redis") is None and up(samples, "escrow") is None  # not configured: not reported

    def refused():
        raise ConnectionRefusedError("bridge socket")

    monkeypatch.setitem(views.READINESS_PROBES, "bridge", refused)
    assert up(scrape(health_metrics.DependencyCollector()), "bridge") == 0.0
    monkeypatch.setitem(views.READINESS_PROBES, "bridge", lambda: (False, "unreachable: No such file"))
    assert up(scrape(health_metrics.DependencyCollector()), "bridge") == 0.0


def test_bridge_is_not_reported_when_not_required_or_on_the_escrow_role(no_escrow, monkeypatch):
    from hypertuna import views

    monkeypatch.setitem(views.READINESS_PROBES, "bridge", lambda: (False, "down"))
    no_escrow.HYPERTUNA_BRIDGE_REQUIRED = False
    assert up(scrape(health_metrics.DependencyCollector()), "bridge") is None
    no_escrow.HYPERTUNA_BRIDGE_REQUIRED = True
    no_escrow.ROLE = "escrow"
    assert up(scrape(health_metrics.DependencyCollector()), "bridge") is None


def test_redis_down_is_reported_within_the_cache_timeout(no_escrow):
    # A port nothing listens on: the probe fails fast and the scrape still answers.
    no_escrow.REDIS_URL = "redis://127.0.0.1:9/9"
    no_escrow.CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://127.0.0.1:9/9",
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 1, "SOCKET_TIMEOUT": 1},
        }
    }
    samples = scrape(health_metrics.DependencyCollector())
    assert up(samples, "redis") == 0.0 and up(samples, "database") == 1.0


def test_escrow_is_probed_over_mutual_tls_with_the_gateway_certificate(no_escrow, tmp_path):
    certs = make_pki(tmp_path / "pki")
    no_escrow.HYPERTUNA_ESCROW_CA = str(certs.ca.cert)
    with escrow_listener(certs) as url:
        no_escrow.HYPERTUNA_ESCROW_URL = url
        no_escrow.HYPERTUNA_ESCROW_CLIENT_CERT = str(certs.gateway.cert)
        no_escrow.HYPERTUNA_ESCROW_CLIENT_KEY = str(certs.gateway.key)
        assert up(scrape(health_metrics.DependencyCollector()), "escrow") == 1.0
        # A certificate the escrow's CA did not sign fails the handshake: the gateway could not lease.
        no_escrow.HYPERTUNA_ESCROW_CLIENT_CERT = str(certs.foreign_gateway.cert)
        no_escrow.HYPERTUNA_ESCROW_CLIENT_KEY = str(certs.foreign_gateway.key)
        assert up(scrape(health_metrics.DependencyCollector()), "escrow") == 0.0
    no_escrow.HYPERTUNA_ESCROW_CLIENT_CERT = str(certs.gateway.cert)
    no_escrow.HYPERTUNA_ESCROW_CLIENT_KEY = str(certs.gateway.key)
    assert up(scrape(health_metrics.DependencyCollector()), "escrow") == 0.0  # listener gone


def test_replica_states_and_pending_writes_per_relay():
    relay_a, relay_b = "a" * 64, "b" * 64
    Replica.objects.create(relay_key=relay_b, state=Replica.State.READY)
    assert store_leased_event(relay_key=relay_a, event=make_event(content="one"))
    assert store_leased_event(relay_key=relay_a, event=make_event(content="two"))
    samples = scrape(health_metrics.ReplicaBacklogCollector())
    assert samples[("gateway_replica_pending_events", (("relay", relay_a),))] == 2.0
    assert ("gateway_replica_pending_events", (("relay", relay_b),)) not in samples
    assert samples[("gateway_replicas", (("state", "ready"),))] == 1.0
    assert samples[("gateway_replicas", (("state", "failed"),))] == 0.0
    # A worker linearized the writes: the sync flips them, and the backlog drains.
    ReplicaEvent.objects.update(pending=False)
    samples = scrape(health_metrics.ReplicaBacklogCollector())
    assert ("gateway_replica_pending_events", (("relay", relay_a),)) not in samples


def test_metrics_endpoint_serves_the_new_gauges(client, no_escrow):
    health_metrics.register_collectors()
    health_metrics.register_collectors()  # idempotent: app start-up may run it more than once
    text = client.get("/metrics").content.decode()
    assert 'gateway_dependency_up{component="database"} 1.0' in text
    assert 'gateway_replicas{state="ready"} 0.0' in text


def test_a_certificate_without_a_role_scrapes_the_escrow_metrics(tmp_path):
    """What the monitoring profile's Prometheus presents to the escrow (deploy/README.md, "Monitoring")."""
    import http.client
    from urllib.parse import urlsplit

    from escrow.transport import client_context

    certs = make_pki(tmp_path / "pki")
    context = client_context(ca=str(certs.ca.cert), cert=str(certs.no_role.cert), key=str(certs.no_role.key))
    with escrow_listener(certs) as url:
        parts = urlsplit(url)
        connection = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=10, context=context)
        try:
            connection.request("GET", "/metrics")
            response = connection.getresponse()
            body = response.read().decode()
        finally:
            connection.close()
    assert response.status == 200 and "escrow_leases_active" in body
