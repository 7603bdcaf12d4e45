"""Materialized replica events: view batches in, NIP-01 visible events out, checkpoint in the same
transaction.

**Materialization rules** (applied at upsert time, order-independent, so the stored set equals
``hypertuna.nostr.visible_events`` of everything ever read, whatever order the view delivered it in):

- ephemeral kinds (20000-29999) are not stored;
- replaceable (0, 3, 10000-19999) and addressable (30000-39999, per ``d`` tag) coordinates keep one head
  (``ReplicaHead``: latest ``created_at``, ties → lowest id); only the head can be visible, and the head
  is remembered even when deleted so an older version read later never resurfaces;
- a kind-5 deletion stores tombstones: ``e`` tags hide that id if its author is the deleter and it is not
  itself a deletion (also when the target arrives later); ``a`` tags hide versions of the deleter's
  coordinate created at or before the deletion. Deletions themselves stay visible.

**Pending rows.** An event the gateway wrote under an escrow lease is materialized at once with
``pending=True`` (``replicas.pending``), under the same rules. When the view later delivers that event, its
row is not inserted again: it is flipped to ``pending=False`` and given its view ``seq``. Live delivery is by
``created_at``/id, not by ``seq``, so the flip sends nothing twice.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from hypertuna.nostr import Event, InvalidEvent, is_ephemeral_kind, is_hex64, verify_event
from hypertuna.nostr.events import newest_first_key
from hypertuna.nostr.visibility import parse_address
from replicas.keys import tag_key, to_ms
from replicas.models import (
    Replica,
    ReplicaAddressDeletion,
    ReplicaDeletion,
    ReplicaEvent,
    ReplicaHead,
    ReplicaTag,
)
from replicas.readiness import derive_state, observe_length, refresh_lag, replica_for
from replicas.sources import ViewBatch

DELETION_KIND = 5
_TAG_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


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
    replica: Replica, items: Iterable[tuple[int, Event]], *, raw_deletes: Iterable[bytes] = (), pending: bool = False
) -> tuple[int, int]:
    """Apply events to the replica (see the module docstring for the rules). Returns (inserted, removed).

    ``pending``: the events were written under a lease and not read from the view (rows are marked so);
    otherwise rows of these events that were stored pending are marked linearized at their view ``seq``.

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
    stored = [
        (bytes(e), was_pending)
        for e, was_pending in ReplicaEvent.objects.filter(replica=replica, eid__in=eids).values_list("eid", "pending")
    ]
    existing = {eid for eid, _ in stored}
    if not pending:
        # The view now holds events the gateway wrote under a lease: same row, now linearized (one UPDATE per
        # row; only this gateway's own writes are ever pending, a handful per batch).
        for eid in (eid for eid, was_pending in stored if was_pending):
            ReplicaEvent.objects.filter(replica=replica, eid=eid).update(pending=False, seq=by_id[eid.hex()][0])
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
    _insert_rows(replica.pk, to_insert, seqs, pending=pending)

    # Deletions last, so they also hide what this very batch inserted.
    for event in (e for e in to_insert if e.kind == DELETION_KIND):
        removed += _apply_deletion(replica, event)
    return len(to_insert), removed


_EVENT_COLUMNS = ("replica_id", "eid", "pubkey", "kind", "created_at", "json", "seq", "pending")
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


def _insert_rows(replica_id: int, events: list[Event], seqs: dict[str, int], *, pending: bool = False) -> None:
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
                    pending,
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
            observe_length(replica, batch.length, now)
            refresh_lag(replica, now)
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
            replica.length_observations = [[batch.length, to_ms(now)]] if batch.length else []
            result.checkpoint = 0
            result.restarted = True
            refresh_lag(replica, now)
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
        observe_length(replica, batch.length, now)
        refresh_lag(replica, now)
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
        replica_for(relay_key)
        replica = Replica.objects.select_for_update().get(relay_key=relay_key)
        if full:
            replica.checkpoint_seq = 0
            refresh_lag(replica, now)
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
