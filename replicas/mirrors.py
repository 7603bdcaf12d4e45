"""Mirror records: what the bridge reports about the blind peer's cores (``mirror.added`` /
``mirror.removed`` / ``mirror.progress``) and what workers declare about them (signed mirror metadata).

Each service runs in one transaction; an autobase-view core of a known relay is linked to that relay's
replica (``readiness.link_view_core``) in the same transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from hypertuna.compat import normalize_relay_key, verify_hmac
from hypertuna.exceptions import ApiError
from replicas.keys import from_ms, normalize_core_key, to_ms
from replicas.models import CoreType, MirrorCore, Replica
from replicas.readiness import link_view_core, replica_for, view_core_removed

# --- core types and fields ---------------------------------------------------------------------

_TYPE_ALIASES = {
    "autobase-system": CoreType.AUTOBASE_SYSTEM,
    "autobase-system-core": CoreType.AUTOBASE_SYSTEM,
    "system": CoreType.AUTOBASE_SYSTEM,
    "autobase-view": CoreType.AUTOBASE_VIEW,
    "view": CoreType.AUTOBASE_VIEW,
    "autobee": CoreType.AUTOBASE_VIEW,
    "writer": CoreType.AUTOBASE_WRITER,
    "autobase-writer": CoreType.AUTOBASE_WRITER,
    "autobase-local": CoreType.AUTOBASE_WRITER,
    "autobase-core": CoreType.AUTOBASE_WRITER,
    "autobase": CoreType.AUTOBASE_WRITER,
    "hyperdrive-metadata": CoreType.HYPERDRIVE_METADATA,
    "drive": CoreType.HYPERDRIVE_METADATA,
    "hyperdrive-blobs": CoreType.HYPERDRIVE_BLOBS,
    "drive-blobs": CoreType.HYPERDRIVE_BLOBS,
    "pfp-drive": CoreType.PFP_DRIVE,
    "new-core": CoreType.UNKNOWN,
    "unknown": CoreType.UNKNOWN,
}


def core_type_alias(value: object) -> str | None:
    """The core type a type name or worker role names exactly (None when it names none)."""
    if not isinstance(value, str):
        return None
    lowered = value.strip().lower()
    if lowered.startswith("autobase-writer-"):
        return CoreType.AUTOBASE_WRITER
    return _TYPE_ALIASES.get(lowered)


def _int_field(data: dict[str, Any], name: str, default: int | None = None, *, minimum: int = 0) -> int | None:
    value = data.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ApiError("invalid-field", f"{name} must be an integer >= {minimum}.")
    return value


def _timestamp_ms(data: dict[str, Any], name: str, now: datetime) -> datetime:
    value = data.get(name)
    if value is None:
        return now
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ApiError("invalid-field", f"{name} must be a Unix time in milliseconds.")
    # A clock ahead of ours must not date anything in the future (it would hide lag).
    return min(from_ms(int(value)), now)


def _resolve_relay_key(data: dict[str, Any], referrer: str) -> str:
    if referrer:
        # The blind-peer referrer is the relay's wakeup key: the relay's Autobase key for its creator,
        # the joiner's local writer core for joiners. A core of a known relay (declared in its signed
        # registration or already attributed) names the relay, whatever form its key takes (a relay
        # registered as npub…:name has a hex Autobase key).
        linked = MirrorCore.objects.filter(core_key=referrer).exclude(relay_key="").values_list("relay_key", flat=True)
        known = next(iter(linked), "")
        if known:
            return known
        if Replica.objects.filter(relay_key=referrer).exists():
            return referrer
    relay_key = normalize_relay_key(data.get("relayKey")) if data.get("relayKey") else None
    return relay_key or ""


def record_mirror_added(*, data: dict[str, Any], now: datetime | None = None) -> MirrorCore:
    """Bridge event ``mirror.added`` (shape in replicas/README.md). Idempotent: re-adding updates."""
    now = now or timezone.now()
    core_key = normalize_core_key(data.get("coreKey"))
    if core_key is None:
        raise ApiError("invalid-core-key", "coreKey must be 64-hex or a z-base-32 hypercore id.")
    referrer = normalize_core_key(data.get("referrer")) or ""
    core_type = core_type_alias(data.get("type", "unknown")) or CoreType.UNKNOWN
    owner = normalize_core_key(data.get("ownerPeerKey")) or ""
    priority = data.get("priority", 0)
    priority = priority if isinstance(priority, int) and not isinstance(priority, bool) else 0
    with transaction.atomic():
        relay_key = _resolve_relay_key(data, referrer)
        core, created = MirrorCore.objects.select_for_update().get_or_create(
            core_key=core_key,
            defaults={"relay_key": relay_key, "core_type": core_type, "owner_peer_key": owner, "first_seen_at": now},
        )
        if relay_key and not core.relay_key:
            core.relay_key = relay_key
        if core.core_type == CoreType.UNKNOWN and core_type != CoreType.UNKNOWN:
            core.core_type = core_type
        core.owner_peer_key = core.owner_peer_key or owner
        core.referrer = referrer or core.referrer
        core.announce = core.announce or bool(data.get("announce"))
        core.priority = max(core.priority, priority) if not created else priority
        core.state = MirrorCore.State.ACTIVE
        core.removed_at = None
        core.removal_reason = ""
        core.reported_by_bridge = True
        core.last_activity_at = now
        core.save()
        link_view_core(core, now)
    return core


def record_mirror_removed(*, data: dict[str, Any], now: datetime | None = None) -> MirrorCore | None:
    """Bridge event ``mirror.removed``. The replica's materialized events are kept (still readable); a
    replica that reads this core as its view and is behind records why it cannot progress (``reason``,
    e.g. ``gc-bytes`` from the blind peer's byte budget; see ``readiness.view_core_removed``)."""
    now = now or timezone.now()
    core_key = normalize_core_key(data.get("coreKey"))
    if core_key is None:
        raise ApiError("invalid-core-key", "coreKey must be 64-hex or a z-base-32 hypercore id.")
    with transaction.atomic():
        core = MirrorCore.objects.select_for_update().filter(core_key=core_key).first()
        if core is None:
            return None
        core.state = MirrorCore.State.REMOVED
        core.removed_at = now
        reason = data.get("reason")
        core.removal_reason = reason[:200] if isinstance(reason, str) else core.removal_reason or "bridge"
        core.save()
        view_core_removed(core, now)
    return core


def record_mirror_progress(*, data: dict[str, Any], now: datetime | None = None) -> MirrorCore | None:
    """Bridge event ``mirror.progress``: the blind peer's lengths for one core.

    ``contiguousLength`` (else ``length``) is what the blind peer holds; ``remoteLength`` is the owner's
    length as seen on the wire. Unknown cores are ignored (the ``mirror.added`` event creates them).

    ``livePeers`` > 0 says the owner was connected when ``remoteLength`` was read: the report is an
    announcement (``_note_announcement``). A report without it (a bridge re-scan at start, a replay, an
    older bridge) is storage, not contact, and never touches the announcement.
    """
    now = now or timezone.now()
    core_key = normalize_core_key(data.get("coreKey"))
    if core_key is None:
        raise ApiError("invalid-core-key", "coreKey must be 64-hex or a z-base-32 hypercore id.")
    length = _int_field(data, "length", 0) or 0
    contiguous = _int_field(data, "contiguousLength", length)
    remote = _int_field(data, "remoteLength", 0) or 0
    live_peers = _int_field(data, "livePeers", 0) or 0
    observed_at = _timestamp_ms(data, "updatedAt", now)
    with transaction.atomic():
        core = MirrorCore.objects.select_for_update().filter(core_key=core_key).first()
        if core is None:
            return None
        _apply_core_lengths(core, mirrored=contiguous, remote=remote, at=observed_at)
        if live_peers > 0:
            _note_announcement(core, length=remote, at=observed_at)
        core.last_activity_at = max(core.last_activity_at, observed_at)
        core.save()
        link_view_core(core, observed_at)
    return core


def _apply_core_lengths(core: MirrorCore, *, mirrored: int | None, remote: int | None, at: datetime) -> None:
    if mirrored is not None:
        # Lengths only grow (a truncated core is a new view core for the replica); a late, smaller
        # progress report must not move them back.
        core.mirrored_length = max(core.mirrored_length, mirrored)
    if remote is not None:
        core.remote_length = max(core.remote_length, remote)
    if core.mirrored_length >= core.remote_length:
        core.behind_since = None
        core.caught_up_at = max(core.caught_up_at, at) if core.caught_up_at else at
    elif core.behind_since is None:
        core.behind_since = at


def _note_announcement(core: MirrorCore, *, length: int, at: datetime) -> None:
    """The owner's contact: the length it announced and when (both clamped by the caller to ``now``).

    Neither moves back: a late or replayed report cannot make the last contact look older or shorter,
    and nothing but a contact moves them forward, so they never look fresher than the owner's real last
    contact (escrow evidence, see ``selectors.mirror_evidence``).
    """
    core.announced_length = max(core.announced_length, length)
    core.announced_at = max(core.announced_at, at) if core.announced_at else at


# --- worker metadata ------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetadataResult:
    relay_key: str
    cores: list[str]


def record_worker_metadata(*, payload: Any, signature: Any, now: datetime | None = None) -> MetadataResult:
    """A worker's signed mirror metadata: which of its cores belong to which relay (shape in
    replicas/README.md). Signed like registrations (HMAC over the canonical JSON of ``payload`` with
    the shared registration secret), fresh within the registration window.

    A core already attributed to another relay by another owner is refused (409): the shared secret
    does not identify workers, so first attribution wins until that mirror is dropped.
    """
    secret = settings.HYPERTUNA_REGISTRATION_SECRET
    if not secret:
        raise ApiError("registration-disabled", "The gateway has no registration secret configured.", status=503)
    if not isinstance(payload, dict) or not isinstance(signature, str):
        raise ApiError("invalid-request", 'Body must be {"payload": {...}, "signature": "<hex>"}.')
    if not verify_hmac(secret, payload, signature):
        raise ApiError("invalid-signature", "Payload signature does not verify.", status=401)
    now = now or timezone.now()
    issued_at = payload.get("issuedAt")
    if isinstance(issued_at, bool) or not isinstance(issued_at, (int, float)):
        raise ApiError("invalid-issued-at", "issuedAt must be a Unix time in milliseconds.")
    if abs(to_ms(now) - issued_at) > settings.HYPERTUNA_REGISTRATION_WINDOW * 1000:
        raise ApiError("metadata-stale", "issuedAt is outside the accepted clock window.", status=401)
    relay_key = normalize_relay_key(payload.get("relayKey"))
    if relay_key is None:
        raise ApiError("invalid-relay-key", "relayKey must be a 64-hex key or an npub…:name identifier.")
    public_identifier = payload.get("publicIdentifier") or ""
    if not isinstance(public_identifier, str) or len(public_identifier) > 200:
        raise ApiError("invalid-field", "publicIdentifier must be a string of at most 200 characters.")
    owner = normalize_core_key(payload.get("ownerPeerKey"))
    if owner is None:
        raise ApiError("invalid-owner", "ownerPeerKey must be a 64-hex or z-base-32 key.")
    cores_raw = payload.get("cores")
    if cores_raw is None:
        cores_raw = [{k: payload[k] for k in ("coreKey", "type", "announce", "priority", "length") if k in payload}]
    if not isinstance(cores_raw, list) or not 1 <= len(cores_raw) <= 64:
        raise ApiError("invalid-cores", "cores must be a list of 1 to 64 objects.")
    parsed: list[tuple[str, str, bool, int, int | None]] = []
    for item in cores_raw:
        if not isinstance(item, dict):
            raise ApiError("invalid-cores", "each core must be an object.")
        core_key = normalize_core_key(item.get("coreKey"))
        if core_key is None:
            raise ApiError("invalid-core-key", "coreKey must be 64-hex or a z-base-32 hypercore id.")
        core_type = core_type_alias(item.get("type"))
        if core_type is None:
            raise ApiError("invalid-core-type", f"type must be one of {', '.join(sorted(_TYPE_ALIASES))}.")
        announce = item.get("announce", False)
        if not isinstance(announce, bool):
            raise ApiError("invalid-field", "announce must be a boolean.")
        priority = _int_field(item, "priority", 0, minimum=-1000) or 0
        length = _int_field(item, "length", None)
        parsed.append((core_key, core_type, announce, priority, length))

    with transaction.atomic():
        for core_key, core_type, announce, priority, length in parsed:
            core, created = MirrorCore.objects.select_for_update().get_or_create(
                core_key=core_key,
                defaults={
                    "relay_key": relay_key,
                    "core_type": core_type,
                    "owner_peer_key": owner,
                    "first_seen_at": now,
                    "public_identifier": public_identifier,
                },
            )
            if not created and core.relay_key and core.relay_key != relay_key and core.owner_peer_key != owner:
                raise ApiError("core-owned-elsewhere", f"Core {core_key} is attributed to another relay.", status=409)
            core.relay_key = relay_key
            core.public_identifier = public_identifier or core.public_identifier
            core.core_type = core_type
            core.owner_peer_key = owner
            core.announce = announce
            core.priority = priority
            core.reported_by_worker = True
            core.last_activity_at = now
            if length is not None:
                # A signed push naming a length is a contact from the owner itself.
                _apply_core_lengths(core, mirrored=None, remote=length, at=now)
                _note_announcement(core, length=length, at=now)
            core.save()
            link_view_core(core, now)
        replica_for(relay_key, public_identifier)
    return MetadataResult(relay_key=relay_key, cores=[p[0] for p in parsed])
