"""Relays hosted by workers, their registrations, peers, client tokens and the host policy.

Postgres (or SQLite in the embedded default) is the source of truth; the cache holds a hot copy of each
live relay for multi-node gateways (see ``relays.selectors``).
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils import timezone


class Relay(models.Model):
    """A relay known to the gateway. Rows outlive registrations: an expired relay keeps its tokens and
    history, and becomes live again when a worker re-registers it."""

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        EXPIRED = "expired", "Expired (no registration within TTL)"
        UNREGISTERED = "unregistered", "Unregistered by its worker"

    relay_key = models.CharField(max_length=200, unique=True, help_text="64-hex Autobase key or npub…:name")
    public_identifier = models.CharField(max_length=200, blank=True, db_index=True)
    gateway_path = models.CharField(max_length=200, blank=True, db_index=True)
    name = models.CharField(max_length=200, blank=True)
    description = models.TextField(blank=True)
    requires_auth = models.BooleanField(default=True)
    owner_peer_key = models.CharField(max_length=64, blank=True, db_index=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE, db_index=True)
    metadata = models.JSONField(default=dict, blank=True)
    escrow = models.JSONField(default=dict, blank=True, help_text="Escrow summary reported by the worker")
    first_registered_at = models.DateTimeField(default=timezone.now)
    last_registered_at = models.DateTimeField(default=timezone.now, db_index=True)
    expires_at = models.DateTimeField(db_index=True)
    unregistered_at = models.DateTimeField(null=True, blank=True)
    # Tokens carry a per-relay sequence; revoking "everything up to N" bumps this cut-off so a single
    # update invalidates any number of outstanding tokens, including ones issued by other nodes.
    token_sequence = models.PositiveBigIntegerField(default=0)
    revoked_through_sequence = models.PositiveBigIntegerField(default=0)

    class Meta:
        ordering = ["relay_key"]

    def __str__(self) -> str:
        return self.public_identifier or self.relay_key

    @property
    def is_live(self) -> bool:
        return self.status == self.Status.ACTIVE and self.expires_at > timezone.now()


class Registration(models.Model):
    """One accepted signed registration (history, and the database-level nonce replay guard)."""

    relay = models.ForeignKey(Relay, on_delete=models.CASCADE, related_name="registrations")
    nonce = models.CharField(max_length=64)
    issued_at = models.DateTimeField()
    received_at = models.DateTimeField(default=timezone.now, db_index=True)
    peers = models.JSONField(default=list)
    payload = models.JSONField(help_text="The registration exactly as the worker signed it")
    client_ip = models.GenericIPAddressField(null=True, blank=True)
    blind_peering_key = models.CharField(
        max_length=64,
        blank=True,
        db_index=True,
        help_text="blindPeeringPublicKey announced (hex), trusted for this relay's cores while live",
    )

    class Meta:
        ordering = ["-received_at"]
        constraints = [models.UniqueConstraint(fields=["relay", "nonce"], name="registration_nonce_once")]

    def __str__(self) -> str:
        return f"{self.relay_id}@{self.received_at:%Y-%m-%d %H:%M:%S}"


class Peer(models.Model):
    """A worker's Hyperswarm key serving a relay, with the health facts the router uses."""

    relay = models.ForeignKey(Relay, on_delete=models.CASCADE, related_name="peers")
    peer_key = models.CharField(max_length=64, db_index=True)
    first_seen_at = models.DateTimeField(default=timezone.now)
    last_seen_at = models.DateTimeField(default=timezone.now, help_text="Last registration listing this peer")
    last_healthy_at = models.DateTimeField(null=True, blank=True)
    unreachable_since = models.DateTimeField(null=True, blank=True)
    latency_ms = models.FloatField(null=True, blank=True)
    active = models.BooleanField(default=True, help_text="Listed by the relay's latest registration")
    blind_peering_key = models.CharField(
        max_length=64,
        blank=True,
        help_text="blindPeeringPublicKey of this peer's swarm registration (hex)",
    )

    class Meta:
        ordering = ["relay", "peer_key"]
        constraints = [models.UniqueConstraint(fields=["relay", "peer_key"], name="peer_once_per_relay")]

    def __str__(self) -> str:
        return f"{self.peer_key[:16]}… ({self.relay_id})"


class RelayToken(models.Model):
    """A client access token. Only its SHA-256 digest is stored: the token itself is a bearer secret."""

    class State(models.TextChoices):
        ACTIVE = "active", "Active"
        SUPERSEDED = "superseded", "Superseded by a refresh"
        REVOKED = "revoked", "Revoked"

    relay = models.ForeignKey(Relay, on_delete=models.CASCADE, related_name="tokens")
    digest = models.CharField(max_length=64, unique=True)
    sequence = models.PositiveBigIntegerField()
    pubkey = models.CharField(max_length=64, blank=True)
    scope = models.CharField(max_length=64, default="relay-access")
    issued_at = models.DateTimeField()
    expires_at = models.DateTimeField(db_index=True)
    refresh_after = models.DateTimeField()
    state = models.CharField(max_length=16, choices=State.choices, default=State.ACTIVE, db_index=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revocation_reason = models.CharField(max_length=200, blank=True)
    refreshed_from = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="refreshed_to"
    )
    # Usage, flushed periodically from hot counters (never written per frame).
    last_used_at = models.DateTimeField(null=True, blank=True)
    connections = models.PositiveBigIntegerField(default=0)
    frames = models.PositiveBigIntegerField(default=0)
    bytes_in = models.PositiveBigIntegerField(default=0)
    bytes_out = models.PositiveBigIntegerField(default=0)

    class Meta:
        ordering = ["-issued_at"]
        indexes = [models.Index(fields=["relay", "state"], name="token_relay_state")]

    def __str__(self) -> str:
        return f"token #{self.sequence} for {self.relay_id}"


