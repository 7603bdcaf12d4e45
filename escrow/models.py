"""Escrow state: worker bindings, sealed deposits, leases, idempotency records and the audit chain.

Everything is keyed by relay key; there is no foreign key into ``relays`` because the escrow may run with
its own database. The invariants that matter for safety are database constraints, not Python checks:

- at most one *active* deposit and at most one *active* lease per relay (partial unique indexes, which
  both Postgres and SQLite enforce);
- a lease's fencing counter is unique per relay and only grows (it comes from the binding row, updated
  under that row's lock);
- audit rows have a gapless unique ``seq`` and cannot be updated or deleted (triggers, see migration 0002).

No model stores or prints key material in clear: deposits hold the *sealed* package only, ``__str__``
shows identifiers.
"""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q


class WorkerBinding(models.Model):
    """Which worker signing key speaks for a relay, and the escrow's own evidence of that worker's liveness.

    The worker key is pinned by the first accepted deposit for the relay (trust on first use). Only an
    operator can re-pin it (``services.rebind_worker``); a deposit, heartbeat or revoke signed by any
    other key is refused, so one worker cannot deposit for, revoke, or keep alive another worker's relay.
    """

    relay_key = models.CharField(max_length=200, unique=True)
    worker_key = models.CharField(max_length=64, db_index=True, help_text="Ed25519 public key, hex")
    owner_identity = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()
    last_seen_at = models.DateTimeField(help_text="Escrow clock at the worker's last signed deposit or heartbeat")
    last_heartbeat_at = models.DateTimeField(null=True, blank=True)
    # Heartbeats and revokes carry the worker's millisecond clock; each must be strictly newer than the
    # last accepted one, which makes replays useless without a nonce cache.
    last_signed_ms = models.BigIntegerField(default=0)
    rotation_required = models.BooleanField(
        default=False, help_text="A released writer key must be replaced before the next unlock"
    )
    fence = models.BigIntegerField(default=0, help_text="Last fencing counter handed out for this relay")

    class Meta:
        ordering = ["relay_key"]

    def __str__(self) -> str:
        return f"binding {self.relay_key}"


class Deposit(models.Model):
    """One sealed gateway-writer package. Only the sealed box is stored; only the escrow key opens it."""

    class State(models.TextChoices):
        ACTIVE = "active", "Active"
        SUPERSEDED = "superseded", "Superseded by a newer deposit"
        REVOKED = "revoked", "Revoked"
        EXPIRED = "expired", "Expired"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    relay_key = models.CharField(max_length=200, db_index=True)
    worker_key = models.CharField(max_length=64)
    owner_identity = models.CharField(max_length=200, blank=True)
    writer_public_key = models.CharField(max_length=64)
    sealed_secret = models.BinaryField(help_text="SealedBox to the escrow key; never shown")
    escrow_key_id = models.CharField(max_length=16)
    policy_version = models.PositiveIntegerField()
    allow_gateway_writes = models.BooleanField(default=True)
    issued_at = models.DateTimeField(help_text="Worker clock, as signed")
    expires_at = models.DateTimeField(db_index=True)
    created_at = models.DateTimeField()
    state = models.CharField(max_length=16, choices=State.choices, default=State.ACTIVE, db_index=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    end_reason = models.CharField(max_length=64, blank=True)
    released_at = models.DateTimeField(null=True, blank=True, help_text="First time a lease released this key")

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["relay_key"], condition=Q(state="active"), name="escrow_one_active_deposit_per_relay"
            ),
        ]

    def __str__(self) -> str:
        return f"deposit {self.id} for {self.relay_key}"


