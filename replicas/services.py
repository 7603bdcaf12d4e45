"""Every write to mirrors, replicas and materialized replica events.

Sources of writes: bridge events (``mirror.added`` / ``mirror.removed`` / ``mirror.progress``), the
workers' signed mirror metadata, the replica sync (view batches), and operator actions (GC, drop a
mirror). Each service runs in one transaction; side effects (bridge calls through Celery) are enqueued
with ``transaction.on_commit`` so nothing is asked of the bridge for an intent that was rolled back.

**Materialization rules** (applied at upsert time, order-independent, so the stored set equals
``hypertuna.nostr.visible_events`` of everything ever read, whatever order the view delivered it in):

- ephemeral kinds (20000-29999) are not stored;
- replaceable (0, 3, 10000-19999) and addressable (30000-39999, per ``d`` tag) coordinates keep one head
  (``ReplicaHead``: latest ``created_at``, ties → lowest id); only the head can be visible, and the head
  is remembered even when deleted so an older version read later never resurfaces;
- a kind-5 deletion stores tombstones: ``e`` tags hide that id if its author is the deleter and it is not
  itself a deletion (also when the target arrives later); ``a`` tags hide versions of the deleter's
  coordinate created at or before the deletion. Deletions themselves stay visible.

**Lag** (reference §6.4 got this wrong: it reported time since activity). For a relay, ``remote_length``
is the longest view length known to exist (the worker's announced length, or what the blind peer holds,
whichever is larger) and ``checkpoint_seq`` is how much of it is materialized. ``lag entries =
remote_length - checkpoint_seq``. Every time a larger length is observed it is recorded with the time it
was first seen; ``behind_since`` is the first-seen time of the oldest length above the checkpoint, i.e.
when the oldest entry not yet materialized became known to exist, and ``lag ms = now - behind_since``
(0 when caught up). Time passing with nothing new to read is therefore not lag.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from hypertuna.compat import normalize_relay_key, verify_hmac
from hypertuna.exceptions import ApiError
from hypertuna.nostr import Event, InvalidEvent, is_ephemeral_kind, is_hex64, verify_event
from hypertuna.nostr.events import newest_first_key
from hypertuna.nostr.visibility import parse_address
from replicas.models import (
    CoreType,
    MirrorAction,
    MirrorCore,
    Replica,
    ReplicaAddressDeletion,
    ReplicaDeletion,
    ReplicaEvent,
    ReplicaHead,
    ReplicaTag,
)
from replicas.sources import ViewBatch

logger = logging.getLogger(__name__)

DELETION_KIND = 5
MAX_OBSERVATIONS = 256
_TAG_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_Z32_ALPHABET = "ybndrfg8ejkmcpqxot1uwisza345h769"
_Z32 = re.compile(r"^[ybndrfg8ejkmcpqxot1uwisza345h769]{52}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
#: Longest tag value (UTF-8 bytes) stored as is; longer ones are stored hashed (a B-tree entry must stay
#: well under Postgres' 2704-byte limit, nostr-rs-relay #196).
MAX_PLAIN_TAG_BYTES = 512


# --- identifiers ----------------------------------------------------------------------------------


def _z32_decode(text: str) -> bytes:
    bits = 0
    value = 0
    out = bytearray()
    for char in text:
        value = (value << 5) | _Z32_ALPHABET.index(char)
        bits += 5
        if bits >= 8:
            bits -= 8
            out.append((value >> bits) & 0xFF)
    return bytes(out)


def normalize_core_key(value: object) -> str | None:
    """A core key as 64 lowercase hex: accepts hex (any case) or a z-base-32 hypercore id (52 chars)."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if _HEX64.match(text.lower()):
        return text.lower()
    if _Z32.match(text):
        raw = _z32_decode(text)
        if len(raw) >= 32:
            return raw[:32].hex()
    return None


def tag_key(value: str) -> str:
    """How a tag (or ``d``) value is stored and looked up: as is, unless it is long, holds NUL (Postgres
    text cannot) or starts with ``\\x01``; then ``"\\x01" + sha256 hex``. No plain value starts with
    ``\\x01``, so a plain value never collides with a hashed one."""
    if "\x00" in value or value.startswith("\x01") or len(value.encode("utf-8")) > MAX_PLAIN_TAG_BYTES:
        return "\x01" + hashlib.sha256(value.encode("utf-8")).hexdigest()
    return value


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _from_ms(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1000, tz=UTC)