class HostPolicy(models.Model):
    """Who may register relays. One row (pk=1); see ``selectors.host_policy``."""

    class Mode(models.TextChoices):
        OPEN = "open", "Open: any worker holding the shared secret"
        ALLOWLIST = "allowlist", "Allowlist: only listed owners"
        BLOCKLIST = "blocklist", "Blocklist: everyone but listed owners"

    mode = models.CharField(max_length=16, choices=Mode.choices, default=Mode.OPEN)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "host policy"
        constraints = [models.CheckConstraint(condition=Q(id=1), name="host_policy_singleton")]

    def __str__(self) -> str:
        return f"Host policy: {self.get_mode_display()}"


class HostRule(models.Model):
    """An owner identity (swarm peer key hex, Nostr pubkey hex or npub) on the allow- or blocklist."""

    class Action(models.TextChoices):
        ALLOW = "allow", "Allow"
        BLOCK = "block", "Block"

    identity = models.CharField(max_length=100)
    action = models.CharField(max_length=8, choices=Action.choices)
    note = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["action", "identity"]
        constraints = [models.UniqueConstraint(fields=["identity", "action"], name="host_rule_once")]

    def __str__(self) -> str:
        return f"{self.action} {self.identity}"


class RelayPath(models.Model):
    """A client path (``metadata.gatewayPath``, a path alias, or the relay key's own path) and the one relay
    it belongs to. The unique constraint is the guarantee that the first claim wins: a later registration
    naming a path held by another relay is refused (409 ``gateway-path-taken``); only an operator moves a
    path (``relays.paths.reassign_path``, recorded in ``PathReassignment``). Claims outlive registrations,
    so a path cannot be taken while its relay is offline."""

    class Source(models.TextChoices):
        KEY = "key", "Relay key"
        GATEWAY_PATH = "gateway-path", "gatewayPath"
        ALIAS = "alias", "Path alias"
        OPERATOR = "operator", "Assigned by an operator"

    path = models.CharField(max_length=200, unique=True, help_text="Canonical form: npub…/name, lower-case hex")
    relay = models.ForeignKey(Relay, on_delete=models.CASCADE, related_name="paths")
    source = models.CharField(max_length=16, choices=Source.choices)
    claimed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["path"]

    def __str__(self) -> str:
        return f"/{self.path}"


class PathReassignment(models.Model):
    """Audit row of an operator moving a path to another relay (append-only in the admin)."""

    path = models.CharField(max_length=200, db_index=True)
    from_relay_key = models.CharField(max_length=200, blank=True)
    to_relay_key = models.CharField(max_length=200)
    operator = models.CharField(max_length=150)
    reason = models.CharField(max_length=200)
    at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-at"]

    def __str__(self) -> str:
        return f"/{self.path}: {self.from_relay_key or '(unclaimed)'} → {self.to_relay_key}"


class StatSample(models.Model):
    """One sample of the gateway's activity, for the dashboard's charts (``relays.stats``).

    Minute rows are written by the beat (``collect-stats``, every minute) and kept a day; hour rows are
    rolled up from them and kept 30 days, so storage stays bounded. Counts (``frames``, fallbacks) are
    what happened within the ``seconds`` the row covers; ``sessions`` and ``max_lag_ms`` are levels: the
    value at sampling time in a minute row, the highest one in an hour row."""

    class Resolution(models.TextChoices):
        MINUTE = "minute", "Minute sample"
        HOUR = "hour", "Hourly rollup"

    resolution = models.CharField(max_length=8, choices=Resolution.choices, default=Resolution.MINUTE)
    at = models.DateTimeField(help_text="Sampling time (minute rows) or the hour's start (hour rows)")
    seconds = models.FloatField(default=0, help_text="Time the counts cover")
    sessions = models.PositiveIntegerField(default=0)
    frames = models.PositiveBigIntegerField(default=0, help_text="Client frames forwarded to workers")
    fallback_reads = models.PositiveBigIntegerField(default=0, help_text="REQs answered from a replica")
    fallback_writes = models.PositiveBigIntegerField(default=0, help_text="EVENTs received with no worker")
    max_lag_ms = models.PositiveBigIntegerField(default=0, help_text="Worst replica lag")
    samples = models.PositiveIntegerField(default=1, help_text="Minute rows an hour row was rolled up from")

    class Meta:
        ordering = ["-at"]
        # The unique constraint's index also serves every read (by resolution, a time range).
        constraints = [models.UniqueConstraint(fields=["resolution", "at"], name="stat_sample_once")]

    def __str__(self) -> str:
        return f"{self.resolution} sample at {self.at:%Y-%m-%d %H:%M:%S}"
