"""Blind-peer mirrors, replica readiness, and the materialized replica events.

Everything here is keyed by **relay key** (the string ``relays`` uses: 64-hex Autobase key or
``npub…:name``), never by a foreign key into ``relays``: a replica must outlive an expired registration
(ARCHITECTURE.md, dependency direction). Core keys are stored as 64 lowercase hex whatever form the
bridge or the worker sent (z-base-32 hypercore ids are converted), so the two sources always agree on
which core they talk about (reference §12 item 21: identifiers mismatch).

Materialized events follow performance-anchors §3.2, design A: one event table with B-tree indexes that
deliver "newest N" directly, and a denormalized tag table keyed ``(name, value, created_at DESC, id)`` so
a ``#x`` filter reads its top-N from the index. Only **visible** events are stored (NIP-01 replaceable
rules and NIP-09 deletions are applied at upsert time, see ``replicas.services``); the head and
tombstone tables keep just enough to make that order-independent.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils import timezone


class CoreType(models.TextChoices):
    AUTOBASE_SYSTEM = "autobase-system", "Autobase system core"
    AUTOBASE_VIEW = "autobase-view", "Autobase view (Hyperbee 'autobee')"
    AUTOBASE_WRITER = "writer", "Autobase writer (oplog) core"
    HYPERDRIVE_METADATA = "hyperdrive-metadata", "Hyperdrive metadata core"
    HYPERDRIVE_BLOBS = "hyperdrive-blobs", "Hyperdrive blobs core"
    PFP_DRIVE = "pfp-drive", "Profile-picture drive core"
    UNKNOWN = "unknown", "Unknown (reported by the blind peer only)"


class MirrorCore(models.Model):
    """One core the gateway's blind peer keeps, with what the bridge and the owning worker said about it.

    ``mirrored_length`` is what the blind peer holds contiguously; ``remote_length`` is the longest
    length the owner announced (bridge progress ``remoteLength`` or the worker's signed metadata).
    """

    class State(models.TextChoices):
        ACTIVE = "active", "Mirrored"
        REMOVING = "removing", "Drop requested"
        REMOVED = "removed", "Removed from the blind peer"

    core_key = models.CharField(max_length=64, unique=True, help_text="64 lowercase hex")
    relay_key = models.CharField(max_length=200, blank=True, db_index=True)
    public_identifier = models.CharField(max_length=200, blank=True)
    core_type = models.CharField(max_length=32, choices=CoreType.choices, default=CoreType.UNKNOWN, db_index=True)
    owner_peer_key = models.CharField(max_length=64, blank=True, db_index=True)
    referrer = models.CharField(max_length=64, blank=True, help_text="blind-peer referrer (hex), when given")
    announce = models.BooleanField(default=False)
    priority = models.IntegerField(default=0)
    mirrored_length = models.PositiveBigIntegerField(default=0, help_text="contiguous length at the blind peer")
    remote_length = models.PositiveBigIntegerField(default=0, help_text="longest length the owner announced")
    state = models.CharField(max_length=16, choices=State.choices, default=State.ACTIVE, db_index=True)
    reported_by_bridge = models.BooleanField(default=False)
    reported_by_worker = models.BooleanField(default=False)
    declared_by_registration = models.BooleanField(default=False, db_index=True, help_text="listed in relayCores")
    role = models.CharField(max_length=64, blank=True, help_text="role in relayCores")
    declared_at = models.DateTimeField(null=True, blank=True, help_text="last registration that listed it")
    first_seen_at = models.DateTimeField(default=timezone.now)
    last_activity_at = models.DateTimeField(default=timezone.now, db_index=True, help_text="last add/progress")
    # Lag bookkeeping (not escrow evidence): the last moment the blind peer was known to hold everything the
    # owner had announced, and since when it has been behind, if it is.
    caught_up_at = models.DateTimeField(null=True, blank=True)
    behind_since = models.DateTimeField(null=True, blank=True)
    # Escrow evidence: the length a connected owner announced at its last observed contact, and when. Only
    # a live observation sets these (never a bridge re-scan or restart), so they never look fresher than
    # the owner's real last contact.
    announced_length = models.PositiveBigIntegerField(
        default=0, help_text="length the owner announced at its last observed contact"
    )
    announced_at = models.DateTimeField(null=True, blank=True, help_text="the owner's last observed contact")
    removed_at = models.DateTimeField(null=True, blank=True)
    removal_reason = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["relay_key", "core_type", "core_key"]

    def __str__(self) -> str:
        return f"{self.core_type} {self.core_key[:16]}…"


class Replica(models.Model):
    """Readiness and sync checkpoint of one relay's materialized replica.

    ``checkpoint_seq`` is the next view block to read: every block below it is materialized, and it only
    moves in the same transaction as the rows it covers (crash-safe, see ``services.ingest_view_batch``).
    """

    class State(models.TextChoices):
        PENDING = "pending", "Pending (nothing synced yet)"
        SYNCING = "syncing", "Syncing (behind, within the stale threshold)"
        READY = "ready", "Ready (caught up)"
        STALE = "stale", "Stale (behind for longer than the stale threshold)"
        FAILED = "failed", "Failed (sync keeps erroring)"

    relay_key = models.CharField(max_length=200, unique=True)
    public_identifier = models.CharField(max_length=200, blank=True, db_index=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING, db_index=True)
    view_core_key = models.CharField(max_length=64, blank=True, help_text="view core being materialized")
    checkpoint_seq = models.PositiveBigIntegerField(default=0)
    synced_view_length = models.PositiveBigIntegerField(default=0, help_text="view length seen by the last read")
    remote_length = models.PositiveBigIntegerField(default=0, help_text="longest view length known to exist")
    # [[length, first_seen_ms], ...] ascending: when each announced length was first observed. Used to
    # date the oldest entry not yet materialized (real lag); pruned below the checkpoint.
    length_observations = models.JSONField(default=list, blank=True)
    behind_since = models.DateTimeField(null=True, blank=True, db_index=True)
    caught_up_at = models.DateTimeField(null=True, blank=True)
    last_synced_at = models.DateTimeField(null=True, blank=True)
    last_sync_started_at = models.DateTimeField(null=True, blank=True)
    event_count = models.BigIntegerField(default=0)
    consecutive_failures = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["relay_key"]

    def __str__(self) -> str:
        return self.public_identifier or self.relay_key

    @property
    def lag_entries(self) -> int:
        return max(0, self.remote_length - self.checkpoint_seq)


class ReplicaEvent(models.Model):
    """A visible event of a relay's replica. ``json`` is sent to clients verbatim."""

    replica = models.ForeignKey(Replica, on_delete=models.CASCADE, related_name="events", db_index=False)
    eid = models.BinaryField(max_length=32, help_text="event id, 32 bytes")
    pubkey = models.BinaryField(max_length=32)
    kind = models.IntegerField()
    created_at = models.BigIntegerField()
    json = models.TextField()
    seq = models.PositiveBigIntegerField(default=0, help_text="view block it was read from")
    pending = models.BooleanField(
        default=False, help_text="written under a gateway lease; not yet read back from the relay's view"
    )

    class Meta:
        constraints = [models.UniqueConstraint(fields=["replica", "eid"], name="replica_event_once")]
        indexes = [
            # Newest first, and covering: a filter over many authors/kinds first walks the newest events here
            # and checks pubkey and kind without touching the table (queries.query_events, the probe).
            # Key columns rather than INCLUDE, which SQLite lacks.
            models.Index(fields=["replica", "-created_at", "eid", "pubkey", "kind"], name="replica_ev_time_cover"),
            models.Index(fields=["replica", "kind", "-created_at", "eid"], name="replica_ev_kind"),
            models.Index(fields=["replica", "pubkey", "-created_at", "eid"], name="replica_ev_author"),
            models.Index(fields=["replica", "pubkey", "kind", "-created_at", "eid"], name="replica_ev_author_kind"),
            # Lease-written events awaiting a worker are few; the scrape-time backlog gauge reads only these.
            models.Index(fields=["replica"], condition=Q(pending=True), name="replica_ev_pending"),
        ]

    def __str__(self) -> str:
        return bytes(self.eid).hex()


class ReplicaTag(models.Model):
    """One single-letter tag value of a visible event, denormalized (kind, pubkey, created_at, id) so the
    index answers "newest N with this tag" without touching the event table (anchors §3.2 rule 1).

    ``value`` is the tag value, or ``"\\x01" + sha256`` for values that are long, contain NUL (Postgres
    text cannot) or start with ``\\x01`` (see ``services.tag_key``).
    """

    # No separate index: the unique (event, name, value) constraint leads with the event.
    event = models.ForeignKey(ReplicaEvent, on_delete=models.CASCADE, related_name="tag_rows", db_index=False)
    replica = models.ForeignKey(Replica, on_delete=models.CASCADE, related_name="+", db_index=False)
    name = models.CharField(max_length=1)
    value = models.TextField()
    eid = models.BinaryField(max_length=32)
    pubkey = models.BinaryField(max_length=32)
    kind = models.IntegerField()
    created_at = models.BigIntegerField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["event", "name", "value"], name="replica_tag_once")]
        indexes = [
            models.Index(fields=["replica", "name", "value", "-created_at", "eid"], name="replica_tag_time"),
            models.Index(fields=["replica", "name", "value", "kind", "-created_at", "eid"], name="replica_tag_kind"),
        ]

    def __str__(self) -> str:
        return f"#{self.name}={self.value[:40]}"