# --- lag and readiness ----------------------------------------------------------------------------


def _observe_length(replica: Replica, length: int, at: datetime) -> None:
    """Record that the relay view is known to hold ``length`` blocks since ``at``."""
    if length <= replica.remote_length:
        return
    replica.remote_length = length
    observations = list(replica.length_observations or [])
    observations.append([length, _ms(at)])
    # Bounded: merging the newest two keeps the earlier timestamp, so lag is over- never under-stated.
    while len(observations) > MAX_OBSERVATIONS:
        last = observations.pop()
        observations[-1] = [last[0], observations[-1][1]]
    replica.length_observations = observations


def _refresh_lag(replica: Replica, now: datetime) -> None:
    """Recompute ``behind_since``/``caught_up_at`` and the state from lengths and the checkpoint."""
    checkpoint = replica.checkpoint_seq
    observations = [o for o in (replica.length_observations or []) if o[0] > checkpoint]
    replica.length_observations = observations
    if replica.remote_length > checkpoint:
        # Observations are ascending in length and time: the first one above the checkpoint dates the
        # oldest entry that is not materialized yet.
        replica.behind_since = _from_ms(observations[0][1]) if observations else (replica.behind_since or now)
    else:
        replica.behind_since = None
        if replica.last_synced_at is not None:
            replica.caught_up_at = now
    replica.state = derive_state(replica, now)


def lag_ms(replica: Replica, now: datetime | None = None) -> int:
    if replica.behind_since is None or replica.remote_length <= replica.checkpoint_seq:
        return 0
    return max(0, _ms(now or timezone.now()) - _ms(replica.behind_since))


def derive_state(replica: Replica, now: datetime) -> str:
    if replica.consecutive_failures >= settings.HYPERTUNA_REPLICA_FAIL_AFTER:
        return Replica.State.FAILED
    if replica.last_synced_at is None:
        return Replica.State.PENDING
    if replica.remote_length <= replica.checkpoint_seq:
        return Replica.State.READY
    if lag_ms(replica, now) > settings.HYPERTUNA_REPLICA_STALE_AFTER * 1000:
        return Replica.State.STALE
    return Replica.State.SYNCING


def _replica_for(relay_key: str, public_identifier: str = "") -> Replica:
    replica, created = Replica.objects.get_or_create(
        relay_key=relay_key, defaults={"public_identifier": public_identifier}
    )
    if not created and public_identifier and replica.public_identifier != public_identifier:
        replica.public_identifier = public_identifier
        replica.save(update_fields=["public_identifier", "updated_at"])
    return replica


def _link_view_core(core: MirrorCore, now: datetime) -> None:
    """Point the relay's replica at ``core`` (an autobase-view core) and feed it the core's lengths."""
    if not core.relay_key or core.core_type != CoreType.AUTOBASE_VIEW or core.state != MirrorCore.State.ACTIVE:
        return
    _replica_for(core.relay_key, core.public_identifier)
    replica = Replica.objects.select_for_update().get(relay_key=core.relay_key)
    if replica.view_core_key and replica.view_core_key != core.core_key:
        current = MirrorCore.objects.filter(core_key=replica.view_core_key, state=MirrorCore.State.ACTIVE).first()
        if current is not None and current.first_seen_at >= core.first_seen_at:
            # A late report about an older view core of the relay: it must not pull the replica back.
            return
    if replica.view_core_key != core.core_key:
        # A new view core (the indexer set changed, or the first one we hear of) has its own block
        # numbering: start over on it. Rows already materialized stay readable; re-reading is idempotent
        # and the rules are order-independent, so the visible set converges to the new view's.
        replica.view_core_key = core.core_key
        replica.checkpoint_seq = 0
        replica.remote_length = 0
        replica.length_observations = []
    _observe_length(replica, max(core.remote_length, core.mirrored_length), now)
    _refresh_lag(replica, now)
    replica.save()


# --- bridge events --------------------------------------------------------------------------------

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


def _core_type(value: object) -> str | None:
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
    return min(_from_ms(int(value)), now)


