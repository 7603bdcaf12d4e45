"""Escrow metrics on the default Prometheus registry (served at /metrics by both roles).

Counters are incremented after the transaction commits, so a rolled-back grant is never counted. Gauges
that describe durable state (active leases at the escrow, audit verification) are read from the database
at scrape time, so every process reports the same truth.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# Gateway side (the coordinator).
unlock_requests_total = Counter(
    "gateway_escrow_unlock_requests_total",
    "Lease requests sent by the gateway coordinator, by result (granted, refused, conflict, error)",
    ["result"],
)
leases_active = Gauge("gateway_escrow_leases_active", "Leases held in this gateway process's in-memory vault")

# Escrow side.
policy_rejections_total = Counter(
    "escrow_policy_rejections_total", "Unlock refusals by failed policy reason (one count per reason)", ["reason"]
)
lease_expirations_total = Counter("escrow_lease_expirations_total", "Leases that reached their expiry")
unlock_decisions_total = Counter("escrow_unlock_decisions_total", "Unlock decisions at the escrow", ["result"])


class EscrowStateCollector(Collector):
    """Audit verification status and escrow-side active leases, read from the database at scrape time."""

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily("escrow_audit_verification_ok", "1 if the last audit verification passed, else 0")
        yield GaugeMetricFamily("escrow_audit_verification_timestamp_seconds", "When the audit was last verified")
        yield GaugeMetricFamily("escrow_leases_active", "Active leases recorded by the escrow")

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from escrow.models import AuditVerification, Lease

        try:
            latest = AuditVerification.objects.order_by("-ran_at").first()
            active = Lease.objects.filter(state=Lease.State.ACTIVE).count()
        except Exception:  # a scrape must not fail because the database is briefly unavailable
            return
        ok = GaugeMetricFamily("escrow_audit_verification_ok", "1 if the last audit verification passed, else 0")
        ts = GaugeMetricFamily("escrow_audit_verification_timestamp_seconds", "When the audit was last verified")
        if latest is not None:
            ok.add_metric([], 1.0 if latest.ok else 0.0)
            ts.add_metric([], latest.ran_at.timestamp())
        yield ok
        yield ts
        gauge = GaugeMetricFamily("escrow_leases_active", "Active leases recorded by the escrow")
        gauge.add_metric([], active)
        yield gauge


_registered = False


def register_collectors() -> None:
    global _registered
    if not _registered:
        REGISTRY.register(EscrowStateCollector())
        _registered = True
