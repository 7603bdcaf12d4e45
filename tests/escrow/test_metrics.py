"""Escrow metrics are on the default registry and served at /metrics (not a private registry)."""

from __future__ import annotations

import pytest
from django.db import transaction
from prometheus_client import REGISTRY

from escrow import audit, leases
from escrow.models import AuditEntry
from tests.escrow.conftest import unlock

pytestmark = pytest.mark.django_db


def sample(name: str, labels: dict | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


@pytest.fixture
def capture_on_commit(django_capture_on_commit_callbacks):
    return django_capture_on_commit_callbacks


def test_policy_rejections_are_counted_per_reason(worker, clock):
    worker.deposit()
    before = sample("escrow_policy_rejections_total", {"reason": "worker-heartbeat-recent"})
    before_missing = sample("escrow_policy_rejections_total", {"reason": "mirror-evidence-missing"})
    with pytest.raises(Exception):
        unlock(clock, worker.relay_key, mirror_age=None)
    assert sample("escrow_policy_rejections_total", {"reason": "worker-heartbeat-recent"}) == before + 1
    assert sample("escrow_policy_rejections_total", {"reason": "mirror-evidence-missing"}) == before_missing + 1


def test_expirations_are_counted_after_commit(worker, clock, capture_on_commit):
    worker.deposit()
    clock.advance(91)
    unlock(clock, worker.relay_key, ttl=30)
    clock.advance(31)
    before = sample("escrow_lease_expirations_total")
    with capture_on_commit(execute=True):
        leases.expire_leases(now=clock.now)
    assert sample("escrow_lease_expirations_total") == before + 1


def test_audit_verification_status_and_active_leases_are_exported(worker, clock, client):
    worker.deposit()
    clock.advance(91)
    unlock(clock, worker.relay_key)
    assert audit.verify().ok
    assert sample("escrow_audit_verification_ok") == 1.0
    assert sample("escrow_leases_active") == 1.0
    with transaction.atomic():
        from django.db import connection

        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute("SET LOCAL session_replication_role = replica")
            else:
                cursor.execute("DROP TRIGGER escrow_auditentry_no_update")
        AuditEntry.objects.filter(seq=1).update(reason="forged")
    assert not audit.verify().ok
    assert sample("escrow_audit_verification_ok") == 0.0
    text = client.get("/metrics").content.decode()
    for name in (
        "escrow_audit_verification_ok 0.0",
        "escrow_policy_rejections_total",
        "escrow_leases_active 1.0",
        "gateway_escrow_unlock_requests_total",
        "gateway_escrow_leases_active",
        "escrow_lease_expirations_total",
    ):
        assert name in text, name