class ReplicaHead(models.Model):
    """The retained version of each replaceable/addressable coordinate, even when it is deleted, so an
    older version read later never resurfaces (NIP-01: latest ``created_at``, ties → lowest id)."""

    replica = models.ForeignKey(Replica, on_delete=models.CASCADE, related_name="+", db_index=False)
    kind = models.IntegerField()
    pubkey = models.BinaryField(max_length=32)
    d = models.TextField(blank=True, help_text="d tag (tag_key form); empty for replaceable kinds")
    created_at = models.BigIntegerField()
    eid = models.BinaryField(max_length=32)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["replica", "kind", "pubkey", "d"], name="replica_head_once")]

    def __str__(self) -> str:
        return f"{self.kind}:{bytes(self.pubkey).hex()}:{self.d[:40]}"


class ReplicaDeletion(models.Model):
    """NIP-09 ``e``-tag tombstone: ``target`` is hidden if (and only if) its author is ``pubkey`` and it
    is not itself a deletion — checked when the target arrives, whatever the order."""

    replica = models.ForeignKey(Replica, on_delete=models.CASCADE, related_name="+", db_index=False)
    target = models.BinaryField(max_length=32)
    pubkey = models.BinaryField(max_length=32)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["replica", "target", "pubkey"], name="replica_deletion_once")]

    def __str__(self) -> str:
        return f"deleted {bytes(self.target).hex()}"


