"""Every write to relays, registrations, peers and tokens.

Each service validates its input, writes in one transaction, and defers side effects (cache refresh,
socket disconnects) to ``transaction.on_commit`` so nothing is announced that was rolled back. Failures are
``ApiError`` with the wire codes workers already understand.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.utils import timezone

from hypertuna.compat import decode_token, encode_token, normalize_relay_key, token_digest, verify_hmac
from hypertuna.compat.relaykeys import HEX64, relay_key_to_path
from hypertuna.compat.tokens import TokenError
from hypertuna.exceptions import ApiError
from relays import metrics, policy, selectors, usage
from relays.models import Peer, Registration, Relay, RelayToken

logger = logging.getLogger(__name__)

_NONCE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
_PENDING_PREFIX = "gatewayPending"
DEFAULT_SCOPE = "relay-access"


def _secret() -> str:
    secret = settings.HYPERTUNA_REGISTRATION_SECRET
    if not secret:
        raise ApiError("registration-disabled", "The gateway has no registration secret configured.", status=503)
    return secret


def _now_ms(now: datetime) -> int:
    return int(now.timestamp() * 1000)


def relay_group(relay_id: int) -> str:
    """Channel-layer group of every live socket of a relay, on every gateway node."""
    return f"relay-{relay_id}"


# --- Registration ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ParsedRegistration:
    relay_key: str
    nonce: str
    issued_at: datetime
    peers: list[str]
    metadata: dict[str, Any]
    escrow: dict[str, Any]


def _parse_registration(registration: dict[str, Any], now: datetime) -> _ParsedRegistration:
    relay_key = normalize_relay_key(registration.get("relayKey"))
    if relay_key is None:
        raise ApiError("invalid-relay-key", "relayKey must be a 64-hex key or an npub…:name identifier.")
    issued_at_ms = registration.get("issuedAt")
    if isinstance(issued_at_ms, bool) or not isinstance(issued_at_ms, (int, float)):
        raise ApiError("invalid-issued-at", "issuedAt must be a Unix time in milliseconds.")
    window_ms = settings.HYPERTUNA_REGISTRATION_WINDOW * 1000
    if abs(_now_ms(now) - issued_at_ms) > window_ms:
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
    )


def _string(value: Any, limit: int = 200) -> str:
    return value[:limit] if isinstance(value, str) else ""


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
    secret = _secret()
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

    # The cache check stops replays cheaply on every node; the unique constraint below is the guarantee
    # (it also covers a cache that was flushed or is per-process in the embedded default).
    nonce_key = f"reg-nonce:{parsed.relay_key}:{parsed.nonce}"
    if not cache.add(nonce_key, 1, timeout=2 * settings.HYPERTUNA_REGISTRATION_WINDOW + 5):
        raise ApiError("registration-replayed", "This registration nonce was already used.", status=409)

    metadata = parsed.metadata
    expires_at = now + timedelta(seconds=settings.HYPERTUNA_REGISTRATION_TTL)
    gateway_path = _string(metadata.get("gatewayPath")).strip("/") or relay_key_to_path(parsed.relay_key)
    public_identifier = (
        _string(registration.get("publicIdentifier"))
        or _string(registration.get("identifier"))
        or _string(metadata.get("identifier"))
        or (parsed.relay_key if ":" in parsed.relay_key else "")
    )
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
        "gateway_path": gateway_path[:200],
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
                )
        except IntegrityError:
            raise ApiError("registration-replayed", "This registration nonce was already used.", status=409) from None
        _sync_peers(relay, parsed.peers, now)
        transaction.on_commit(lambda: refresh_relay_cache(relay.relay_key))
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
    snap = selectors.build_snapshot(relay)
    cache.set(key, snap.to_cache(), timeout=max(1, int(snap.expires_at - time.time())))


def _verify_header_signature(signed: dict[str, Any], signature: str | None) -> None:
    secret = _secret()
    if not signature:
        raise ApiError("missing-signature", "The x-signature header is required.", status=401)
    if not verify_hmac(secret, signed, signature):
        raise ApiError("invalid-signature", "x-signature does not verify.", status=401)


def unregister_relay(*, relay_key: str, signature: str | None) -> bool:
    """A worker withdraws its relay (HMAC over ``{"relayKey": …}``). Idempotent; True if it was live."""
    _verify_header_signature({"relayKey": relay_key}, signature)
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
        Peer.objects.filter(relay=relay).update(active=False)
        transaction.on_commit(lambda: refresh_relay_cache(key))
    logger.info("relay unregistered", extra={"relay": key})
    return was_live


def resync_complete(*, relay_key: str, signature: str | None) -> Relay:
    """The worker has replicated what the gateway wrote while it was away: clear the pending marks."""
    _verify_header_signature({"action": "resync-complete", "relayKey": relay_key}, signature)
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
    return relay


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
    logger.info("registrations expired", extra={"count": count})
    return count


def prune_registration_history(*, now: datetime | None = None) -> int:
    """Drop registration history older than the retention period (nonces that old are stale anyway)."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.HYPERTUNA_REGISTRATION_HISTORY_DAYS)
    deleted, _ = Registration.objects.filter(received_at__lt=cutoff).delete()
    return deleted


