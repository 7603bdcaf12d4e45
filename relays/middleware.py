"""ASGI middleware that authenticates relay WebSocket connections before the consumer sees them.

It resolves the path to a live relay and checks the client's token with the token service, and puts the
outcome in ``scope["gateway"]``. It does not close the socket itself: close codes (4404, 4403, 4429) can
only reach a client after the handshake is accepted, so the consumer accepts and then closes with the
code and a NOTICE saying why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from django.conf import settings

from hypertuna import ratelimit
from hypertuna.compat.relaykeys import client_path
from relays import fallback, selectors, services
from relays.selectors import RelaySnapshot

CLOSE_UNKNOWN_RELAY = 4404
CLOSE_FORBIDDEN = 4403
CLOSE_RATE_LIMITED = 4429


@dataclass(frozen=True)
class Rejection:
    code: int
    reason: str
    notice: str


@dataclass(frozen=True)
class GatewayAuth:
    client_ip: str
    relay: RelaySnapshot | None = None
    token: services.VerifiedToken | None = None
    rejection: Rejection | None = None
    # A replica can serve this relay when no worker can.
    replica: bool = False


def _headers(scope: dict[str, Any]) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def client_ip(scope: dict[str, Any], headers: dict[str, str]) -> str:
    trusted = settings.HYPERTUNA_TRUSTED_PROXY_HEADER
    if trusted:
        first = headers.get(trusted.lower(), "").split(",")[0].strip()
        if first:
            return first
    client = scope.get("client") or ("unknown", 0)
    return str(client[0])


def _aliases() -> dict[str, str]:
    pairs = (item.partition("=") for item in settings.HYPERTUNA_RELAY_ALIASES)
    return {alias.strip("/"): key for alias, _, key in pairs if alias and key}


@dataclass(frozen=True)
class RelayLookup:
    """What a client path names: ``relay_key`` None when it names no relay; ``relay`` None when that relay
    is neither live nor readable from a replica."""

    relay_key: str | None = None
    relay: RelaySnapshot | None = None
    # A replica can serve this relay when no worker can.
    replica: bool = False


def find_relay(raw_path: str) -> RelayLookup:
    """The relay a WebSocket or NIP-11 request path names (sync), live or served from its replica."""
    path = client_path(raw_path)
    if path is None:
        return RelayLookup()
    relay_key = _aliases().get(path) or selectors.resolve_path(path)
    if relay_key is None:
        return RelayLookup()
    relay = selectors.live_relay(relay_key)
    # Asked even when peers are listed: a listed peer may already be gone, and the session then falls
    # back to the replica instead of closing.
    replica = fallback.replica_available(relay_key)
    if relay is None and replica:
        # Registration lapsed (every worker offline for longer than the TTL) but the relay is mirrored:
        # it stays readable, and writable under a lease.
        relay = selectors.offline_snapshot(relay_key)
    return RelayLookup(relay_key, relay, replica)


def _token_value(value: str | None) -> str | None:
    """The ``token`` query value as issued. NDK appends ``/`` to every relay URL, after the query too.
    A token (base64url, ``.``, hex) never holds a ``/``, so a value ending in one cannot verify as it is:
    exactly one trailing ``/`` is dropped, which can only yield the token the client was given."""
    return value[:-1] if value is not None and value.endswith("/") else value


def authenticate(scope: dict[str, Any]) -> GatewayAuth:
    """Decide whether this WebSocket may talk to a relay (sync: runs in a worker thread)."""
    headers = _headers(scope)
    ip = client_ip(scope, headers)
    decision = ratelimit.hit("ws-connect", ip, limit=settings.HYPERTUNA_RATELIMIT_IP_PER_MINUTE)
    if not decision.allowed:
        return GatewayAuth(
            ip,
            rejection=Rejection(
                CLOSE_RATE_LIMITED,
                "Too many connections",
                f"rate-limited: too many connections from this address; retry in {decision.retry_after} s",
            ),
        )
    lookup = find_relay(str(scope.get("path", "")))
    if lookup.relay_key is None:
        return GatewayAuth(
            ip, rejection=Rejection(CLOSE_UNKNOWN_RELAY, "Invalid relay key", "Error: Invalid relay key")
        )
    relay, replica = lookup.relay, lookup.replica
    if relay is None:
        return GatewayAuth(
            ip,
            rejection=Rejection(
                CLOSE_UNKNOWN_RELAY, "Relay not registered", "Error: Relay not registered with gateway"
            ),
        )
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    token = _token_value((query.get("token") or [None])[0]) or headers.get("x-relay-token")
    if token is None:
        if relay.requires_auth:
            return GatewayAuth(
                ip,
                relay=relay,
                rejection=Rejection(
                    CLOSE_FORBIDDEN, "Token required", "auth-required: this relay needs an access token (?token=…)"
                ),
            )
        return GatewayAuth(ip, relay=relay, replica=replica)
    try:
        verified = services.verify_token(token, relay.relay_key)
    except services.TokenRejected as exc:
        return GatewayAuth(
            ip,
            relay=relay,
            rejection=Rejection(CLOSE_FORBIDDEN, "Invalid token", f"restricted: access token rejected ({exc.code})"),
        )
    return GatewayAuth(ip, relay=relay, token=verified, replica=replica)


class RelayAuthMiddleware:
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] == "websocket":
            scope = {**scope, "gateway": await database_sync_to_async(authenticate)(scope)}
        return await self.inner(scope, receive, send)