def _resolve_relay_key(data: dict[str, Any], referrer: str) -> str:
    relay_key = normalize_relay_key(data.get("relayKey")) if data.get("relayKey") else None
    if relay_key:
        return relay_key
    if referrer:
        # The blind-peer referrer is the relay's wakeup key: the relay key itself for the relay's
        # creator, or a writer core of a known relay for joiners.
        if Replica.objects.filter(relay_key=referrer).exists():
            return referrer
        linked = MirrorCore.objects.filter(core_key=referrer).exclude(relay_key="").values_list("relay_key", flat=True)
        return next(iter(linked), "")
    return ""


def record_mirror_added(*, data: dict[str, Any], now: datetime | None = None) -> MirrorCore:
    """Bridge event ``mirror.added`` (shape in replicas/README.md). Idempotent: re-adding updates."""
    now = now or timezone.now()
    core_key = normalize_core_key(data.get("coreKey"))
    if core_key is None:
        raise ApiError("invalid-core-key", "coreKey must be 64-hex or a z-base-32 hypercore id.")
    referrer = normalize_core_key(data.get("referrer")) or ""
    core_type = _core_type(data.get("type", "unknown")) or CoreType.UNKNOWN
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
        _link_view_core(core, now)
    return core


def record_mirror_removed(*, data: dict[str, Any], now: datetime | None = None) -> MirrorCore | None:
    """Bridge event ``mirror.removed``. The replica's materialized events are kept (still readable)."""
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
    return core


def record_mirror_progress(*, data: dict[str, Any], now: datetime | None = None) -> MirrorCore | None:
    """Bridge event ``mirror.progress``: the blind peer's lengths for one core.

    ``contiguousLength`` (else ``length``) is what the blind peer holds; ``remoteLength`` is the owner's
    length as seen on the wire. Unknown cores are ignored (the ``mirror.added`` event creates them).
    """
    now = now or timezone.now()
    core_key = normalize_core_key(data.get("coreKey"))
    if core_key is None:
        raise ApiError("invalid-core-key", "coreKey must be 64-hex or a z-base-32 hypercore id.")
    length = _int_field(data, "length", 0) or 0
    contiguous = _int_field(data, "contiguousLength", length)
    remote = _int_field(data, "remoteLength", 0) or 0
    observed_at = _timestamp_ms(data, "updatedAt", now)
    with transaction.atomic():
        core = MirrorCore.objects.select_for_update().filter(core_key=core_key).first()
        if core is None:
            return None
        _apply_core_lengths(core, mirrored=contiguous, remote=remote, at=observed_at)
        core.last_activity_at = max(core.last_activity_at, observed_at)
        core.save()
        _link_view_core(core, observed_at)
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
    if abs(_ms(now) - issued_at) > settings.HYPERTUNA_REGISTRATION_WINDOW * 1000:
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
        core_type = _core_type(item.get("type"))
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
                _apply_core_lengths(core, mirrored=None, remote=length, at=now)
            core.save()
            _link_view_core(core, now)
        _replica_for(relay_key, public_identifier)
    return MetadataResult(relay_key=relay_key, cores=[p[0] for p in parsed])


# --- materialization --------------------------------------------------------------------------------


@dataclass
class IngestResult:
    checkpoint: int
    read: int = 0
    inserted: int = 0
    removed: int = 0
    rejected: int = 0
    skipped: int = 0
    restarted: bool = False
    notes: list[str] = field(default_factory=list)


def _decode_entries(
    entries: Sequence[Any], *, verify: bool, result: IngestResult
) -> tuple[list[tuple[int, Event]], list[bytes]]:
    """Events (with their view seq) and raw ``del`` keys from view entries. Index records and
    anything malformed are skipped and counted; an event stored under a key other than its id is
    rejected (any writer can ``put`` raw keys, worker-data-layout §1.2)."""
    events: list[tuple[int, Event]] = []
    deleted: list[bytes] = []
    for entry in entries:
        if len(entry.key) != 64:
            result.skipped += 1
            continue
        if entry.type == "del":
            deleted.append(bytes.fromhex(entry.key))
            continue
        try:
            obj = json.loads(entry.value) if isinstance(entry.value, str) else None
            event = Event.from_json(obj)
            if event.id != entry.key:
                raise InvalidEvent("event stored under a key that is not its id")
            if verify:
                verify_event(event)
        except (ValueError, InvalidEvent):
            result.rejected += 1
            continue
        events.append((entry.seq, event))
    return events, deleted