# --- Tokens ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IssuedToken:
    token: str
    expires_at: int  # ms
    refresh_after: int  # ms
    sequence: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "token": self.token,
            "expiresAt": self.expires_at,
            "refreshAfter": self.refresh_after,
            "sequence": self.sequence,
        }


@dataclass(frozen=True)
class VerifiedToken:
    token_id: int
    relay_id: int
    payload: dict[str, Any]
    relay_auth_token: str
    pubkey: str | None
    scope: str
    sequence: int
    expires_at: int  # ms


class TokenRejected(ApiError):
    """A token failed verification; ``code`` is the wire error code."""

    def __init__(self, code: str) -> None:
        super().__init__(code, f"Token rejected: {code}.", status=400)


def _ttl(ttl_seconds: Any) -> int:
    if ttl_seconds is None:
        return int(settings.HYPERTUNA_TOKEN_TTL)
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, (int, float)):
        raise ApiError("invalid-ttl", "ttlSeconds must be a number of seconds.")
    ttl = int(ttl_seconds)
    if not 30 <= ttl <= settings.HYPERTUNA_TOKEN_MAX_TTL:
        raise ApiError("invalid-ttl", f"ttlSeconds must be between 30 and {settings.HYPERTUNA_TOKEN_MAX_TTL}.")
    return ttl


def _validated_claims(relay_auth_token: Any, pubkey: Any, scope: Any) -> tuple[str, str | None, str]:
    if not isinstance(relay_auth_token, str) or not relay_auth_token or len(relay_auth_token) > 1024:
        raise ApiError("invalid-request", "relayKey and relayAuthToken are required.")
    if pubkey is not None and (not isinstance(pubkey, str) or not HEX64.match(pubkey)):
        raise ApiError("invalid-pubkey", "pubkey must be a 64-hex Nostr public key or null.")
    if scope is None:
        scope = DEFAULT_SCOPE
    if not isinstance(scope, str) or not scope or len(scope) > 64:
        raise ApiError("invalid-scope", "scope must be a short string.")
    return relay_auth_token, pubkey, scope


