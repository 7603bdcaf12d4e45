"""Client paths and the relay each belongs to: claims made by registrations, and operator reassignment.

A registration claims its relay key's own path, its ``metadata.gatewayPath`` and each of its
``metadata.pathAliases``. The rules, and why:

- An ``npub…`` path must name the relay's owner (``ownerPubkey``; else the relay key's npub; else the
  npub of its public identifier): a relay cannot publish paths in another user's namespace.
- A path already held by another relay is refused with 409 ``gateway-path-taken``: the first claim wins,
  enforced by the unique constraint on ``RelayPath.path`` (two concurrent claims cannot both commit).
  Since registrations are only authenticated by the shared secret, ownership above cannot be proven; the
  first claim is what protects a relay, and claims survive expiry so an offline relay keeps its paths.
- A hex ``gatewayPath`` must be the relay's own key. Aliases that spell a relay key (64-hex or
  ``npub…/name``) other than the relay's own are accepted but claim nothing: that path is the other
  relay key's own. (Worker runtimes register one relay twice, under its hex key and under ``npub…:name``,
  each listing the other as an alias.)
- A path the relay stops naming is released, unless an operator assigned it.

Resolutions are cached briefly; every change invalidates the cached resolution of the paths it touches.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.utils import timezone

from hypertuna.compat.relaykeys import (
    HEX64,
    PathRefused,
    canonical_path,
    names_a_relay_key,
    npub_to_hex,
    parse_gateway_path,
    path_owner,
    relay_key_to_path,
)
from hypertuna.exceptions import ApiError
from relays.models import PathReassignment, Relay, RelayPath

logger = logging.getLogger(__name__)

PATH_CACHE_PREFIX = "relay:path:"


def path_cache_key(path: str) -> str:
    return PATH_CACHE_PREFIX + canonical_path(path)


@dataclass(frozen=True)
class PathClaims:
    """What one registration claims: canonical path → source."""

    claims: dict[str, str]
    gateway_path: str


def _pubkey(value: Any, field: str) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, str) and HEX64.match(value.lower()):
        return value.lower()
    decoded = npub_to_hex(value)
    if decoded is None:
        raise ApiError("invalid-owner-pubkey", f"{field} must be a 64-hex public key or a valid npub.")
    return decoded


def owner_pubkey(
    registration: dict[str, Any], metadata: dict[str, Any], relay_key: str, public_identifiers: list[Any]
) -> str | None:
    """The relay owner's public key (hex) as the registration states it, or None when it names none."""
    raw_owner = metadata.get("owner")
    owner: dict[str, Any] = raw_owner if isinstance(raw_owner, dict) else {}
    for field, value in (
        ("metadata.ownerPubkey", metadata.get("ownerPubkey")),
        ("registration.ownerPubkey", registration.get("ownerPubkey")),
        ("metadata.owner.pubkey", owner.get("pubkey")),
    ):
        key = _pubkey(value, field)
        if key is not None:
            return key
    for candidate in (relay_key, *public_identifiers):
        if isinstance(candidate, str) and candidate.startswith("npub1"):
            key = npub_to_hex(candidate.split(":", 1)[0].split("/", 1)[0])
            if key is not None:
                return key
    return None


def _refused(exc: PathRefused) -> ApiError:
    return ApiError(exc.code, str(exc))


def plan_claims(*, relay_key: str, metadata: dict[str, Any], owner: str | None) -> PathClaims:
    """Validate the paths a registration names and decide which it claims (no database access)."""
    key_path = relay_key_to_path(relay_key)
    claims: dict[str, str] = {key_path: RelayPath.Source.KEY}
    raw_gateway = metadata.get("gatewayPath")
    gateway_path = key_path
    if raw_gateway is not None and raw_gateway != "":
        try:
            gateway_path = parse_gateway_path(raw_gateway)
        except PathRefused as exc:
            raise _refused(exc) from None
        if HEX64.match(gateway_path) and gateway_path != key_path:
            raise ApiError("gateway-path-not-owned", "A hex gatewayPath must be the relay's own key.", status=403)
        claims.setdefault(gateway_path, RelayPath.Source.GATEWAY_PATH)
    aliases = metadata.get("pathAliases", [])
    if aliases is None:
        aliases = []
    if not isinstance(aliases, list) or len(aliases) > 16:
        raise ApiError("invalid-gateway-path", "pathAliases must be a list of at most 16 paths.")
    for alias in aliases:
        try:
            path = parse_gateway_path(alias)
        except PathRefused as exc:
            raise _refused(exc) from None
        if path in claims:
            continue
        _check_owner(path, owner)
        if names_a_relay_key(path):
            continue  # another relay key's own path: resolves to that relay, claims nothing here
        claims[path] = RelayPath.Source.ALIAS
    for path in claims:
        _check_owner(path, owner)
    return PathClaims(claims=claims, gateway_path=gateway_path)