def _tag_rows(event: Event) -> set[tuple[str, str]]:
    return {
        (tag[0], tag_key(tag[1])) for tag in event.tags if len(tag) >= 2 and len(tag[0]) == 1 and tag[0] in _TAG_LETTERS
    }


def _delete_rows(replica: Replica, q: Q) -> int:
    pks = list(ReplicaEvent.objects.filter(q, replica=replica).values_list("pk", flat=True))
    if not pks:
        return 0
    ReplicaTag.objects.filter(event_id__in=pks).delete()
    ReplicaEvent.objects.filter(pk__in=pks).delete()
    return len(pks)


def materialize_events(
    replica: Replica, items: Iterable[tuple[int, Event]], *, raw_deletes: Iterable[bytes] = ()
) -> tuple[int, int]:
    """Apply events to the replica (see the module docstring for the rules). Returns (inserted, removed).

    The caller holds the replica row lock (``select_for_update``) inside a transaction, so no other
    sync of this relay interleaves between the reads of heads/tombstones and the writes below.
    """
    by_id: dict[str, tuple[int, Event]] = {}
    for seq, event in items:
        if not is_ephemeral_kind(event.kind):
            by_id.setdefault(event.id, (seq, event))
    removed = 0
    raw_deletes = list(raw_deletes)
    if raw_deletes:
        # A raw Hyperbee ``del`` of an event record removes it from the worker's view; mirror that.
        removed += _delete_rows(replica, Q(eid__in=raw_deletes))
    if not by_id:
        return 0, removed

    eids = [bytes.fromhex(i) for i in by_id]
    existing = {
        bytes(e) for e in ReplicaEvent.objects.filter(replica=replica, eid__in=eids).values_list("eid", flat=True)
    }
    tombstones = {
        (bytes(t), bytes(p))
        for t, p in ReplicaDeletion.objects.filter(replica=replica, target__in=eids).values_list("target", "pubkey")
    }

    # Replaceable/addressable: the best candidate per coordinate in this batch against the stored head.
    candidates: dict[tuple[int, bytes, str], Event] = {}
    regular: list[Event] = []
    for _, event in by_id.values():
        key = event.replacement_key()
        if key is None:
            regular.append(event)
            continue
        coordinate = (key[0], bytes.fromhex(key[1]), tag_key(key[2]))
        current = candidates.get(coordinate)
        if current is None or newest_first_key(event) < newest_first_key(current):
            candidates[coordinate] = event
    winners: list[Event] = []
    address_tombs: dict[tuple[int, bytes, str], int] = {}
    if candidates:
        # Two indexed IN lookups, then exact coordinates in Python (an OR of per-coordinate conditions
        # costs more to build than to run).
        scope = Q(replica=replica, kind__in={c[0] for c in candidates}, pubkey__in={c[1] for c in candidates})
        heads = {
            coord: h
            for h in ReplicaHead.objects.filter(scope)
            if (coord := (h.kind, bytes(h.pubkey), h.d)) in candidates
        }
        address_tombs = {
            coord: a.through
            for a in ReplicaAddressDeletion.objects.filter(scope)
            if (coord := (a.kind, bytes(a.pubkey), a.d)) in candidates
        }
        new_heads: list[ReplicaHead] = []
        moved_heads: list[ReplicaHead] = []
        superseded: list[bytes] = []
        for coordinate, event in candidates.items():
            head = heads.get(coordinate)
            if head is not None and newest_first_key(event) >= (-head.created_at, bytes(head.eid).hex()):
                continue  # an equal or newer version is already retained
            if head is None:
                new_heads.append(
                    ReplicaHead(
                        replica=replica,
                        kind=coordinate[0],
                        pubkey=coordinate[1],
                        d=coordinate[2],
                        created_at=event.created_at,
                        eid=bytes.fromhex(event.id),
                    )
                )
            else:
                superseded.append(bytes(head.eid))
                head.created_at = event.created_at
                head.eid = bytes.fromhex(event.id)
                moved_heads.append(head)
            winners.append(event)
        if superseded:
            removed += _delete_rows(replica, Q(eid__in=superseded))
        ReplicaHead.objects.bulk_update(moved_heads, ["created_at", "eid"], batch_size=200)
        ReplicaHead.objects.bulk_create(new_heads)

    to_insert: list[Event] = []
    for event in [*regular, *winners]:
        eid = bytes.fromhex(event.id)
        if eid in existing:
            continue
        if event.kind != DELETION_KIND and (eid, bytes.fromhex(event.pubkey)) in tombstones:
            continue
        key = event.replacement_key()
        if key is not None:
            through = address_tombs.get((key[0], bytes.fromhex(key[1]), tag_key(key[2])))
            if through is not None and event.created_at <= through:
                continue
        to_insert.append(event)

    seqs = {event_id: seq for event_id, (seq, _) in by_id.items()}
    _insert_rows(replica.pk, to_insert, seqs)

    # Deletions last, so they also hide what this very batch inserted.
    for event in (e for e in to_insert if e.kind == DELETION_KIND):
        removed += _apply_deletion(replica, event)
    return len(to_insert), removed