def _mint(
    relay: Relay,
    *,
    relay_auth_token: str,
    pubkey: str | None,
    scope: str,
    ttl: int,
    now: datetime,
    refreshed_from: RelayToken | None = None,
) -> IssuedToken:
    """Create the token row and the token; the caller holds the relay row lock."""
    relay.token_sequence += 1
    relay.save(update_fields=["token_sequence"])
    issued_ms = _now_ms(now)
    expires_ms = issued_ms + ttl * 1000
    refresh_ms = max(issued_ms, expires_ms - settings.HYPERTUNA_TOKEN_REFRESH_WINDOW * 1000)
    payload = {
        "relayKey": relay.relay_key,
        "relayAuthToken": relay_auth_token,
        "pubkey": pubkey,
        "scope": scope,
        "expiresAt": expires_ms,
        "sequence": relay.token_sequence,
        "issuedAt": issued_ms,
    }
    token = encode_token(payload, _secret())
    RelayToken.objects.create(
        relay=relay,
        digest=token_digest(token),
        sequence=relay.token_sequence,
        pubkey=pubkey or "",
        scope=scope,
        issued_at=now,
        expires_at=datetime.fromtimestamp(expires_ms / 1000, tz=UTC),
        refresh_after=datetime.fromtimestamp(refresh_ms / 1000, tz=UTC),
        refreshed_from=refreshed_from,
    )
    return IssuedToken(token=token, expires_at=expires_ms, refresh_after=refresh_ms, sequence=relay.token_sequence)


def _live_relay_for_update(relay_key: Any) -> Relay:
    key = normalize_relay_key(relay_key)
    if key is None:
        raise ApiError("invalid-request", "relayKey is required.")
    relay = Relay.objects.select_for_update().filter(relay_key=key).first()
    if relay is None or not relay.is_live:
        raise ApiError("relay-not-registered", "Relay not registered with gateway.")
    return relay


def issue_token(
    *,
    relay_key: Any,
    relay_auth_token: Any,
    pubkey: Any = None,
    scope: Any = None,
    ttl_seconds: Any = None,
    now: datetime | None = None,
) -> IssuedToken:
    """Mint a client token for a live relay. Any number of tokens per relay may be valid at once."""
    try:
        _secret()
        claims = _validated_claims(relay_auth_token, pubkey, scope)
        ttl = _ttl(ttl_seconds)
        now = now or timezone.now()
        with transaction.atomic():
            relay = _live_relay_for_update(relay_key)
            issued = _mint(relay, relay_auth_token=claims[0], pubkey=claims[1], scope=claims[2], ttl=ttl, now=now)
    except ApiError as exc:
        metrics.token_issues_total.labels(result=exc.code).inc()
        raise
    metrics.token_issues_total.labels(result="success").inc()
    return issued


def _check_token(token: Any, relay_key: str, now: datetime) -> tuple[dict[str, Any], RelayToken]:
    """The verification order workers know: required, invalid, relay, expiry, revoked, stale."""
    if not token:
        raise TokenRejected("token-required")
    try:
        payload = decode_token(token, _secret())
    except TokenError as exc:
        raise TokenRejected(exc.code) from None
    if "relayKey" in payload and payload["relayKey"] != relay_key:
        raise TokenRejected("relay-mismatch")
    expires_at = payload.get("expiresAt")
    if isinstance(expires_at, bool) or not isinstance(expires_at, (int, float)):
        raise TokenRejected("token-invalid")
    if expires_at <= _now_ms(now):
        raise TokenRejected("token-expired")
    if not isinstance(payload.get("relayAuthToken"), str) or not payload["relayAuthToken"]:
        raise TokenRejected("token-invalid")
    row = RelayToken.objects.select_related("relay").filter(digest=token_digest(token)).first()
    if row is None or row.relay.relay_key != relay_key:
        # Authentic (right HMAC) but never issued here for this relay, e.g. minted elsewhere with the
        # shared secret: refuse, so revocation and accounting cover every accepted token.
        raise TokenRejected("token-mismatch")
    if row.state == RelayToken.State.REVOKED or row.sequence <= row.relay.revoked_through_sequence:
        raise TokenRejected("token-revoked")
    if row.state == RelayToken.State.SUPERSEDED:
        raise TokenRejected("token-stale")
    return payload, row