class Lease(models.Model):
    """A time-limited release of a deposit's writer secret to one gateway session key."""

    class State(models.TextChoices):
        ACTIVE = "active", "Active"
        REVOKED = "revoked", "Revoked"
        EXPIRED = "expired", "Expired"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    relay_key = models.CharField(max_length=200, db_index=True)
    deposit = models.ForeignKey(Deposit, on_delete=models.PROTECT, related_name="leases")
    fence = models.BigIntegerField()
    requester = models.CharField(max_length=200, help_text="Client certificate identity of the gateway")
    session_key_hash = models.CharField(max_length=64)
    issued_at = models.DateTimeField()
    expires_at = models.DateTimeField(db_index=True)
    max_expires_at = models.DateTimeField()
    renewals = models.PositiveIntegerField(default=0)
    state = models.CharField(max_length=16, choices=State.choices, default=State.ACTIVE, db_index=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    end_reason = models.CharField(max_length=64, blank=True)
    evidence = models.JSONField(default=dict, help_text="Policy inputs at grant time")

    class Meta:
        ordering = ["-issued_at"]
        constraints = [
            # The invariant "never two usable leases for one relay" lives here, not in a Python lock: two
            # concurrent grants that both passed their checks cannot both commit.
            models.UniqueConstraint(
                fields=["relay_key"], condition=Q(state="active"), name="escrow_one_active_lease_per_relay"
            ),
            models.UniqueConstraint(fields=["relay_key", "fence"], name="escrow_lease_fence_unique"),
            models.CheckConstraint(
                condition=Q(expires_at__lte=models.F("max_expires_at")), name="escrow_lease_within_max"
            ),
        ]

    def __str__(self) -> str:
        return f"lease {self.id} for {self.relay_key}"


class IdempotencyRecord(models.Model):
    """The first response to a deposit, replayed for retries with the same (worker key, idempotency key).

    The stored response never contains key material (a deposit response is identifiers only).
    """

    worker_key = models.CharField(max_length=64)
    key = models.CharField(max_length=64)
    request_digest = models.CharField(max_length=64)
    status_code = models.PositiveSmallIntegerField()
    response = models.JSONField()
    created_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["worker_key", "key"], name="escrow_idempotency_once")]

    def __str__(self) -> str:
        return f"idempotency {self.key}"


class AuditEntry(models.Model):
    """One link of the audit hash chain. Append-only (database triggers refuse UPDATE and DELETE)."""

    class Action(models.TextChoices):
        DEPOSIT = "deposit", "Deposit"
        HEARTBEAT_ROTATION = "rotation", "Rotation (worker reconnected)"
        UNLOCK_GRANTED = "unlock-granted", "Unlock granted"
        UNLOCK_REFUSED = "unlock-refused", "Unlock refused"
        RENEW = "renew", "Renew"
        REVOKE = "revoke", "Revoke"
        EXPIRE = "expire", "Expiry"
        REBIND = "rebind", "Worker key re-pinned by an operator"

    seq = models.BigIntegerField(unique=True)
    occurred_at = models.DateTimeField(db_index=True)
    action = models.CharField(max_length=32, choices=Action.choices, db_index=True)
    actor = models.CharField(max_length=200)
    relay_key = models.CharField(max_length=200, blank=True, db_index=True)
    lease_id = models.CharField(max_length=64, blank=True, db_index=True)
    deposit_id = models.CharField(max_length=64, blank=True)
    reason = models.CharField(max_length=500, blank=True)
    details = models.JSONField(default=dict)
    prev_hash = models.CharField(max_length=64)
    entry_hash = models.CharField(max_length=64, unique=True)

    class Meta:
        ordering = ["seq"]
        verbose_name_plural = "audit entries"

    def __str__(self) -> str:
        return f"#{self.seq} {self.action} {self.relay_key}"


class AuditHead(models.Model):
    """The chain head (one row). Appends lock it ``FOR UPDATE``, which serializes chain positions."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    seq = models.BigIntegerField(default=0)
    entry_hash = models.CharField(max_length=64)

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(id=1), name="escrow_audit_head_singleton")]

    def __str__(self) -> str:
        return f"audit head #{self.seq}"


class AuditCheckpoint(models.Model):
    """An Ed25519-signed statement "the chain had this hash at this seq", also exported as a file."""

    seq = models.BigIntegerField(unique=True)
    entry_hash = models.CharField(max_length=64)
    signed_at = models.DateTimeField()
    key_id = models.CharField(max_length=16)
    signature = models.CharField(max_length=128)

    class Meta:
        ordering = ["-seq"]

    def __str__(self) -> str:
        return f"checkpoint #{self.seq}"


class AuditVerification(models.Model):
    """The outcome of each ``escrow_audit verify`` run (read by the metrics collector at scrape time)."""

    ran_at = models.DateTimeField(db_index=True)
    ok = models.BooleanField()
    entries = models.BigIntegerField(default=0)
    checkpoints = models.IntegerField(default=0)
    first_bad_seq = models.BigIntegerField(null=True, blank=True)
    problem = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-ran_at"]

    def __str__(self) -> str:
        return f"audit verification {self.ran_at:%Y-%m-%d %H:%M:%S} {'ok' if self.ok else 'FAILED'}"