def _check_owner(path: str, owner: str | None) -> None:
    named = path_owner(path)
    if named is not None and named != owner:
        raise ApiError(
            "gateway-path-not-owned",
            f"Path /{path} is in another key's namespace: its npub must be the relay owner's key "
            "(ownerPubkey, or the npub of the relay key or public identifier).",
            status=403,
        )


def apply_claims(relay: Relay, planned: PathClaims, now: datetime) -> None:
    """Record the relay's claims inside the registration's transaction; 409 when another relay holds one.

    The caller's transaction rolls back on the error, so a refused registration changes nothing."""
    held = dict(
        RelayPath.objects.select_for_update().filter(path__in=list(planned.claims)).values_list("path", "relay_id")
    )
    for path, source in planned.claims.items():
        holder = held.get(path)
        if holder is not None and holder != relay.pk:
            raise _taken(path)
        if holder is None:
            try:
                with transaction.atomic():
                    RelayPath.objects.create(path=path, relay=relay, source=source, claimed_at=now)
            except IntegrityError:  # claimed concurrently by another registration that committed first
                raise _taken(path) from None
    released = list(
        RelayPath.objects.filter(relay=relay)
        .exclude(path__in=list(planned.claims))
        .exclude(source=RelayPath.Source.OPERATOR)
        .values_list("path", flat=True)
    )
    if released:
        RelayPath.objects.filter(relay=relay, path__in=released).delete()
    touched = [*planned.claims, *released]
    transaction.on_commit(lambda: forget_resolutions(touched))


def _taken(path: str) -> ApiError:
    return ApiError(
        "gateway-path-taken",
        f"Path /{path} belongs to another relay; an operator can reassign it.",
        status=409,
        path=path,
    )


def forget_resolutions(paths: list[str]) -> None:
    cache.delete_many([path_cache_key(p) for p in paths])


def resolve_claimed(path: str) -> str | None:
    """The relay key holding a canonical path, or None."""
    return RelayPath.objects.filter(path=path).values_list("relay__relay_key", flat=True).first()


def reassign_path(*, path: str, relay_key: str, operator: str, reason: str, now: datetime | None = None) -> RelayPath:
    """Move a path to ``relay_key`` (an operator decision, audited). The new holder keeps it whatever its
    registrations say; the previous holder's next registration naming it is refused with 409."""
    now = now or timezone.now()
    canonical = canonical_path(path)
    reason = (reason or "").strip()[:200]
    if not reason:
        raise ApiError("reason-required", "Say why the path is reassigned.")
    with transaction.atomic():
        target = Relay.objects.filter(relay_key=relay_key).first()
        if target is None:
            raise ApiError("relay-not-found", f"No relay {relay_key!r}.", status=404)
        row = RelayPath.objects.select_for_update().filter(path=canonical).select_related("relay").first()
        previous = row.relay.relay_key if row is not None else ""
        if row is None:
            row = RelayPath(path=canonical)
        row.relay = target
        row.source = RelayPath.Source.OPERATOR
        row.claimed_at = now
        row.save()
        PathReassignment.objects.create(
            path=canonical,
            from_relay_key=previous,
            to_relay_key=target.relay_key,
            operator=operator,
            reason=reason,
            at=now,
        )
        transaction.on_commit(lambda: forget_resolutions([canonical]))
    logger.info(
        "relay path reassigned",
        extra={"path": canonical, "from": previous, "to": target.relay_key, "operator": operator},
    )
    return row