_EVENT_COLUMNS = ("replica_id", "eid", "pubkey", "kind", "created_at", "json", "seq")
_TAG_COLUMNS = ("event_id", "replica_id", "name", "value", "eid", "pubkey", "kind", "created_at")


def _bulk_insert(cursor: Any, table: str, columns: tuple[str, ...], rows: list[Any]) -> None:
    """Insert ``rows``: on Postgres with ``COPY … FROM STDIN`` (no per-value SQL quoting, one stream),
    elsewhere ``executemany``. Only fixed identifiers are interpolated."""
    names = ", ".join(columns)
    if connection.vendor == "postgresql":
        with cursor.cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
    else:
        placeholders = ", ".join(["%s"] * len(columns))
        cursor.executemany(f"INSERT INTO {table} ({names}) VALUES ({placeholders})", rows)  # noqa: S608


def _insert_rows(replica_id: int, events: list[Event], seqs: dict[str, int]) -> None:
    """Insert event and tag rows in bulk (the ORM's per-object SQL compilation cost more than the
    database work at sync batch sizes). The caller has excluded existing ids under the replica
    lock, so plain inserts cannot conflict; the unique constraints still guard against a bug."""
    if not events:
        return
    with connection.cursor() as cursor:
        _bulk_insert(
            cursor,
            ReplicaEvent._meta.db_table,
            _EVENT_COLUMNS,
            [
                (
                    replica_id,
                    bytes.fromhex(e.id),
                    bytes.fromhex(e.pubkey),
                    e.kind,
                    e.created_at,
                    e.to_json(),
                    seqs[e.id],
                )
                for e in events
            ],
        )
        tagged = [e for e in events if any(len(t) >= 2 for t in e.tags)]
        if not tagged:
            return
        pks = dict(
            (bytes(eid), pk)
            for eid, pk in ReplicaEvent.objects.filter(
                replica_id=replica_id, eid__in=[bytes.fromhex(e.id) for e in tagged]
            ).values_list("eid", "pk")
        )
        rows: list[tuple[Any, ...]] = []
        for e in tagged:
            eid = bytes.fromhex(e.id)
            pubkey = bytes.fromhex(e.pubkey)
            pk = pks[eid]
            rows.extend(
                (pk, replica_id, name, value, eid, pubkey, e.kind, e.created_at) for name, value in _tag_rows(e)
            )
        if rows:
            _bulk_insert(cursor, ReplicaTag._meta.db_table, _TAG_COLUMNS, rows)