def verify_token(token: Any, relay_key: str, *, now: datetime | None = None) -> VerifiedToken:
    """Check a client token for ``relay_key``; return its claims or raise ``TokenRejected``.

    Read-only (one indexed query): safe on the WebSocket accept path.
    """
    try:
        payload, row = _check_token(token, relay_key, now or timezone.now())
    except TokenRejected as exc:
        metrics.token_validations_total.labels(result=exc.code).inc()
        raise
    metrics.token_validations_total.labels(result="ok").inc()
    return VerifiedToken(
        token_id=row.pk,
        relay_id=row.relay_id,
        payload=payload,
        relay_auth_token=payload["relayAuthToken"],
        pubkey=payload.get("pubkey") if isinstance(payload.get("pubkey"), str) else None,
        scope=str(payload["scope"]) if isinstance(payload.get("scope"), str) else DEFAULT_SCOPE,
        sequence=row.sequence,
        expires_at=int(payload["expiresAt"]),
    )


def refresh_token(*, relay_key: Any, token: Any, ttl_seconds: Any = None, now: datetime | None = None) -> IssuedToken:
    """Exchange a valid token for a new one with the same claims; the old one becomes stale."""
    try:
        _secret()
        key = normalize_relay_key(relay_key)
        if key is None or not isinstance(token, str) or not token:
            raise ApiError("invalid-request", "relayKey and token are required.")
        ttl = _ttl(ttl_seconds)
        now = now or timezone.now()
        with transaction.atomic():
            relay = _live_relay_for_update(key)
            # Verified under the relay lock, so two concurrent refreshes of one token cannot both win.
            payload, row = _check_token(token, key, now)
            row.state = RelayToken.State.SUPERSEDED
            row.save(update_fields=["state"])
            issued = _mint(
                relay,
                relay_auth_token=payload["relayAuthToken"],
                pubkey=row.pubkey or None,
                scope=row.scope,
                ttl=ttl,
                now=now,
                refreshed_from=row,
            )
    except ApiError as exc:
        metrics.token_refresh_total.labels(result=exc.code).inc()
        raise
    metrics.token_refresh_total.labels(result="success").inc()
    return issued


@dataclass(frozen=True)
class RevokeResult:
    sequence: int
    revoked: int
    disconnected: int


def revoke_tokens(
    *,
    relay_key: Any,
    reason: Any = None,
    token: Any = None,
    sequence: Any = None,
    now: datetime | None = None,
) -> RevokeResult:
    """Revoke one token (``token``), every token up to ``sequence``, or every token of the relay.

    Live sockets using a revoked token are told ``["TOKEN","REVOKED",…]`` and closed with 4403 on every
    gateway node, through the channel layer, once the revocation is committed.
    """
    try:
        result = _revoke(relay_key=relay_key, reason=reason, token=token, sequence=sequence, now=now)
    except ApiError as exc:
        metrics.token_revocations_total.labels(result=exc.code).inc()
        raise
    metrics.token_revocations_total.labels(result="success").inc()
    return result


