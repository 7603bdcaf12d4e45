"""Reads of relays, peers, tokens and the host policy.

``live_relay`` is the hot path (every WebSocket connection calls it): it reads the cache copy written by
``services.register_relay`` and falls back to the database, which stays the source of truth.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from hypertuna.compat.relaykeys import HEX64, PATH_CHARS, canonical_path
from relays import paths
from relays.models import HostPolicy, HostRule, Peer, Relay, RelayToken

SNAPSHOT_PREFIX = "relay:snap:"


@dataclass(frozen=True)
class RelaySnapshot:
    """What routing needs to know about a live relay; safe to cache (no secrets)."""

    id: int
    relay_key: str
    requires_auth: bool
    peers: tuple[str, ...]
    expires_at: float  # epoch seconds
    gateway_path: str
    owner_peer_key: str

    def to_cache(self) -> dict[str, object]:
        data = asdict(self)
        data["peers"] = list(self.peers)
        return data

    @classmethod
    def from_cache(cls, data: dict[str, object]) -> RelaySnapshot:
        return cls(**{**data, "peers": tuple(data["peers"])})  # type: ignore[arg-type]


def snapshot_key(relay_key: str) -> str:
    return SNAPSHOT_PREFIX + relay_key


def build_snapshot(relay: Relay) -> RelaySnapshot:
    fresh_after = timezone.now() - timedelta(seconds=settings.HYPERTUNA_REGISTRATION_TTL)
    peers = tuple(
        Peer.objects.filter(relay=relay, active=True, unreachable_since__isnull=True, last_seen_at__gt=fresh_after)
        .order_by("-last_healthy_at", "peer_key")
        .values_list("peer_key", flat=True)
    )
    return RelaySnapshot(
        id=relay.pk,
        relay_key=relay.relay_key,
        requires_auth=relay.requires_auth,
        peers=peers,
        expires_at=relay.expires_at.timestamp(),
        gateway_path=relay.gateway_path,
        owner_peer_key=relay.owner_peer_key,
    )


def live_relay(relay_key: str) -> RelaySnapshot | None:
    """The live relay with this key, or None when unknown, unregistered or past its TTL."""
    now = timezone.now().timestamp()
    cached = cache.get(snapshot_key(relay_key))
    if cached is not None:
        snap = RelaySnapshot.from_cache(cached)
        return snap if snap.expires_at > now else None
    relay = Relay.objects.filter(relay_key=relay_key, status=Relay.Status.ACTIVE).first()
    if relay is None or relay.expires_at.timestamp() <= now:
        return None
    snap = build_snapshot(relay)
    cache_snapshot(snap, now)
    return snap


def cache_snapshot(snap: RelaySnapshot, now: float) -> None:
    """Cache ``snap`` until its relay expires, or ``HYPERTUNA_RELAY_SNAPSHOT_MAX_AGE`` seconds when that is set
    (a process-local cache, which other processes' changes never reach)."""
    timeout = max(1, int(snap.expires_at - now))
    if settings.HYPERTUNA_RELAY_SNAPSHOT_MAX_AGE:
        timeout = min(timeout, settings.HYPERTUNA_RELAY_SNAPSHOT_MAX_AGE)
    cache.set(snapshot_key(snap.relay_key), snap.to_cache(), timeout=timeout)


def offline_snapshot(relay_key: str) -> RelaySnapshot | None:
    """The relay as known, with no peers: for serving a lapsed relay from its replica."""
    relay = Relay.objects.filter(relay_key=relay_key).first()
    if relay is None:
        return None
    return RelaySnapshot(
        id=relay.pk,
        relay_key=relay.relay_key,
        requires_auth=relay.requires_auth,
        peers=(),
        expires_at=relay.expires_at.timestamp(),
        gateway_path=relay.gateway_path,
        owner_peer_key=relay.owner_peer_key,
    )


def resolve_path(path: str) -> str | None:
    """Relay key for a client path: a hex key, ``npub…/name`` or ``npub…:name``, or a path a relay claimed
    (its ``gatewayPath`` or an alias, see ``relays.paths``).

    A claimed path resolves to its one holder; otherwise a path that spells a relay key resolves to that
    relay when it is registered, or (hex only) to the key itself, which the caller answers "not
    registered". Resolutions are cached briefly under the canonical spelling; every claim change and
    operator reassignment deletes the cached entry, so no stale holder is served.
    """
    trimmed = path.strip("/")
    # Nothing outside the path alphabet reaches the cache or the database (a NUL byte made PostgreSQL
    # refuse the query: a 500 on an unauthenticated URL).
    if not trimmed or len(trimmed) > 200 or not PATH_CHARS.match(trimmed):
        return None
    canonical = canonical_path(trimmed)
    cache_key = paths.path_cache_key(canonical)
    cached = cache.get(cache_key)
    if cached is not None:
        return cached or None
    resolved = paths.resolve_claimed(canonical)
    if resolved is None and HEX64.match(canonical):
        resolved = canonical  # a well-formed key of a relay not (yet) known: 4404 "not registered" later
    cache.set(cache_key, resolved or "", timeout=30 if resolved else 5)
    return resolved


def _token_in_force(row: RelayToken | None) -> bool:
    return (
        row is not None and row.state == RelayToken.State.ACTIVE and row.sequence > row.relay.revoked_through_sequence
    )


def token_active(token_id: int) -> bool:
    """Whether a token verified a moment ago is still neither revoked nor superseded."""
    return _token_in_force(RelayToken.objects.select_related("relay").filter(pk=token_id).first())


def token_refreshed_to(token_id: int) -> RelayToken | None:
    """The newest token of the refresh chain that starts after ``token_id``, if it is still in force (active,
    not revoked, of the same relay); None when the token was never refreshed or its last refresh is not."""
    start = RelayToken.objects.filter(pk=token_id).values_list("relay_id", flat=True).first()
    newest = None
    current = token_id
    # One indexed query per refresh since the socket last looked: a socket re-checks at each expiry.
    while (row := RelayToken.objects.select_related("relay").filter(refreshed_from_id=current).first()) is not None:
        newest, current = row, row.pk
    return newest if newest is not None and newest.relay_id == start and _token_in_force(newest) else None


def live_relay_count() -> int:
    return Relay.objects.filter(status=Relay.Status.ACTIVE, expires_at__gt=timezone.now()).count()


def relays_with_counts() -> QuerySet[Relay]:
    return Relay.objects.annotate(
        peer_count=Count("peers", filter=Q(peers__active=True), distinct=True),
        active_token_count=Count("tokens", filter=Q(tokens__state="active"), distinct=True),
    )


def host_policy() -> HostPolicy:
    policy, _ = HostPolicy.objects.get_or_create(pk=1)
    return policy


def host_rules(identities: set[str]) -> dict[str, set[str]]:
    """The actions (allow/block) listed for any of ``identities``."""
    rules: dict[str, set[str]] = {"allow": set(), "block": set()}
    for identity, action in HostRule.objects.filter(identity__in=identities).values_list("identity", "action"):
        rules[action].add(identity)
    return rules


def relays_served_by(peer_key: str) -> list[str]:
    return list(Relay.objects.filter(peers__peer_key=peer_key).values_list("relay_key", flat=True).distinct())


def peer_health_counts() -> dict[str, int]:
    """Active peers by health state, for the ``gateway_peer_health`` gauge."""
    active = Peer.objects.filter(active=True)
    return {
        "healthy": active.filter(unreachable_since__isnull=True).count(),
        "unreachable": active.filter(unreachable_since__isnull=False).count(),
    }


def expired_relays(now: datetime) -> QuerySet[Relay]:
    return Relay.objects.filter(status=Relay.Status.ACTIVE, expires_at__lte=now)


def peers_to_dial() -> list[str]:
    """Swarm keys of the peers listed by a signed registration of a live relay within the registration TTL."""
    now = timezone.now()
    rows = Peer.objects.filter(
        active=True,
        last_seen_at__gte=now - timedelta(seconds=settings.HYPERTUNA_REGISTRATION_TTL),
        relay__status=Relay.Status.ACTIVE,
        relay__expires_at__gt=now,
    ).values_list("peer_key", flat=True)
    return sorted({key for key in rows if HEX64.match(key)})