def _apply_deletion(replica: Replica, deletion: Event) -> int:
    pubkey = bytes.fromhex(deletion.pubkey)
    targets = sorted({bytes.fromhex(v) for v in deletion.tag_values("e") if is_hex64(v)})
    removed = 0
    if targets:
        ReplicaDeletion.objects.bulk_create(
            [ReplicaDeletion(replica=replica, target=t, pubkey=pubkey) for t in targets], ignore_conflicts=True
        )
        removed += _delete_rows(replica, Q(eid__in=targets, pubkey=pubkey) & ~Q(kind=DELETION_KIND))
    for value in deletion.tag_values("a"):
        address = parse_address(value)
        if address is None or address[1] != deletion.pubkey:
            continue
        kind, _, d = address
        d_key = tag_key(d)
        tomb, created = ReplicaAddressDeletion.objects.get_or_create(
            replica=replica, kind=kind, pubkey=pubkey, d=d_key, defaults={"through": deletion.created_at}
        )
        if not created and tomb.through < deletion.created_at:
            tomb.through = deletion.created_at
            tomb.save(update_fields=["through"])
        head = ReplicaHead.objects.filter(replica=replica, kind=kind, pubkey=pubkey, d=d_key).first()
        if head is not None and head.created_at <= tomb.through:
            removed += _delete_rows(replica, Q(eid=bytes(head.eid)))
    return removed


def ingest_view_batch(
    *, relay_key: str, start_seq: int, batch: ViewBatch, view_core_key: str = "", now: datetime | None = None
) -> IngestResult:
    """Materialize one view batch and advance the checkpoint **in the same transaction**.

    A crash anywhere inside leaves both the rows and the checkpoint as they were, so the next run
    re-reads the same blocks; rows are idempotent (unique per replica and id), so nothing is lost or
    doubled. If another sync moved the checkpoint since ``start_seq`` was read, the batch is dropped
    (``IngestResult.checkpoint`` tells the caller where to continue).
    """
    now = now or timezone.now()
    verify = settings.HYPERTUNA_REPLICA_VERIFY_SIGNATURES
    with transaction.atomic():
        replica = Replica.objects.select_for_update().get(relay_key=relay_key)
        result = IngestResult(checkpoint=replica.checkpoint_seq)
        view_key = batch.view_core_key or view_core_key
        if view_key and replica.view_core_key and view_key != replica.view_core_key:
            result.notes.append("view core changed; restarting from block 0")
            replica.view_core_key = view_key
            replica.checkpoint_seq = 0
            replica.remote_length = 0
            replica.length_observations = []
            result.checkpoint = 0
            result.restarted = True
            _observe_length(replica, batch.length, now)
            _refresh_lag(replica, now)
            replica.save()
            return result
        if replica.checkpoint_seq != start_seq:
            result.notes.append("checkpoint moved by another sync; batch dropped")
            return result
        if batch.length < replica.checkpoint_seq:
            # The view is shorter than what we already read: it was truncated (an Autobase reorg of
            # unindexed blocks). Start over on it; see _link_view_core for why the rows stay.
            result.notes.append("view truncated; restarting from block 0")
            replica.checkpoint_seq = 0
            replica.remote_length = batch.length
            replica.length_observations = [[batch.length, _ms(now)]] if batch.length else []
            result.checkpoint = 0
            result.restarted = True
            _refresh_lag(replica, now)
            replica.save()
            return result
        if view_key and not replica.view_core_key:
            replica.view_core_key = view_key
        events, raw_deletes = _decode_entries(batch.entries, verify=verify, result=result)
        result.read = len(batch.entries)
        result.inserted, result.removed = materialize_events(replica, events, raw_deletes=raw_deletes)
        replica.event_count = max(0, replica.event_count + result.inserted - result.removed)
        replica.checkpoint_seq = batch.next_seq
        replica.synced_view_length = batch.length
        replica.last_synced_at = now
        replica.consecutive_failures = 0
        _observe_length(replica, batch.length, now)
        _refresh_lag(replica, now)
        replica.save()
        result.checkpoint = replica.checkpoint_seq
    return result


@dataclass(frozen=True)
class SyncPlan:
    relay_key: str
    view_core_key: str
    checkpoint: int


def begin_sync(*, relay_key: str, full: bool = False, now: datetime | None = None) -> SyncPlan:
    """Prepare a sync run: where to read from. ``full`` restarts from block 0 (rows stay; re-reading is
    idempotent), used after a suspected divergence or by ``manage.py replicas_sync --full``."""
    now = now or timezone.now()
    with transaction.atomic():
        _replica_for(relay_key)
        replica = Replica.objects.select_for_update().get(relay_key=relay_key)
        if full:
            replica.checkpoint_seq = 0
            _refresh_lag(replica, now)
        replica.last_sync_started_at = now
        replica.save()
        return SyncPlan(relay_key=relay_key, view_core_key=replica.view_core_key, checkpoint=replica.checkpoint_seq)