def _revoke(*, relay_key: Any, reason: Any, token: Any, sequence: Any, now: datetime | None) -> RevokeResult:
    secret = _secret()
    key = normalize_relay_key(relay_key)
    if key is None:
        raise ApiError("invalid-request", "relayKey is required.")
    reason_text = reason[:200] if isinstance(reason, str) and reason else "revoked"
    now = now or timezone.now()
    with transaction.atomic():
        relay = Relay.objects.select_for_update().filter(relay_key=key).first()
        if relay is None:
            raise ApiError("relay-not-registered", "Relay not registered with gateway.")
        rows = RelayToken.objects.filter(relay=relay).exclude(state=RelayToken.State.REVOKED)
        digests: list[str] | None = None
        if token is not None:
            try:
                decode_token(token, secret)
            except TokenError:
                raise ApiError("token-invalid", "The token to revoke is not a valid token.") from None
            digests = [token_digest(token)]
            rows = rows.filter(digest=digests[0])
            through = relay.revoked_through_sequence
        elif sequence is not None:
            if isinstance(sequence, bool) or not isinstance(sequence, int) or sequence < 0:
                raise ApiError("invalid-sequence", "sequence must be a non-negative integer.")
            through = max(relay.revoked_through_sequence, min(sequence, relay.token_sequence))
            rows = rows.filter(sequence__lte=through)
        else:
            through = relay.token_sequence
        token_ids = list(rows.values_list("pk", flat=True))
        revoked = RelayToken.objects.filter(pk__in=token_ids).update(
            state=RelayToken.State.REVOKED, revoked_at=now, revocation_reason=reason_text
        )
        if through != relay.revoked_through_sequence:
            relay.revoked_through_sequence = through
            relay.save(update_fields=["revoked_through_sequence"])
        disconnected = usage.live_connections(token_ids)
        message = {
            "type": "token.revoked",
            "through_sequence": through,
            "token_ids": token_ids,
            "reason": reason_text,
        }
        group = relay_group(relay.pk)
        transaction.on_commit(lambda: _broadcast(group, message))
    logger.info("tokens revoked", extra={"relay": key, "revoked": revoked, "through": through})
    return RevokeResult(sequence=through, revoked=revoked, disconnected=disconnected)


def _broadcast(group: str, message: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(group, message)
    except Exception:
        # The revocation is committed and enforced on every new connection regardless; failing to reach
        # live sockets is logged loudly because they stay open until their next token check.
        logger.exception("could not broadcast token revocation", extra={"group": group})


def revoke_token_by_id(*, token_id: int, reason: str) -> RevokeResult:
    """Operator action: revoke one stored token (the admin has the row, not the bearer token)."""
    with transaction.atomic():
        row = RelayToken.objects.select_for_update().select_related("relay").get(pk=token_id)
        if row.state == RelayToken.State.REVOKED:
            return RevokeResult(sequence=row.relay.revoked_through_sequence, revoked=0, disconnected=0)
        row.state = RelayToken.State.REVOKED
        row.revoked_at = timezone.now()
        row.revocation_reason = reason[:200]
        row.save(update_fields=["state", "revoked_at", "revocation_reason"])
        message = {
            "type": "token.revoked",
            "through_sequence": row.relay.revoked_through_sequence,
            "token_ids": [row.pk],
            "reason": row.revocation_reason,
        }
        group = relay_group(row.relay_id)
        transaction.on_commit(lambda: _broadcast(group, message))
    metrics.token_revocations_total.labels(result="success").inc()
    return RevokeResult(
        sequence=row.relay.revoked_through_sequence, revoked=1, disconnected=usage.live_connections([row.pk])
    )


# --- Peer health ----------------------------------------------------------------------------------


def record_peer_health(
    *, peer_key: str, healthy: bool, latency_ms: float | None = None, now: datetime | None = None
) -> bool:
    """Record a health observation of a worker peer for every relay it serves.

    Returns True when the peer's reachability changed (and the relays' cached snapshots were refreshed,
    so new connections stop or start choosing it).
    """
    now = now or timezone.now()
    peers = Peer.objects.filter(peer_key=peer_key)
    if healthy:
        changed = peers.filter(unreachable_since__isnull=False).update(unreachable_since=None) > 0
        update: dict[str, Any] = {"last_healthy_at": now}
        if latency_ms is not None:
            update["latency_ms"] = latency_ms
        peers.update(**update)
    else:
        changed = peers.filter(unreachable_since__isnull=True).update(unreachable_since=now) > 0
    if changed:
        for relay_key in selectors.relays_served_by(peer_key):
            refresh_relay_cache(relay_key)
        logger.info("peer reachability changed", extra={"peer": peer_key[:16], "healthy": healthy})
    return changed
