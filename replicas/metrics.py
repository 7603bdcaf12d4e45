"""Blind-peer gauges computed at scrape time from the database (every node reports the same truth).

``gateway_blind_peer_mirror_state{relay,type}``: 1 per relay and core type with an active mirror,
0 when every mirror of that type was removed or is being dropped. ``gateway_blind_peer_mirror_lag_ms
{relay}``: the replica's real lag (oldest unmaterialized entry's age; 0 when caught up). Relay labels
are relay keys: /metrics is meant for the operator's Prometheus (protect it with
HYPERTUNA_METRICS_TOKEN), reference §12 item 5.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

STATE = ("gateway_blind_peer_mirror_state", "1 if the relay has an active mirror of this core type, else 0")
LAG = ("gateway_blind_peer_mirror_lag_ms", "Real replica lag: age of the oldest entry not yet materialized (ms)")


class BlindPeerCollector(Collector):
    def describe(self) -> Iterator[GaugeMetricFamily]:
        # Lets the registry learn the metric names without querying the database at start-up.
        yield GaugeMetricFamily(*STATE, labels=["relay", "type"])
        yield GaugeMetricFamily(*LAG, labels=["relay"])

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from django.db.models import Count, Q
        from django.utils import timezone

        from replicas.models import MirrorCore, Replica
        from replicas.readiness import lag_ms

        state = GaugeMetricFamily(*STATE, labels=["relay", "type"])
        lag = GaugeMetricFamily(*LAG, labels=["relay"])
        try:
            rows = (
                MirrorCore.objects.exclude(relay_key="")
                .values("relay_key", "core_type")
                .annotate(active=Count("id", filter=Q(state=MirrorCore.State.ACTIVE)))
            )
            for row in rows:
                state.add_metric([row["relay_key"], row["core_type"]], 1 if row["active"] else 0)
            now = timezone.now()
            for replica in Replica.objects.only("relay_key", "behind_since", "remote_length", "checkpoint_seq"):
                lag.add_metric([replica.relay_key], lag_ms(replica, now))
        except Exception:  # a scrape must not fail because the database is briefly unavailable
            return
        yield state
        yield lag


_registered = False


def register_collectors() -> None:
    global _registered
    if not _registered:
        REGISTRY.register(BlindPeerCollector())
        _registered = True
