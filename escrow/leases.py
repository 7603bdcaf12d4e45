"""The gateway's side of the escrow (unlock, renew, revoke, the expiry sweep) and the lease rules the
worker's side (``escrow.services``) shares. Each service runs in one transaction with its audit row.

Lock order (every service follows it, so two services never wait on each other in a cycle):

1. the relay's ``WorkerBinding`` row (``SELECT … FOR UPDATE``; on SQLite the whole write transaction is
   ``BEGIN IMMEDIATE``),
2. the audit chain head (inside ``audit.append``).

The binding lock orders operations on one relay; the partial unique indexes on ``Deposit`` and ``Lease``
are the actual guarantee (a bug in the ordering raises ``IntegrityError`` instead of granting twice).

Fail closed: a grant seals the secret to the session key inside the transaction but the sealed bytes
are returned only after the transaction, audit row included, committed. Refusals are audited too, and
the refusal is raised *after* the audit commit so the record survives.

Expiry is decided by the escrow's clock when a row is read (an expired ``active`` lease blocks nothing
and grants nothing); the Celery beat sweep only makes that visible and audits it.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from escrow import audit, crypto, metrics
from escrow.conf import current_policy
from escrow.evidence import UnlockRequest, policy_snapshot
from escrow.evidence import parse_unlock as parse_unlock  # the unlock view parses with it
from escrow.evidence import relay_key_param as _relay
from escrow.keystore import escrow_keys
from escrow.models import Deposit, Lease, WorkerBinding
from escrow.policy import decide
from hypertuna.exceptions import ApiError

logger = logging.getLogger(__name__)

A = audit.AuditEntry.Action


def resolve_now(now: datetime | None) -> datetime:
    return now or timezone.now()


def unix(moment: datetime) -> int:
    return int(moment.timestamp())


def locked_binding(relay_key: str) -> WorkerBinding | None:
    return WorkerBinding.objects.select_for_update().filter(relay_key=relay_key).first()


def end_lease(lease: Lease, *, state: str, reason: str, actor: str, action: str, now: datetime) -> None:
    lease.state = state
    lease.ended_at = now
    lease.end_reason = reason[:64]
    lease.save(update_fields=["state", "ended_at", "end_reason"])
    audit.append(
        action=action,
        actor=actor,
        relay_key=lease.relay_key,
        lease_id=str(lease.id),
        deposit_id=str(lease.deposit_id),
        reason=reason,
        details={"fence": lease.fence},
        now=now,
    )


def expire_stale(relay_key: str, now: datetime) -> None:
    """Mark this relay's lapsed lease/deposit as expired (caller holds the binding lock)."""
    for lease in Lease.objects.filter(relay_key=relay_key, state=Lease.State.ACTIVE, expires_at__lte=now):
        end_lease(lease, state=Lease.State.EXPIRED, reason="expired", actor="escrow", action=A.EXPIRE, now=now)
        transaction.on_commit(metrics.lease_expirations_total.inc)
    for deposit in Deposit.objects.filter(relay_key=relay_key, state=Deposit.State.ACTIVE, expires_at__lte=now):
        deposit.state, deposit.ended_at, deposit.end_reason = Deposit.State.EXPIRED, now, "expired"
        deposit.save(update_fields=["state", "ended_at", "end_reason"])
        audit.append(
            action=A.EXPIRE,
            actor="escrow",
            relay_key=relay_key,
            deposit_id=str(deposit.id),
            reason="deposit-expired",
            now=now,
        )


def active_lease(relay_key: str) -> Lease | None:
    return Lease.objects.filter(relay_key=relay_key, state=Lease.State.ACTIVE).first()


def revoke_locked(
    relay_key: str, *, revoke_deposit: bool, reason: str, actor: str, now: datetime, lease_id: str | None = None
) -> dict[str, Any]:
    lease = active_lease(relay_key)
    if lease is not None and lease_id is not None and str(lease.id) != lease_id:
        raise ApiError("lease-mismatch", "That lease is not the relay's active lease.", status=409)
    if lease is not None:
        end_lease(lease, state=Lease.State.REVOKED, reason=reason, actor=actor, action=A.REVOKE, now=now)
    deposit_row = None
    if revoke_deposit:
        # A deposit past its expiry is already expired (read-time expiry), not revoked.
        deposit_row = Deposit.objects.filter(
            relay_key=relay_key, state=Deposit.State.ACTIVE, expires_at__gt=now
        ).first()
        if deposit_row is not None:
            deposit_row.state, deposit_row.ended_at, deposit_row.end_reason = Deposit.State.REVOKED, now, reason[:64]
            deposit_row.save(update_fields=["state", "ended_at", "end_reason"])
            audit.append(
                action=A.REVOKE,
                actor=actor,
                relay_key=relay_key,
                deposit_id=str(deposit_row.id),
                reason=reason,
                details={"scope": "deposit"},
                now=now,
            )
    return {
        "relayKey": relay_key,
        "leaseRevoked": str(lease.id) if lease else None,
        "depositRevoked": str(deposit_row.id) if deposit_row else None,
    }