class ReplicaAddressDeletion(models.Model):
    """NIP-09 ``a``-tag tombstone: versions of the coordinate created at or before ``through`` are hidden."""

    replica = models.ForeignKey(Replica, on_delete=models.CASCADE, related_name="+", db_index=False)
    kind = models.IntegerField()
    pubkey = models.BinaryField(max_length=32)
    d = models.TextField(blank=True)
    through = models.BigIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["replica", "kind", "pubkey", "d"], name="replica_addr_deletion_once")
        ]

    def __str__(self) -> str:
        return f"deleted {self.kind}:{bytes(self.pubkey).hex()}:{self.d[:40]} through {self.through}"


class MirrorAction(models.Model):
    """An operator's request to the blind peer (GC run, drop a mirror): recorded before the bridge is
    asked, then completed with the bridge's answer. Read-only history in the admin."""

    class Action(models.TextChoices):
        GC = "gc", "Garbage-collect"
        DROP = "drop", "Drop a mirror"

    class Status(models.TextChoices):
        REQUESTED = "requested", "Requested"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    action = models.CharField(max_length=8, choices=Action.choices)
    core_key = models.CharField(max_length=64, blank=True)
    reason = models.CharField(max_length=200, blank=True)
    requested_by = models.CharField(max_length=150, blank=True)
    requested_at = models.DateTimeField(default=timezone.now, db_index=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.REQUESTED, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    result = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-requested_at"]
        constraints = [
            models.CheckConstraint(condition=Q(action="gc") | ~Q(core_key=""), name="mirror_drop_needs_core"),
        ]

    def __str__(self) -> str:
        return f"{self.action} {self.core_key[:16]} ({self.status})"


class GatewayDrive(models.Model):
    """A Hyperdrive the gateway owns for one relay (files and artifacts written while its workers were
    offline). The drive itself lives in the bridge's corestore; this row records its key so a returning
    worker can be told what to replicate, and survives a bridge restart with it."""

    relay_key = models.CharField(max_length=200, unique=True)
    identifier = models.CharField(max_length=200, blank=True, help_text="folder the relay's files go in")
    drive_key = models.CharField(max_length=64, help_text="metadata core key, 64 lowercase hex")
    blobs_key = models.CharField(max_length=64, blank=True)
    version = models.PositiveBigIntegerField(default=0, help_text="drive version after the last write")
    mirrored = models.BooleanField(default=False, help_text="the gateway's blind peer accepted both cores")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["relay_key"]

    def __str__(self) -> str:
        return f"gateway drive {self.drive_key[:16]} of {self.relay_key[:16]}"


class PendingWrite(models.Model):
    """A file or HTTP artifact the gateway stored for a relay while no worker answered, until the relay's
    worker acknowledged the push and completed its resync. Leased EVENTs are not repeated here: they are
    the relay's ``ReplicaEvent`` rows with ``pending=True`` (``replicas.drives.pending_counts``); one open row of
    type ``event`` per relay only marks that its worker must be told of them."""

    class Type(models.TextChoices):
        EVENT = "event", "Nostr event"
        DRIVE = "drive", "Drive upload"
        HTTP_JOIN = "http-join", "Join request artifact"
        HTTP_CALLBACK = "http-callback", "Auth callback artifact"

    relay_key = models.CharField(max_length=200, db_index=True)
    write_type = models.CharField(max_length=16, choices=Type.choices)
    reference = models.CharField(max_length=300, help_text="drive path or event id")
    drive_key = models.CharField(max_length=64, blank=True)
    drive_version = models.PositiveBigIntegerField(default=0)
    size = models.PositiveBigIntegerField(default=0)
    lease_id = models.CharField(max_length=128, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    cleared_at = models.DateTimeField(null=True, blank=True, db_index=True)
    push_attempts = models.PositiveIntegerField(default=0)
    next_push_at = models.DateTimeField(null=True, blank=True)
    last_push_at = models.DateTimeField(null=True, blank=True)
    last_push_error = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["relay_key"], condition=Q(cleared_at__isnull=True), name="pending_write_open"),
        ]

    def __str__(self) -> str:
        return f"{self.write_type} {self.reference[:40]} for {self.relay_key[:16]}"
