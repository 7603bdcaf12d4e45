"""Scrape-time gauges for the dashboards and alerts in ``deploy/monitoring``.

``gateway_dependency_up{component}``: 1 when this process reaches the dependency at scrape time, else 0.
Components: ``database`` and, with ``REDIS_URL``, ``redis`` (both roles); on the gateway role also ``bridge``
(when ``HYPERTUNA_BRIDGE_REQUIRED``) and ``escrow`` (when ``HYPERTUNA_ESCROW_URL`` is set: ``GET /health``
over the gateway's own mutual-TLS client certificate, so a bad certificate counts as down too). The probes
are the ones ``/ready`` uses, each bounded by a short timeout, and never raise: a scrape must answer, with
the dependency reported down, exactly when the dependency is gone.

``gateway_replicas{state}``: replicas by state (pending, syncing, ready, stale, failed).
``gateway_replica_pending_events{relay}``: events written under an escrow lease that no worker has
linearized yet (``ReplicaEvent.pending``); they drain when a worker returns and the sync reads them back.

Database gauges are the same on every node (read from the shared database at scrape time).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from django.conf import settings
from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

ESCROW_PROBE_TIMEOUT = 2.0

UP = ("gateway_dependency_up", "1 if this process reached the dependency at scrape time, else 0")
REPLICAS = ("gateway_replicas", "Replicas by state")
PENDING = ("gateway_replica_pending_events", "Events written under a lease that no worker has linearized yet")


def _probe_escrow() -> tuple[bool, str]:
    from escrow.transport import gateway_client

    client = gateway_client(timeout=ESCROW_PROBE_TIMEOUT)
    if client is None:
        return False, "mutual TLS settings incomplete (check escrow.E001)"
    return client.request("GET", "/health").get("status") == "ok", "health"


def dependency_probes() -> dict[str, Callable[[], tuple[bool, str]]]:
    """The probes this process reports, by component (what it depends on in its role and configuration)."""
    from hypertuna.views import READINESS_PROBES, _probe_cache, _probe_database

    probes: dict[str, Callable[[], tuple[bool, str]]] = {"database": _probe_database}
    if settings.REDIS_URL:
        probes["redis"] = _probe_cache
    if settings.ROLE == "gateway":
        if settings.HYPERTUNA_BRIDGE_REQUIRED and "bridge" in READINESS_PROBES:
            probes["bridge"] = READINESS_PROBES["bridge"]
        if settings.HYPERTUNA_ESCROW_URL:
            probes["escrow"] = _probe_escrow
    return probes


class DependencyCollector(Collector):
    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(*UP, labels=["component"])

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily(*UP, labels=["component"])
        for component, probe in dependency_probes().items():
            try:
                ok, _ = probe()
            except Exception as exc:  # a failed probe is the answer, not an error of the scrape
                logger.debug("dependency probe failed", extra={"component": component, "error": str(exc)})
                ok = False
            gauge.add_metric([component], 1.0 if ok else 0.0)
        yield gauge


class ReplicaBacklogCollector(Collector):
    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(*REPLICAS, labels=["state"])
        yield GaugeMetricFamily(*PENDING, labels=["relay"])

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from django.db.models import Count

        from replicas.models import Replica
        from replicas.selectors import pending_event_counts

        states = GaugeMetricFamily(*REPLICAS, labels=["state"])
        pending = GaugeMetricFamily(*PENDING, labels=["relay"])
        try:
            counts = dict(Replica.objects.values_list("state").annotate(n=Count("id")).values_list("state", "n"))
            backlog = pending_event_counts()
        except Exception:  # a scrape must not fail because the database is briefly unavailable
            return
        for state in Replica.State.values:
            states.add_metric([state], counts.get(state, 0))
        for relay_key, count in backlog.items():
            pending.add_metric([relay_key], count)
        yield states
        yield pending


_registered = False


def register_collectors() -> None:
    global _registered
    if not _registered:
        REGISTRY.register(DependencyCollector())
        REGISTRY.register(ReplicaBacklogCollector())
        _registered = True