def revoke(
    *,
    relay_key: object,
    actor: str,
    reason: str,
    revoke_deposit: bool = False,
    lease_id: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Gateway or operator revoke: the active lease (and, for operators, optionally the deposit)."""
    now = resolve_now(now)
    key = _relay(relay_key)
    with transaction.atomic():
        locked_binding(key)
        expire_stale(key, now)
        return revoke_locked(
            key, revoke_deposit=revoke_deposit, reason=reason or "revoke", actor=actor, now=now, lease_id=lease_id
        )


def revoke_lease_by_id(*, lease_id: str, actor: str, reason: str, now: datetime | None = None) -> dict[str, Any]:
    lease = Lease.objects.filter(id=_uuid(lease_id)).first()
    if lease is None:
        raise ApiError("lease-not-found", "No such lease.", status=404)
    return revoke(relay_key=lease.relay_key, actor=actor, reason=reason, lease_id=str(lease.id), now=now)


def _uuid(value: object) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise ApiError("lease-not-found", "No such lease.", status=404) from None


# --- Unlock and renew --------------------------------------------------------------------------------------


def _latest_deposit(relay_key: str) -> Deposit | None:
    active = Deposit.objects.filter(relay_key=relay_key, state=Deposit.State.ACTIVE).first()
    if active is not None:
        return active
    # No active one: report why (revoked or expired) from the newest package, ignoring superseded ones.
    return (
        Deposit.objects.filter(relay_key=relay_key)
        .exclude(state=Deposit.State.SUPERSEDED)
        # Two deposits can share the escrow's timestamp (a revoke and a re-deposit in the same instant);
        # the worker's signed clock, strictly increasing per relay, orders them then.
        .order_by("-created_at", "-issued_at")
        .first()
    )


def unlock(*, request: UnlockRequest, requester: str, now: datetime | None = None) -> dict[str, Any]:
    """Decide an unlock under the global policy; grant a lease sealed to the session key, or refuse (412).

    A refusal lists every failed reason. A relay that already has an unexpired active lease gets 409
    ``lease-active`` (the lease id, never the secret again): the holder must revoke before re-requesting.
    """
    now = resolve_now(now)
    policy = current_policy()
    ttl = min(request.ttl or policy.lease_ttl, policy.lease_max_ttl)
    keys = escrow_keys()
    try:
        with transaction.atomic():
            outcome = _unlock_locked(request, requester=requester, policy_ttl=ttl, keys=keys, now=now)
    except IntegrityError:
        # Only reachable if two grants for one relay got past the binding lock: the unique index stops the
        # second. Nothing was committed for it.
        metrics.unlock_decisions_total.labels("conflict").inc()
        raise ApiError("lease-active", "Another lease for this relay was granted concurrently.", status=409) from None
    kind, payload = outcome
    if kind == "refused":
        metrics.unlock_decisions_total.labels("refused").inc()
        for reason in payload["reasons"]:
            metrics.policy_rejections_total.labels(reason).inc()
        raise ApiError("unlock-refused", "The escrow policy refuses this unlock.", status=412, **payload)
    if kind == "active":
        metrics.unlock_decisions_total.labels("conflict").inc()
        raise ApiError("lease-active", "This relay already has an active lease.", status=409, **payload)
    metrics.unlock_decisions_total.labels("granted").inc()
    return payload


def _unlock_locked(
    request: UnlockRequest, *, requester: str, policy_ttl: int, keys: crypto.EscrowKeys, now: datetime
) -> tuple[str, dict[str, Any]]:
    policy = current_policy()
    relay_key = request.relay_key
    binding = locked_binding(relay_key)
    expire_stale(relay_key, now)
    active = active_lease(relay_key)
    if active is not None:
        audit.append(
            action=A.UNLOCK_REFUSED,
            actor=requester,
            relay_key=relay_key,
            lease_id=str(active.id),
            reason="lease-active",
            details={"reasons": ["lease-active"]},
            now=now,
        )
        return "active", {"leaseId": str(active.id), "expiresAt": unix(active.expires_at)}
    deposit_row = _latest_deposit(relay_key) if binding is not None else None
    snapshot = policy_snapshot(
        request, policy=policy, binding=binding, deposit=deposit_row, escrow_key_id=keys.key_id, now=now
    )
    decision = decide(snapshot)
    inputs = snapshot.as_audit()
    if not decision.granted:
        audit.append(
            action=A.UNLOCK_REFUSED,
            actor=requester,
            relay_key=relay_key,
            deposit_id=str(deposit_row.id) if deposit_row else "",
            reason=",".join(decision.reasons),
            details={"reasons": list(decision.reasons), "inputs": inputs},
            now=now,
        )
        return "refused", {"reasons": list(decision.reasons), "policyVersion": policy.version}
    assert binding is not None and deposit_row is not None  # a grant needs both (decide checked the deposit)

    lease_id = uuid.uuid4()
    fence = binding.fence + 1
    expires_at = now + timedelta(seconds=policy_ttl)
    max_expires_at = now + timedelta(seconds=policy.lease_max_ttl)
    try:
        sealed, signature = keys.release_to_session(
            bytes(deposit_row.sealed_secret),
            relay_key=relay_key,
            writer_public=bytes.fromhex(deposit_row.writer_public_key),
            session_public=request.session_public_key,
            lease_id=str(lease_id),
            fence=fence,
            expires_at=unix(expires_at),
        )
    except crypto.CryptoError as exc:
        # The package was checked at deposit time, so this means the stored row changed or the key file
        # differs: refuse (the transaction rolls back, nothing is released) and make it loud.
        logger.error("escrow: stored deposit does not open", extra={"relay_key": relay_key, "error": exc.code})
        raise ApiError(
            "deposit-unreadable", "The stored deposit cannot be opened; see the escrow logs.", status=500
        ) from None
    Lease.objects.create(
        id=lease_id,
        relay_key=relay_key,
        deposit=deposit_row,
        fence=fence,
        requester=requester,
        session_key_hash=crypto.sha256_hex(request.session_public_key),
        issued_at=now,
        expires_at=expires_at,
        max_expires_at=max_expires_at,
        evidence=inputs,
    )
    binding.fence = fence
    binding.save(update_fields=["fence"])
    if deposit_row.released_at is None:
        deposit_row.released_at = now
        deposit_row.save(update_fields=["released_at"])
    audit.append(
        action=A.UNLOCK_GRANTED,
        actor=requester,
        relay_key=relay_key,
        lease_id=str(lease_id),
        deposit_id=str(deposit_row.id),
        reason="policy-satisfied",
        details={
            "fence": fence,
            "expiresAt": unix(expires_at),
            "inputs": inputs,
            "sessionKeyHash": crypto.sha256_hex(request.session_public_key),
        },
        now=now,
    )
    return "granted", {
        "leaseId": str(lease_id),
        "relayKey": relay_key,
        "fence": fence,
        "issuedAt": unix(now),
        "expiresAt": unix(expires_at),
        "maxExpiresAt": unix(max_expires_at),
        "writerPublicKey": deposit_row.writer_public_key,
        "sealedSecret": crypto.b64encode(sealed),
        "signature": crypto.b64encode(signature),
        "escrowVerifyKey": keys.verify_key.hex(),
    }


def renew(*, lease_id: str, requester: str, ttl: int | None = None, now: datetime | None = None) -> dict[str, Any]:
    """Extend an active lease, never past its ``max_expires_at``. The secret is not sent again."""
    now = resolve_now(now)
    policy = current_policy()
    target = Lease.objects.filter(id=_uuid(lease_id)).first()
    if target is None:
        raise ApiError("lease-not-found", "No such lease.", status=404)
    with transaction.atomic():
        locked_binding(target.relay_key)
        expire_stale(target.relay_key, now)
        lease = Lease.objects.select_related("deposit").get(id=target.id)
        if lease.state != Lease.State.ACTIVE:
            failure: tuple[str, str] | None = ("lease-not-active", f"The lease is {lease.state}.")
        elif lease.deposit.state != Deposit.State.ACTIVE:
            failure = ("deposit-not-active", "The deposit behind this lease is no longer active.")
        else:
            failure = None
            new_expiry = min(
                now + timedelta(seconds=min(ttl or policy.lease_ttl, policy.lease_max_ttl)), lease.max_expires_at
            )
            if new_expiry > lease.expires_at:
                lease.expires_at = new_expiry
            lease.renewals += 1
            lease.save(update_fields=["expires_at", "renewals"])
            audit.append(
                action=A.RENEW,
                actor=requester,
                relay_key=lease.relay_key,
                lease_id=str(lease.id),
                deposit_id=str(lease.deposit_id),
                reason="renew",
                details={"expiresAt": unix(lease.expires_at), "renewals": lease.renewals},
                now=now,
            )
    # Raised after commit so an expiry found during the renew attempt stays recorded.
    if failure is not None:
        raise ApiError(failure[0], failure[1], status=409)
    return {"leaseId": str(lease.id), "expiresAt": unix(lease.expires_at), "maxExpiresAt": unix(lease.max_expires_at)}


# --- Sweep (Celery beat) ---------------------- -----------------------------------------------------------


def expire_leases(now: datetime | None = None) -> int:
    """End every lapsed active lease and deposit, one relay per transaction. Idempotent."""
    now = resolve_now(now)
    relays = set(
        Lease.objects.filter(state=Lease.State.ACTIVE, expires_at__lte=now).values_list("relay_key", flat=True)
    )
    relays |= set(
        Deposit.objects.filter(state=Deposit.State.ACTIVE, expires_at__lte=now).values_list("relay_key", flat=True)
    )
    for relay_key in sorted(relays):
        with transaction.atomic():
            locked_binding(relay_key)
            expire_stale(relay_key, now)
    return len(relays)
