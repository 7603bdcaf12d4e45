"""Relay registrations: signed worker registrations, unregister, resync-complete, the TTL sweep.

Each service validates its input, writes in one transaction, and defers side effects (cache refresh) to
``transaction.on_commit`` so nothing is announced that was rolled back. Failures are ``ApiError`` with
the wire codes workers already understand.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import current_app
from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.utils import timezone

from hypertuna.compat import normalize_relay_key, verify_hmac
from hypertuna.compat.relaykeys import HEX64, npub_to_hex
from hypertuna.exceptions import ApiError
from relays import metrics, paths, policy, selectors
from relays.models import Peer, Registration, Relay
from relays.signing import now_ms, registration_secret, verify_header_signature
from replicas.declarations import DeclaredCore, declare_relay_cores, parse_relay_cores
from replicas.keys import normalize_core_key

logger = logging.getLogger(__name__)

TRUST_TASK = "relays.tasks.push_blind_peer_trust"

_NONCE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
_PENDING_PREFIX = "gatewayPending"


@dataclass(frozen=True)
class _ParsedRegistration:
    relay_key: str
    nonce: str
    issued_at: datetime
    peers: list[str]
    metadata: dict[str, Any]
    escrow: dict[str, Any]
    blind_peering_key: str
    relay_cores: tuple[list[DeclaredCore], str] | None


def _blind_peering_key(registration: dict[str, Any], metadata: dict[str, Any]) -> str:
    """The ``blindPeeringPublicKey`` a registration announces (where the worker and the JavaScript gateway
    put it), as hex; "" when none. A value that is not a key is refused rather than ignored."""
    for value in (
        metadata.get("blindPeeringPublicKey"),
        metadata.get("blind_peering_public_key"),
        registration.get("blindPeeringPublicKey"),
        registration.get("blind_peering_public_key"),
    ):
        if value is None or value == "":
            continue
        key = normalize_core_key(value)
        if key is None:
            raise ApiError("invalid-blind-peering-key", "blindPeeringPublicKey must be 64-hex or a z-base-32 key.")
        return key
    return ""


def _parse_registration(registration: dict[str, Any], now: datetime) -> _ParsedRegistration:
    relay_key = normalize_relay_key(registration.get("relayKey"))
    if relay_key is None:
        raise ApiError("invalid-relay-key", "relayKey must be a 64-hex key or an npub…:name identifier.")
    if ":" in relay_key and npub_to_hex(relay_key.split(":", 1)[0]) is None:
        raise ApiError("invalid-relay-key", "The npub of relayKey is not a valid NIP-19 key (bad checksum).")
    issued_at_ms = registration.get("issuedAt")
    if isinstance(issued_at_ms, bool) or not isinstance(issued_at_ms, (int, float)):
        raise ApiError("invalid-issued-at", "issuedAt must be a Unix time in milliseconds.")
    window_ms = settings.HYPERTUNA_REGISTRATION_WINDOW * 1000
    if abs(now_ms(now) - issued_at_ms) > window_ms:
        raise ApiError(
            "registration-stale",
            f"issuedAt is more than {settings.HYPERTUNA_REGISTRATION_WINDOW} s from the gateway clock.",
            status=401,
        )
    nonce = registration.get("nonce")
    if not isinstance(nonce, str) or not _NONCE.match(nonce):
        raise ApiError("invalid-nonce", "nonce must be 8-64 characters of [A-Za-z0-9_-].")
    peers_raw = registration.get("peers", [])
    if not isinstance(peers_raw, list) or not all(isinstance(p, str) and HEX64.match(p.lower()) for p in peers_raw):
        raise ApiError("invalid-peers", "peers must be a list of 64-hex Hyperswarm public keys.")
    peers = list(dict.fromkeys(p.lower() for p in peers_raw))
    if len(peers) > settings.HYPERTUNA_REGISTRATION_MAX_PEERS:
        raise ApiError("invalid-peers", f"at most {settings.HYPERTUNA_REGISTRATION_MAX_PEERS} peers per registration.")
    metadata = registration.get("metadata", {})
    escrow = registration.get("escrow", {})
    if not isinstance(metadata, dict) or not isinstance(escrow, dict):
        raise ApiError("invalid-metadata", "metadata and escrow must be JSON objects when present.")
    return _ParsedRegistration(
        relay_key=relay_key,
        nonce=nonce,
        issued_at=datetime.fromtimestamp(issued_at_ms / 1000, tz=UTC),
        peers=peers,
        metadata=metadata,
        escrow=escrow,
        blind_peering_key=_blind_peering_key(registration, metadata),
        relay_cores=parse_relay_cores(registration.get("relayCores"), registration.get("relayCoresMode")),
    )


def _string(value: Any, limit: int = 200) -> str:
    return value[:limit] if isinstance(value, str) else ""


def _enqueue_trust(relay_key: str, *, withdraw: bool = False) -> None:
    """Ask a Celery worker to push (or withdraw) the relay's blind-peer trust scope to the bridge. By task
    name: ``relays.tasks`` imports this module."""
    try:
        current_app.tasks[TRUST_TASK].delay(relay_key, withdraw)
    except Exception as exc:  # a broker outage must not fail a committed registration
        logger.warning(
            "could not enqueue a blind-peer trust push; the reconcile will apply it", extra={"error": str(exc)}
        )


def register_relay(
    *, registration: Any, signature: Any, client_ip: str | None = None, now: datetime | None = None
) -> Relay:
    """Accept a worker's signed registration: verify, check freshness and nonce, apply the host policy,
    upsert the relay and its peers, and restart its TTL."""
    try:
        relay = _register(registration=registration, signature=signature, client_ip=client_ip, now=now)
    except ApiError as exc:
        metrics.registrations_total.labels(result=exc.code).inc()
        raise
    metrics.registrations_total.labels(result="accepted").inc()
    return relay


def _register(*, registration: Any, signature: Any, client_ip: str | None, now: datetime | None) -> Relay:
    secret = registration_secret()
    if not isinstance(registration, dict) or not isinstance(signature, str):
        raise ApiError("invalid-request", 'Body must be {"registration": {...}, "signature": "<hex>"}.')
    # The signature is checked before any field is interpreted: an unauthenticated caller learns
    # nothing about which fields would have been accepted.
    if not verify_hmac(secret, registration, signature):
        raise ApiError("invalid-signature", "Registration signature does not verify.", status=401)
    now = now or timezone.now()
    parsed = _parse_registration(registration, now)

    decision = policy.decide(
        selectors.host_policy().mode,
        identities := policy.owner_identities(registration),
        selectors.host_rules(identities),
    )
    if not decision.allowed:
        raise ApiError("host-not-allowed", f"The host policy refuses this owner ({decision.reason}).", status=403)

    public_identifier = (
        _string(registration.get("publicIdentifier"))
        or _string(registration.get("identifier"))
        or _string(parsed.metadata.get("identifier"))
        or (parsed.relay_key if ":" in parsed.relay_key else "")
    )
    owner_key = paths.owner_pubkey(
        registration,
        parsed.metadata,
        parsed.relay_key,
        [public_identifier, parsed.metadata.get("publicIdentifier"), parsed.metadata.get("identifier")],
    )
    claims = paths.plan_claims(relay_key=parsed.relay_key, metadata=parsed.metadata, owner=owner_key)

    # The cache check stops replays cheaply on every node; the unique constraint below is the guarantee
    # (it also covers a cache that was flushed or is per-process in the embedded default).
    nonce_key = f"reg-nonce:{parsed.relay_key}:{parsed.nonce}"
    if not cache.add(nonce_key, 1, timeout=2 * settings.HYPERTUNA_REGISTRATION_WINDOW + 5):
        raise ApiError("registration-replayed", "This registration nonce was already used.", status=409)

    metadata = parsed.metadata
    expires_at = now + timedelta(seconds=settings.HYPERTUNA_REGISTRATION_TTL)
    raw_owner = metadata.get("owner")
    owner: dict[str, Any] = raw_owner if isinstance(raw_owner, dict) else {}
    owner_peer_key = next(
        (
            v.lower()
            for v in (registration.get("ownerPeerKey"), metadata.get("ownerPeerKey"), owner.get("peerKey"))
            if isinstance(v, str) and HEX64.match(v.lower())
        ),
        "",
    )
    fields = {
        "public_identifier": public_identifier,
        "gateway_path": claims.gateway_path,
        "name": _string(metadata.get("name")),
        "description": _string(metadata.get("description"), 2000),
        "requires_auth": metadata.get("requiresAuth") is not False,
        "owner_peer_key": owner_peer_key,
        "status": Relay.Status.ACTIVE,
        "metadata": metadata,
        "escrow": parsed.escrow,
        "last_registered_at": now,
        "expires_at": expires_at,
        "unregistered_at": None,
    }
    with transaction.atomic():
        relay, _ = Relay.objects.get_or_create(
            relay_key=parsed.relay_key, defaults={**fields, "first_registered_at": now}
        )
        relay = Relay.objects.select_for_update().get(pk=relay.pk)
        for name, value in fields.items():
            setattr(relay, name, value)
        relay.save()
        paths.apply_claims(relay, claims, now)
        try:
            with transaction.atomic():
                Registration.objects.create(
                    relay=relay,
                    nonce=parsed.nonce,
                    issued_at=parsed.issued_at,
                    received_at=now,
                    peers=parsed.peers,
                    payload=registration,
                    client_ip=client_ip,
                    blind_peering_key=parsed.blind_peering_key,
                )
        except IntegrityError:
            raise ApiError("registration-replayed", "This registration nonce was already used.", status=409) from None
        _sync_peers(relay, parsed.peers, now)
        if parsed.relay_cores is not None:
            cores, mode = parsed.relay_cores
            declare_relay_cores(
                relay_key=relay.relay_key,
                public_identifier=public_identifier,
                owner_peer_key=owner_peer_key,
                cores=cores,
                mode=mode,
                now=now,
            )
        transaction.on_commit(lambda: refresh_relay_cache(relay.relay_key))
        # Trust follows the committed registration (also when the worker's swarm registration came
        # first and was refused: this is what lets its mirror in without a restart).
        transaction.on_commit(lambda: _enqueue_trust(relay.relay_key))
    logger.info("relay registered", extra={"relay": relay.relay_key, "peers": len(parsed.peers)})
    return relay


def _sync_peers(relay: Relay, peers: list[str], now: datetime) -> None:
    """Merge the peers a registration lists. Several workers may host one relay and register it
    independently, each listing what it knows; a peer stays active while some registration listed it
    within the TTL, so one worker's registration never hides another's peer."""
    Peer.objects.bulk_create(
        [Peer(relay=relay, peer_key=key, first_seen_at=now, last_seen_at=now) for key in peers],
        ignore_conflicts=True,
    )
    # A worker listing a peer again is evidence it serves the relay: clear any unreachable mark.
    Peer.objects.filter(relay=relay, peer_key__in=peers).update(active=True, last_seen_at=now, unreachable_since=None)
    stale_before = now - timedelta(seconds=settings.HYPERTUNA_REGISTRATION_TTL)
    Peer.objects.filter(relay=relay, last_seen_at__lt=stale_before).update(active=False)


def refresh_relay_cache(relay_key: str) -> None:
    """Rewrite (or drop) the cached snapshot of a relay from the database."""
    relay = Relay.objects.filter(relay_key=relay_key).first()
    key = selectors.snapshot_key(relay_key)
    if relay is None or not relay.is_live:
        cache.delete(key)
        return
    selectors.cache_snapshot(selectors.build_snapshot(relay), time.time())


def unregister_relay(*, relay_key: str, signature: str | None) -> bool:
    """A worker withdraws its relay (HMAC over ``{"relayKey": …}``). Idempotent; True if it was live."""
    verify_header_signature({"relayKey": relay_key}, signature)
    key = normalize_relay_key(relay_key)
    if key is None:
        raise ApiError("invalid-relay-key", "relayKey must be a 64-hex key or an npub…:name identifier.")
    now = timezone.now()
    with transaction.atomic():
        relay = Relay.objects.select_for_update().filter(relay_key=key).first()
        if relay is None:
            return False
        was_live = relay.is_live
        relay.status = Relay.Status.UNREGISTERED
        relay.unregistered_at = now
        relay.expires_at = min(relay.expires_at, now)
        relay.save(update_fields=["status", "unregistered_at", "expires_at"])
        # Everything the relay's registrations announced for the blind peer is withdrawn with them; a
        # later registration grants trust again only for what it announces itself.
        Peer.objects.filter(relay=relay).update(active=False, blind_peering_key="")
        Registration.objects.filter(relay=relay).exclude(blind_peering_key="").update(blind_peering_key="")
        transaction.on_commit(lambda: refresh_relay_cache(key))
        transaction.on_commit(lambda: _enqueue_trust(key, withdraw=True))
    logger.info("relay unregistered", extra={"relay": key})
    return was_live


def resync_complete(*, relay_key: str, signature: str | None) -> Relay:
    """The worker has replicated what the gateway wrote while it was away: clear the pending marks."""
    verify_header_signature({"action": "resync-complete", "relayKey": relay_key}, signature)
    key = normalize_relay_key(relay_key)
    with transaction.atomic():
        relay = Relay.objects.select_for_update().filter(relay_key=key or "").first()
        if relay is None or not relay.is_live:
            raise ApiError("relay-not-registered", "Relay not registered with gateway.", status=404)
        relay.metadata = {
            k: v
            for k, v in relay.metadata.items()
            if not k.startswith(_PENDING_PREFIX) and k not in ("gatewayLeaseVersion", "gatewayLeaseActive")
        }
        relay.save(update_fields=["metadata"])
        transaction.on_commit(lambda: _resync_done(relay.relay_key))
    return relay


def _resync_done(relay_key: str) -> None:
    """Let go of what the gateway held for the relay: pending writes cleared, its lease released."""
    from relays.pending_push import complete_resync

    complete_resync(relay_key)


def expire_registrations(*, now: datetime | None = None) -> int:
    """Mark relays whose TTL ran out as expired (rows and tokens are kept). Returns how many."""
    now = now or timezone.now()
    keys = list(selectors.expired_relays(now).values_list("relay_key", flat=True)[:1000])
    if not keys:
        return 0
    with transaction.atomic():
        count = Relay.objects.filter(relay_key__in=keys, status=Relay.Status.ACTIVE, expires_at__lte=now).update(
            status=Relay.Status.EXPIRED
        )
    for key in keys:
        cache.delete(selectors.snapshot_key(key))
        _enqueue_trust(key, withdraw=True)
    logger.info("registrations expired", extra={"count": count})
    return count


def prune_registration_history(*, now: datetime | None = None) -> int:
    """Drop registration history older than the retention period (nonces that old are stale anyway)."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.HYPERTUNA_REGISTRATION_HISTORY_DAYS)
    deleted, _ = Registration.objects.filter(received_at__lt=cutoff).delete()
    return deleted
