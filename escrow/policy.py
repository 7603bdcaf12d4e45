"""The global unlock policy as pure code: a snapshot in, a decision with *every* failed reason out.

No database, no clock, no settings access inside ``decide``: the service builds the snapshot (from the
escrow's own records plus the requester's evidence) and this module only judges it, so every rule is
tested in isolation. The requester's evidence can only add refusals; it can never override what the
escrow itself knows (the time since the worker's last signed deposit or heartbeat).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

# Evidence timestamps further in the future than this are treated as forged or from a broken clock.
FUTURE_SKEW = timedelta(seconds=5)

# Stable reason codes, in the order they are reported. Dashboards and alerts key on these strings.
NO_DEPOSIT = "no-deposit"
DEPOSIT_REVOKED = "deposit-revoked"
DEPOSIT_EXPIRED = "deposit-expired"
GATEWAY_WRITES_NOT_PERMITTED = "gateway-writes-not-permitted"
POLICY_VERSION_NOT_ACKNOWLEDGED = "policy-version-not-acknowledged"
DEPOSIT_KEY_RETIRED = "deposit-key-retired"
ROTATION_REQUIRED = "rotation-required"
WORKER_HEARTBEAT_RECENT = "worker-heartbeat-recent"
PEER_EVIDENCE_MISSING = "peer-evidence-missing"
PEERS_REPORTED_HEALTHY = "peers-reported-healthy"
MIRROR_EVIDENCE_MISSING = "mirror-evidence-missing"
MIRROR_EVIDENCE_INVALID = "mirror-evidence-invalid"
MIRROR_STALE = "mirror-stale"

REASONS: tuple[str, ...] = (
    NO_DEPOSIT,
    DEPOSIT_REVOKED,
    DEPOSIT_EXPIRED,
    GATEWAY_WRITES_NOT_PERMITTED,
    POLICY_VERSION_NOT_ACKNOWLEDGED,
    DEPOSIT_KEY_RETIRED,
    ROTATION_REQUIRED,
    WORKER_HEARTBEAT_RECENT,
    PEER_EVIDENCE_MISSING,
    PEERS_REPORTED_HEALTHY,
    MIRROR_EVIDENCE_MISSING,
    MIRROR_EVIDENCE_INVALID,
    MIRROR_STALE,
)


@dataclass(frozen=True)
class Policy:
    """The global policy, published (signed) at ``GET /policy``. Durations in seconds."""

    version: int
    heartbeat_silence: int
    mirror_max_age: int
    lease_ttl: int
    lease_max_ttl: int
    deposit_max_ttl: int

    def as_wire(self) -> dict[str, int]:
        return {
            "version": self.version,
            "heartbeatSilenceSeconds": self.heartbeat_silence,
            "mirrorMaxAgeSeconds": self.mirror_max_age,
            "leaseTtlSeconds": self.lease_ttl,
            "leaseMaxTtlSeconds": self.lease_max_ttl,
            "depositMaxTtlSeconds": self.deposit_max_ttl,
        }


@dataclass(frozen=True)
class DepositFacts:
    state: str  # "active", "revoked", "expired", "superseded"
    expires_at: datetime
    allow_gateway_writes: bool
    policy_version: int
    sealed_to_current_key: bool = True


@dataclass(frozen=True)
class Evidence:
    """What the requester reports. ``None`` means "no evidence", which never counts in favour."""

    healthy_peers: int | None = None
    mirror_fresh_at: datetime | None = None


@dataclass(frozen=True)
class Snapshot:
    now: datetime
    policy: Policy
    deposit: DepositFacts | None
    worker_last_seen_at: datetime | None
    rotation_required: bool
    evidence: Evidence = field(default_factory=Evidence)

    def as_audit(self) -> dict[str, Any]:
        """The policy inputs as recorded in the audit log (no key material exists here)."""
        last_seen_age = (self.now - self.worker_last_seen_at).total_seconds() if self.worker_last_seen_at else None
        mirror_age = (
            (self.now - self.evidence.mirror_fresh_at).total_seconds() if self.evidence.mirror_fresh_at else None
        )
        return {
            "policyVersion": self.policy.version,
            "depositState": self.deposit.state if self.deposit else None,
            "workerSilenceSeconds": None if last_seen_age is None else round(last_seen_age, 3),
            "healthyPeers": self.evidence.healthy_peers,
            "mirrorAgeSeconds": None if mirror_age is None else round(mirror_age, 3),
            "rotationRequired": self.rotation_required,
        }


@dataclass(frozen=True)
class Decision:
    granted: bool
    reasons: tuple[str, ...]


def decide(snapshot: Snapshot) -> Decision:
    """Grant only when every rule passes; otherwise list every rule that failed."""
    now, policy, deposit = snapshot.now, snapshot.policy, snapshot.deposit
    failed: set[str] = set()

    if deposit is None:
        failed.add(NO_DEPOSIT)
    else:
        if deposit.state == "revoked":
            failed.add(DEPOSIT_REVOKED)
        elif deposit.state != "active" or deposit.expires_at <= now:
            failed.add(DEPOSIT_EXPIRED)
        if not deposit.allow_gateway_writes:
            failed.add(GATEWAY_WRITES_NOT_PERMITTED)
        if deposit.policy_version != policy.version:
            failed.add(POLICY_VERSION_NOT_ACKNOWLEDGED)
        if not deposit.sealed_to_current_key:
            # Sealed to an escrow key this process no longer holds (key rotation): it cannot be opened.
            failed.add(DEPOSIT_KEY_RETIRED)
    if snapshot.rotation_required:
        failed.add(ROTATION_REQUIRED)

    # The escrow's own evidence: a worker that signed anything within the silence window is alive, and a
    # last-seen time in the future (clock trouble) counts as alive too.
    last_seen = snapshot.worker_last_seen_at
    if last_seen is not None and now - last_seen < timedelta(seconds=policy.heartbeat_silence):
        failed.add(WORKER_HEARTBEAT_RECENT)

    healthy = snapshot.evidence.healthy_peers
    if healthy is None:
        failed.add(PEER_EVIDENCE_MISSING)
    elif healthy > 0:
        failed.add(PEERS_REPORTED_HEALTHY)

    fresh_at = snapshot.evidence.mirror_fresh_at
    if fresh_at is None:
        failed.add(MIRROR_EVIDENCE_MISSING)
    elif fresh_at > now + FUTURE_SKEW:
        failed.add(MIRROR_EVIDENCE_INVALID)
    elif now - fresh_at > timedelta(seconds=policy.mirror_max_age):
        failed.add(MIRROR_STALE)

    reasons = tuple(reason for reason in REASONS if reason in failed)
    return Decision(granted=not reasons, reasons=reasons)
