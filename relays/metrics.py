"""Gateway metrics exported at /metrics (django-prometheus serves the default registry)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

registrations_total = Counter("gateway_registrations_total", "Worker registration attempts by result", ["result"])
token_issues_total = Counter("gateway_relay_token_issues_total", "Relay token issue calls by result", ["result"])
token_refresh_total = Counter("gateway_relay_token_refresh_total", "Relay token refresh calls by result", ["result"])
token_revocations_total = Counter(
    "gateway_relay_token_revocations_total", "Relay token revoke calls by result", ["result"]
)
token_validations_total = Counter(
    "gateway_token_validations_total", "Relay token validations by result (ok or the error code)", ["result"]
)
token_usage_total = Counter("gateway_token_usage_total", "Traffic accounted to relay tokens, by kind", ["kind"])


class RegisteredRelaysCollector(Collector):
    """Counts live relays at scrape time from the database, so every node reports the same truth."""

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # Lets the registry learn the metric name without querying the database at start-up.
        yield GaugeMetricFamily("gateway_registered_relays", "Relays with an unexpired registration")

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from relays import selectors

        gauge = GaugeMetricFamily("gateway_registered_relays", "Relays with an unexpired registration")
        try:
            gauge.add_metric([], selectors.live_relay_count())
        except Exception:  # a scrape must not fail because the database is briefly unavailable
            return
        yield gauge


class PeerHealthCollector(Collector):
    """Active worker peers by reachability, from the database (the same on every node)."""

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily("gateway_peer_health", "Active worker peers by state", labels=["state"])

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from relays import selectors

        gauge = GaugeMetricFamily("gateway_peer_health", "Active worker peers by state", labels=["state"])
        try:
            counts = selectors.peer_health_counts()
        except Exception:
            return
        for state, count in counts.items():
            gauge.add_metric([state], count)
        yield gauge


_collectors_registered = False


def register_collectors() -> None:
    global _collectors_registered
    if not _collectors_registered:
        REGISTRY.register(RegisteredRelaysCollector())
        REGISTRY.register(PeerHealthCollector())
        _collectors_registered = True