def record_sync_failure(*, relay_key: str, error: str, now: datetime | None = None) -> Replica | None:
    now = now or timezone.now()
    with transaction.atomic():
        replica = Replica.objects.select_for_update().filter(relay_key=relay_key).first()
        if replica is None:
            return None
        replica.consecutive_failures += 1
        replica.last_error = error[:2000]
        replica.last_error_at = now
        replica.state = derive_state(replica, now)
        replica.save()
    return replica


def refresh_states(*, now: datetime | None = None) -> int:
    """Re-derive the stored state of every replica (stale is a function of time). Returns changes."""
    now = now or timezone.now()
    changed = 0
    for replica in Replica.objects.all().iterator():
        state = derive_state(replica, now)
        if state != replica.state:
            Replica.objects.filter(pk=replica.pk).update(state=state)
            changed += 1
    return changed


# --- operator actions -------------------------------------------------------------------------------


def _enqueue_action(action: MirrorAction) -> None:
    from replicas import tasks

    transaction.on_commit(lambda: tasks.perform_mirror_action.delay(action.pk))


def request_gc(*, reason: str = "manual", requested_by: str = "") -> MirrorAction:
    """Record an operator GC request and ask the bridge (after commit) to run blind-peer hygiene."""
    with transaction.atomic():
        action = MirrorAction.objects.create(
            action=MirrorAction.Action.GC, reason=(reason or "manual")[:200], requested_by=requested_by[:150]
        )
        _enqueue_action(action)
    return action


def request_drop(*, core_key: str, reason: str = "manual", requested_by: str = "") -> MirrorAction:
    """Record an operator request to drop one mirrored core and ask the bridge to delete it."""
    normalized = normalize_core_key(core_key)
    if normalized is None:
        raise ApiError("invalid-core-key", "The mirror key must be 64-hex or a z-base-32 hypercore id.")
    with transaction.atomic():
        core = MirrorCore.objects.select_for_update().filter(core_key=normalized).first()
        if core is None:
            raise ApiError("mirror-not-found", "No mirror with this core key.", status=404)
        if core.state == MirrorCore.State.ACTIVE:
            core.state = MirrorCore.State.REMOVING
            core.removal_reason = (reason or "manual")[:200]
            core.save(update_fields=["state", "removal_reason"])
        action = MirrorAction.objects.create(
            action=MirrorAction.Action.DROP,
            core_key=normalized,
            reason=(reason or "manual")[:200],
            requested_by=requested_by[:150],
        )
        _enqueue_action(action)
    return action


def complete_mirror_action(
    *, action_id: int, ok: bool, result: dict[str, Any] | None = None, error: str = "", now: datetime | None = None
) -> MirrorAction:
    """Store the bridge's answer to an operator action (and, for a successful drop, the removal)."""
    now = now or timezone.now()
    with transaction.atomic():
        action = MirrorAction.objects.select_for_update().get(pk=action_id)
        action.status = MirrorAction.Status.DONE if ok else MirrorAction.Status.FAILED
        action.finished_at = now
        action.result = result or {}
        action.error = error[:2000]
        action.save()
        if action.action == MirrorAction.Action.DROP:
            core = MirrorCore.objects.select_for_update().filter(core_key=action.core_key).first()
            if core is not None and ok:
                core.state = MirrorCore.State.REMOVED
                core.removed_at = now
                core.save(update_fields=["state", "removed_at"])
            elif core is not None and core.state == MirrorCore.State.REMOVING:
                core.state = MirrorCore.State.ACTIVE  # the blind peer still holds it
                core.save(update_fields=["state"])
        elif ok:
            cutoff = now - timedelta(days=settings.HYPERTUNA_REPLICA_REMOVED_RETENTION_DAYS)
            pruned, _ = MirrorCore.objects.filter(state=MirrorCore.State.REMOVED, removed_at__lt=cutoff).delete()
            action.result = {**action.result, "prunedMirrorRows": pruned}
            action.save(update_fields=["result"])
    return action
