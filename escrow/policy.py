"""The global unlock policy as pure code: a snapshot in, a decision with *every* failed reason out.

No database, no clock, no settings access inside ``decide``: the service builds the snapshot (from the
escrow's own records plus the requester's evidence) and this module only judges it, so every rule is
tested in isolation. The requester's evidence can only add refusals; it can never override what the
escrow itself knows (the time since the worker's last signed deposit or heartbeat).

Mirror evidence is judged at the worker's last contact, not against the escrow's clock: the gateway
reports when it last observed the worker (``announced_at``), the length the worker announced then and the
length its mirror holds. The mirror is complete when it holds everything announced then
(``mirror-incomplete`` otherwise), and that observation is recent enough when it is at most
``mirror_max_age`` older than the worker's last signed contact with the escrow (``mirror-stale``
otherwise). A mirror that was complete when the worker left therefore stays eligible for the whole
outage, until the deposit expires.
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
MIRROR_INCOMPLETE = "mirror-incomplete"
MIRROR_STALE = "mirror-stale"

# The largest core length the evidence may name (JavaScript's Number.MAX_SAFE_INTEGER: the bridge reads
# lengths as JS numbers, so anything above is not a length it observed).
MAX_LENGTH = 2**53 - 1

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
    MIRROR_INCOMPLETE,
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
    created_at: datetime | None = None


@dataclass(frozen=True)
class MirrorEvidence:
    """The gateway's last observed contact with the worker, and its mirror measured against it.

    ``announced_length`` is what the worker announced at that contact and ``mirrored_length`` what the
    gateway's blind peer holds of the same core. Both ``None``: the older ``mirrorFreshAt`` form, which
    carries no lengths and is taken as complete.
    """

    announced_at: datetime
    announced_length: int | None = None
    mirrored_length: int | None = None

    def valid(self, now: datetime) -> bool:
        if self.announced_at > now + FUTURE_SKEW:
            return False
        if (self.announced_length is None) != (self.mirrored_length is None):
            return False
        return all(_is_length(n) for n in (self.announced_length, self.mirrored_length) if n is not None)

    @property
    def complete(self) -> bool:
        if self.announced_length is None or self.mirrored_length is None:
            return True
        return self.mirrored_length >= self.announced_length


def _is_length(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_LENGTH


@dataclass(frozen=True)
class Evidence:
    """What the requester reports. ``None`` means "no evidence", which never counts in favour."""

    healthy_peers: int | None = None
    mirror: MirrorEvidence | None = None


@dataclass(frozen=True)
class Snapshot:
    now: datetime
    policy: Policy
    deposit: DepositFacts | None
    worker_last_seen_at: datetime | None
    rotation_required: bool
    evidence: Evidence = field(default_factory=Evidence)

    @property
    def worker_contact_at(self) -> datetime | None:
        """The worker's last signed contact with the escrow (heartbeat or deposit); without a record of
        one, the deposit's creation. Never later than ``now`` (a future record is clock trouble, which
        ``worker-heartbeat-recent`` already refuses)."""
        contact = self.worker_last_seen_at
        if contact is None and self.deposit is not None:
            contact = self.deposit.created_at
        return min(contact, self.now) if contact is not None else None

    def mirror_gap(self) -> timedelta | None:
        """How long before the worker's last signed contact the gateway last observed it (negative: after)."""
        contact, mirror = self.worker_contact_at, self.evidence.mirror
        if contact is None or mirror is None:
            return None
        return contact - mirror.announced_at

    def as_audit(self) -> dict[str, Any]:
        """The policy inputs as recorded in the audit log (no key material exists here)."""
        last_seen_age = (self.now - self.worker_last_seen_at).total_seconds() if self.worker_last_seen_at else None
        mirror, contact, gap = self.evidence.mirror, self.worker_contact_at, self.mirror_gap()
        return {
            "policyVersion": self.policy.version,
            "depositState": self.deposit.state if self.deposit else None,
            "workerSilenceSeconds": None if last_seen_age is None else round(last_seen_age, 3),
            "healthyPeers": self.evidence.healthy_peers,
            "mirrorAnnouncedAt": _unix(mirror.announced_at) if mirror else None,
            "mirrorAnnouncedLength": _json_length(mirror.announced_length) if mirror else None,
            "mirrorMirroredLength": _json_length(mirror.mirrored_length) if mirror else None,
            "workerLastContactAt": _unix(contact) if contact else None,
            "mirrorGapSeconds": None if gap is None else round(gap.total_seconds(), 3),
            "rotationRequired": self.rotation_required,
        }


def _unix(moment: datetime) -> float:
    return round(moment.timestamp(), 3)


def _json_length(value: object) -> object:
    # Recorded as given when it is a real length; anything else (only reachable from a hand-built
    # snapshot) as its repr, so the audit row stays JSON and still shows what was judged.
    return value if value is None or _is_length(value) else repr(value)


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

    # Mirror evidence is measured at the worker's last contact (see the module docstring), never against
    # ``now``: a complete mirror stays eligible for the whole outage.
    mirror = snapshot.evidence.mirror
    gap = snapshot.mirror_gap()
    if mirror is None:
        failed.add(MIRROR_EVIDENCE_MISSING)
    elif not mirror.valid(now):
        failed.add(MIRROR_EVIDENCE_INVALID)
    else:
        if not mirror.complete:
            failed.add(MIRROR_INCOMPLETE)
        if gap is not None and gap > timedelta(seconds=policy.mirror_max_age):
            failed.add(MIRROR_STALE)

    reasons = tuple(reason for reason in REASONS if reason in failed)
    return Decision(granted=not reasons, reasons=reasons)
