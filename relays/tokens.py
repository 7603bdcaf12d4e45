"""Client tokens: issue, verify, refresh, revoke (live sockets of revoked tokens are closed on every node)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from hypertuna.compat import decode_token, encode_token, normalize_relay_key, token_digest
from hypertuna.compat.relaykeys import HEX64
from hypertuna.compat.tokens import TokenError
from hypertuna.exceptions import ApiError
from relays import metrics, selectors, usage
from relays.models import Relay, RelayToken
from relays.signing import broadcast, now_ms, registration_secret, relay_group

logger = logging.getLogger(__name__)

DEFAULT_SCOPE = "relay-access"
# The shortest lifetime a token may be issued or refreshed with. The variable can only lower it: it exists so
# that a test stack can watch a token expire on a live socket within seconds.


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
    low, high = settings.HYPERTUNA_TOKEN_MIN_TTL, settings.HYPERTUNA_TOKEN_MAX_TTL
    if not low <= ttl <= high:
        raise ApiError("invalid-ttl", f"ttlSeconds must be between {low} and {high}.")
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
    issued_ms = now_ms(now)
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
    token = encode_token(payload, registration_secret())
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
        registration_secret()
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
        payload = decode_token(token, registration_secret())
    except TokenError as exc:
        raise TokenRejected(exc.code) from None
    if "relayKey" in payload and payload["relayKey"] != relay_key:
        raise TokenRejected("relay-mismatch")
    expires_at = payload.get("expiresAt")
    if isinstance(expires_at, bool) or not isinstance(expires_at, (int, float)):
        raise TokenRejected("token-invalid")
    if expires_at <= now_ms(now):
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
        registration_secret()
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


def refreshed_successor(token: VerifiedToken, *, now: datetime | None = None) -> VerifiedToken | None:
    """What a live socket opened with ``token`` answers to once ``token`` expires: the newest refresh of it
    that is still in force and outlives it (same claims, its own id, sequence and expiry), or None, when the
    socket must close. A socket never needs the new token string: refreshing before expiry is enough.
    """
    row = selectors.token_refreshed_to(token.token_id)
    if row is None:
        return None
    expires_ms = round(row.expires_at.timestamp() * 1000)
    if expires_ms <= max(token.expires_at, now_ms(now or timezone.now())):
        return None
    payload = {
        **token.payload,
        "expiresAt": expires_ms,
        "sequence": row.sequence,
        "issuedAt": round(row.issued_at.timestamp() * 1000),
    }
    return replace(token, token_id=row.pk, sequence=row.sequence, expires_at=expires_ms, payload=payload)


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
    secret = registration_secret()
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
        transaction.on_commit(lambda: broadcast(group, message))
    logger.info("tokens revoked", extra={"relay": key, "revoked": revoked, "through": through})
    return RevokeResult(sequence=through, revoked=revoked, disconnected=disconnected)


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
        transaction.on_commit(lambda: broadcast(group, message))
    metrics.token_revocations_total.labels(result="success").inc()
    return RevokeResult(
        sequence=row.relay.revoked_through_sequence, revoked=1, disconnected=usage.live_connections([row.pk])
    )
