"""Relay cores as workers declare them in their signed registration (``relayCores`` / ``relayCoresMode``).

Real workers never call ``/api/blind-peer/metadata``: they list their relay's cores inside the signed
``POST /api/relays`` body, ``relayCores: [{key: <z-base-32 or hex>, role}]``, with ``relayCoresMode``
``"merge"`` (the default here; the JavaScript gateway's ``"append"`` is the same) or ``"replace"``.
The relays app validates them with :func:`parse_relay_cores` before it writes anything, and records
them with :func:`declare_relay_cores` inside the registration's transaction, so a rolled-back
registration declares nothing.

Roles map to core types (:func:`core_type_for_role`); unknown roles are kept as ``unknown`` with the
role stored verbatim. The ``autobase-view`` core is linked to the relay's replica at once, so a replica
exists (and syncs once the blind peer holds the core) for a worker that never sends mirror metadata.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import transaction

from hypertuna.exceptions import ApiError
from replicas.keys import normalize_core_key
from replicas.mirrors import core_type_alias
from replicas.models import CoreType, MirrorCore
from replicas.readiness import link_view_core

logger = logging.getLogger(__name__)

#: Most cores one registration may list, and most declared cores a relay keeps (merge trims the oldest).
MAX_RELAY_CORES = 256
MAX_ROLE_LENGTH = 64
MODES = {"merge": "merge", "append": "merge", "replace": "replace"}


@dataclass(frozen=True)
class DeclaredCore:
    core_key: str  # 64 lowercase hex
    role: str


def core_type_for_role(role: str) -> str:
    """The core type a worker's role names: ``autobase-view`` → view, ``autobase-system*`` → system,
    writer roles (``autobase``, ``autobase-local``, ``autobase-writer[-n]``, …) → writer, drive roles
    (``drive-metadata``, ``pfp-drive-blobs``, …) → drive types; anything else → ``unknown``."""
    known = core_type_alias(role)
    if known is not None:
        return known
    lowered = role.strip().lower()
    if lowered.startswith("autobase-system"):
        return CoreType.AUTOBASE_SYSTEM
    if lowered.startswith("pfp-drive"):
        return CoreType.PFP_DRIVE
    if lowered.endswith(("-metadata", "-meta")) and "drive" in lowered:
        return CoreType.HYPERDRIVE_METADATA
    if lowered.endswith(("-blobs", "-content")) and "drive" in lowered:
        return CoreType.HYPERDRIVE_BLOBS
    return CoreType.UNKNOWN


def parse_relay_cores(raw: Any, mode: Any) -> tuple[list[DeclaredCore], str] | None:
    """Validate a registration's ``relayCores`` / ``relayCoresMode``. None when no cores are given.

    Raises ``ApiError`` (400) with a reason for anything out of contract: not a list, more than
    ``MAX_RELAY_CORES`` entries, an entry without a valid key (64-hex or a z-base-32 hypercore id), a
    role that is not a short string, an unknown mode. Duplicates keep the first role given.
    """
    if mode is not None and (not isinstance(mode, str) or mode.strip().lower() not in MODES):
        raise ApiError("invalid-relay-cores-mode", f"relayCoresMode must be one of {', '.join(sorted(MODES))}.")
    resolved = MODES[mode.strip().lower()] if isinstance(mode, str) else "merge"
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise ApiError("invalid-relay-cores", "relayCores must be a list of {key, role} objects.")
    if len(raw) > MAX_RELAY_CORES:
        raise ApiError("invalid-relay-cores", f"relayCores lists at most {MAX_RELAY_CORES} cores.")
    cores: dict[str, DeclaredCore] = {}
    for index, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise ApiError("invalid-relay-cores", f"relayCores[{index}] must be an object.")
        key = normalize_core_key(entry.get("key"))
        if key is None:
            raise ApiError(
                "invalid-relay-cores", f"relayCores[{index}].key must be 64-hex or a z-base-32 hypercore id."
            )
        role = entry.get("role")
        if role is None:
            role = ""
        if not isinstance(role, str) or len(role) > MAX_ROLE_LENGTH:
            raise ApiError(
                "invalid-relay-cores", f"relayCores[{index}].role must be a string of at most {MAX_ROLE_LENGTH}."
            )
        current = cores.get(key)
        if current is None or (not current.role and role.strip()):
            cores[key] = DeclaredCore(core_key=key, role=role.strip())
    return list(cores.values()), resolved


@dataclass(frozen=True)
class DeclarationResult:
    declared: int
    skipped: int
    withdrawn: int


def declare_relay_cores(
    *,
    relay_key: str,
    public_identifier: str,
    owner_peer_key: str,
    cores: list[DeclaredCore],
    mode: str,
    now: datetime,
) -> DeclarationResult:
    """Record the cores a signed registration lists for ``relay_key`` (call inside its transaction).

    ``merge``: the listed cores are added to the relay's declared set (an existing role is kept, a
    missing one filled in). ``replace``: cores the relay declared before and no longer lists stop being
    declared (a row that only existed as a declaration is deleted; a core the blind peer holds keeps its
    row). Either way at most ``MAX_RELAY_CORES`` stay declared: the oldest declarations go first.

    A core attributed to another relay by a signed source (another registration, or mirror metadata)
    is skipped, not taken over: the shared secret does not identify workers, so first attribution wins.
    A core attributed only by the blind peer's referrer may be claimed (for a relay registered as
    ``npub…:name`` the referrer is the hex Autobase key, not the relay key).
    """
    skipped = 0
    withdrawn = 0
    with transaction.atomic():
        listed = {c.core_key for c in cores}
        rows = {
            row.core_key: row
            for row in MirrorCore.objects.select_for_update().filter(core_key__in=[c.core_key for c in cores])
        }
        for declared in cores:
            core_type = core_type_for_role(declared.role) if declared.role else CoreType.UNKNOWN
            row = rows.get(declared.core_key)
            if row is None:
                row = MirrorCore(
                    core_key=declared.core_key,
                    relay_key=relay_key,
                    public_identifier=public_identifier,
                    core_type=core_type,
                    owner_peer_key=owner_peer_key,
                    first_seen_at=now,
                    last_activity_at=now,
                )
            elif row.relay_key not in ("", relay_key) and (row.declared_by_registration or row.reported_by_worker):
                skipped += 1
                continue
            row.relay_key = relay_key
            row.public_identifier = public_identifier or row.public_identifier
            row.owner_peer_key = row.owner_peer_key or owner_peer_key
            if declared.role and (mode == "replace" or not row.role):
                row.role = declared.role[:MAX_ROLE_LENGTH]
            if core_type != CoreType.UNKNOWN and (row.core_type == CoreType.UNKNOWN or mode == "replace"):
                row.core_type = core_type
            row.declared_by_registration = True
            row.declared_at = now
            row.save()
            link_view_core(row, now)
        previous = MirrorCore.objects.select_for_update().filter(relay_key=relay_key, declared_by_registration=True)
        if mode == "replace":
            stale = previous.exclude(core_key__in=listed)
        else:
            keep = set(
                previous.order_by("-declared_at", "core_key").values_list("core_key", flat=True)[:MAX_RELAY_CORES]
            )
            stale = previous.exclude(core_key__in=keep | listed)
        for row in stale:
            withdrawn += 1
            if not (row.reported_by_bridge or row.reported_by_worker):
                row.delete()
            else:
                row.declared_by_registration = False
                row.save(update_fields=["declared_by_registration"])
    if skipped:
        logger.warning(
            "registration declared cores attributed to another relay; skipped",
            extra={"relay": relay_key, "skipped": skipped},
        )
    return DeclarationResult(declared=len(cores) - skipped, skipped=skipped, withdrawn=withdrawn)
