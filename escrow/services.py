"""Every write to escrow state. Each service runs in one transaction with its audit row.

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
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from escrow import audit, crypto, metrics, wire
from escrow.conf import current_policy, signature_window
from escrow.evidence import UnlockRequest, policy_snapshot
from escrow.evidence import parse_unlock as parse_unlock  # the unlock view parses with it
from escrow.evidence import relay_key_param as _relay
from escrow.keystore import escrow_keys
from escrow.models import Deposit, IdempotencyRecord, Lease, WorkerBinding
from escrow.policy import decide
from hypertuna.exceptions import ApiError

logger = logging.getLogger(__name__)

A = audit.AuditEntry.Action


def _now(now: datetime | None) -> datetime:
    return now or timezone.now()


def _ts(moment: datetime) -> int:
    return int(moment.timestamp())


def _wire_error(exc: wire.WireError) -> ApiError:
    return ApiError(exc.code, str(exc), status=400)


def _check_fresh(issued_at_ms: int, now: datetime) -> None:
    window = signature_window()
    if abs(now.timestamp() * 1000 - issued_at_ms) > window * 1000:
        raise ApiError("signature-expired", f"issuedAt is more than {window} s from the escrow clock.", status=401)


def _verify(public_key: bytes, signed: bytes, signature: bytes) -> None:
    try:
        crypto.verify_signature(public_key, signed, signature)
    except crypto.CryptoError:
        raise ApiError("invalid-signature", "Signature does not verify.", status=401) from None


def _locked_binding(relay_key: str) -> WorkerBinding | None:
    return WorkerBinding.objects.select_for_update().filter(relay_key=relay_key).first()


def _end_lease(lease: Lease, *, state: str, reason: str, actor: str, action: str, now: datetime) -> None:
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


def _expire_stale(relay_key: str, now: datetime) -> None:
    """Mark this relay's lapsed lease/deposit as expired (caller holds the binding lock)."""
    for lease in Lease.objects.filter(relay_key=relay_key, state=Lease.State.ACTIVE, expires_at__lte=now):
        _end_lease(lease, state=Lease.State.EXPIRED, reason="expired", actor="escrow", action=A.EXPIRE, now=now)
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


def _active_lease(relay_key: str) -> Lease | None:
    return Lease.objects.filter(relay_key=relay_key, state=Lease.State.ACTIVE).first()


# --- Deposit ----------------------------------------------------------------------------------------------


def deposit(*, body: object, actor: str, now: datetime | None = None) -> tuple[int, dict[str, Any]]:
    """Accept a signed, sealed writer package. Returns (status, response body).

    Retrying with the same idempotency key returns the first response (200/201 alike) without touching
    state; reusing a key for a different deposit is refused (422). A re-deposit supersedes the previous
    package in the same transaction, so the old package can never be unlocked again.
    """
    now = _now(now)
    try:
        request = wire.parse_deposit(body)
    except wire.WireError as exc:
        raise _wire_error(exc) from None
    signed = request.signed_bytes()
    _verify(request.worker_key, signed, request.signature)
    digest = crypto.sha256_hex(signed)
    worker_hex = request.worker_key.hex()

    # A retry may arrive after the signature window: answer it from the record before freshness checks.
    replay = _idempotent_replay(worker_hex, request.idempotency_key, digest)
    if replay is not None:
        return replay
    _check_fresh(request.issued_at_ms, now)

    keys = escrow_keys()
    policy = current_policy()
    if request.escrow_key_id != keys.key_id:
        raise ApiError(
            "escrow-key-changed",
            "Sealed to another escrow key; fetch /policy again.",
            status=409,
            escrowKeyId=keys.key_id,
        )
    if request.policy_version != policy.version:
        raise ApiError(
            "policy-version-mismatch",
            "The deposit must acknowledge the current policy version.",
            status=409,
            policyVersion=policy.version,
        )
    expires_at = datetime.fromtimestamp(request.expires_at, tz=UTC)
    if expires_at <= now:
        raise ApiError("deposit-expired", "expiresAt is in the past.", status=400)
    expires_at = min(expires_at, now + timedelta(seconds=policy.deposit_max_ttl))
    try:
        keys.check_writer_package(
            request.sealed_secret, relay_key=request.relay_key, writer_public=request.writer_public_key
        )
    except crypto.CryptoError as exc:
        raise ApiError(exc.code, str(exc), status=400) from None

    for attempt in range(2):
        try:
            return _store_deposit(request, digest=digest, expires_at=expires_at, actor=actor, now=now)
        except IntegrityError:
            # Two first deposits for one relay raced on the binding row, or a retry raced its original on
            # the idempotency row: the loser re-reads what the winner committed.
            replay = _idempotent_replay(worker_hex, request.idempotency_key, digest)
            if replay is not None:
                return replay
            if attempt == 1:
                raise ApiError(
                    "deposit-conflict", "A concurrent deposit for this relay won; retry.", status=409
                ) from None
    raise AssertionError("unreachable")


def _idempotent_replay(worker_hex: str, key: str, digest: str) -> tuple[int, dict[str, Any]] | None:
    record = IdempotencyRecord.objects.filter(worker_key=worker_hex, key=key).first()
    if record is None:
        return None
    if record.request_digest != digest:
        raise ApiError("idempotency-key-reused", "This idempotency key was used for a different deposit.", status=422)
    return record.status_code, {**record.response, "replayed": True}


def _store_deposit(
    request: wire.DepositRequest, *, digest: str, expires_at: datetime, actor: str, now: datetime
) -> tuple[int, dict[str, Any]]:
    worker_hex = request.worker_key.hex()
    writer_hex = request.writer_public_key.hex()
    with transaction.atomic():
        binding = _locked_binding(request.relay_key)
        if binding is None:
            # Trust on first use: the first accepted deposit pins the worker key for this relay.
            binding = WorkerBinding.objects.create(
                relay_key=request.relay_key,
                worker_key=worker_hex,
                owner_identity=request.owner_identity,
                created_at=now,
                updated_at=now,
                last_seen_at=now,
            )
            binding = WorkerBinding.objects.select_for_update().get(pk=binding.pk)
        if binding.worker_key != worker_hex:
            logger.warning(
                "escrow: deposit for a relay bound to another worker", extra={"relay_key": request.relay_key}
            )
            raise ApiError("relay-bound-to-other-worker", "This relay is bound to another worker key.", status=403)
        replay = _idempotent_replay(worker_hex, request.idempotency_key, digest)
        if replay is not None:
            return replay
        if request.issued_at_ms <= binding.last_signed_ms:
            raise ApiError(
                "signature-replayed", "issuedAt is not newer than the worker's last signed message.", status=401
            )
        if Deposit.objects.filter(
            relay_key=request.relay_key, writer_public_key=writer_hex, released_at__isnull=False
        ).exists():
            raise ApiError(
                "writer-key-must-rotate",
                "This writer key was released under a lease; deposit a new writer key.",
                status=409,
            )
        _expire_stale(request.relay_key, now)

        # The worker is back: whatever lease the gateway holds ends now, and the released key is dead.
        lease = _active_lease(request.relay_key)
        if lease is not None:
            _end_lease(
                lease,
                state=Lease.State.REVOKED,
                reason="worker-reconnected",
                actor=f"worker:{worker_hex}",
                action=A.HEARTBEAT_ROTATION,
                now=now,
            )
        previous = Deposit.objects.filter(relay_key=request.relay_key, state=Deposit.State.ACTIVE).first()
        if previous is not None:
            previous.state, previous.ended_at, previous.end_reason = Deposit.State.SUPERSEDED, now, "re-deposit"
            previous.save(update_fields=["state", "ended_at", "end_reason"])
        new = Deposit.objects.create(
            relay_key=request.relay_key,
            worker_key=worker_hex,
            owner_identity=request.owner_identity,
            writer_public_key=writer_hex,
            sealed_secret=request.sealed_secret,
            escrow_key_id=request.escrow_key_id,
            policy_version=request.policy_version,
            allow_gateway_writes=request.allow_gateway_writes,
            issued_at=datetime.fromtimestamp(request.issued_at_ms / 1000, tz=UTC),
            expires_at=expires_at,
            created_at=now,
        )
        rotated = binding.rotation_required
        binding.rotation_required = False
        binding.last_signed_ms = request.issued_at_ms
        binding.last_seen_at = now
        binding.updated_at = now
        binding.owner_identity = request.owner_identity
        binding.save(
            update_fields=["rotation_required", "last_signed_ms", "last_seen_at", "updated_at", "owner_identity"]
        )
        audit.append(
            action=A.DEPOSIT,
            actor=actor,
            relay_key=request.relay_key,
            deposit_id=str(new.id),
            reason="re-deposit" if previous else "first-deposit",
            details={
                "workerKey": worker_hex,
                "writerPublicKey": writer_hex,
                "policyVersion": request.policy_version,
                "allowGatewayWrites": request.allow_gateway_writes,
                "expiresAt": _ts(expires_at),
                "supersedes": str(previous.id) if previous else None,
                "rotationCompleted": rotated,
                "idempotencyKey": request.idempotency_key,
            },
            now=now,
        )
        response = {
            "depositId": str(new.id),
            "relayKey": request.relay_key,
            "writerPublicKey": writer_hex,
            "expiresAt": _ts(expires_at),
            "policyVersion": request.policy_version,
            "escrowKeyId": request.escrow_key_id,
            "supersedes": str(previous.id) if previous else None,
        }
        IdempotencyRecord.objects.create(
            worker_key=worker_hex,
            key=request.idempotency_key,
            request_digest=digest,
            status_code=201,
            response=response,
            created_at=now,
        )
    return 201, response


# --- Heartbeat and worker revoke ---------------------------------------------------------------------------


def _verified_statement(kind: str, body: object, now: datetime) -> wire.WorkerStatement:
    try:
        statement = wire.parse_statement(kind, body)
    except wire.WireError as exc:
        raise _wire_error(exc) from None
    _verify(statement.worker_key, statement.signed_bytes(), statement.signature)
    _check_fresh(statement.issued_at_ms, now)
    return statement


def _bound_for(statement: wire.WorkerStatement) -> WorkerBinding:
    binding = _locked_binding(statement.relay_key)
    if binding is None:
        raise ApiError("unknown-relay", "No deposit was ever made for this relay.", status=404)
    if binding.worker_key != statement.worker_key.hex():
        logger.warning(
            "escrow: signed message for a relay bound to another worker",
            extra={"relay_key": statement.relay_key, "kind": statement.kind},
        )
        raise ApiError("relay-bound-to-other-worker", "This relay is bound to another worker key.", status=403)
    # Strictly increasing worker clock per relay: a captured heartbeat or revoke cannot be replayed.
    if statement.issued_at_ms <= binding.last_signed_ms:
        raise ApiError("signature-replayed", "issuedAt is not newer than the worker's last signed message.", status=401)
    return binding


def heartbeat(*, body: object, actor: str, now: datetime | None = None) -> dict[str, Any]:
    """Record the worker's signed sign of life. A returning worker ends the gateway's lease (rotation)."""
    now = _now(now)
    statement = _verified_statement("heartbeat", body, now)
    with transaction.atomic():
        binding = _bound_for(statement)
        _expire_stale(statement.relay_key, now)
        lease = _active_lease(statement.relay_key)
        if lease is not None:
            _end_lease(
                lease,
                state=Lease.State.REVOKED,
                reason="worker-reconnected",
                actor=f"worker:{binding.worker_key}",
                action=A.HEARTBEAT_ROTATION,
                now=now,
            )
            binding.rotation_required = True
        binding.last_signed_ms = statement.issued_at_ms
        binding.last_seen_at = binding.last_heartbeat_at = binding.updated_at = now
        binding.save(
            update_fields=["last_signed_ms", "last_seen_at", "last_heartbeat_at", "updated_at", "rotation_required"]
        )
    return {
        "relayKey": statement.relay_key,
        "rotationRequired": binding.rotation_required,
        "leaseRevoked": str(lease.id) if lease else None,
        "serverTime": _ts(now),
    }


def worker_revoke(*, body: object, actor: str, now: datetime | None = None) -> dict[str, Any]:
    """The worker withdraws its deposit: the package and any lease on it end now."""
    now = _now(now)
    statement = _verified_statement("revoke", body, now)
    with transaction.atomic():
        binding = _bound_for(statement)
        binding.last_signed_ms = statement.issued_at_ms
        binding.last_seen_at = binding.updated_at = now
        binding.save(update_fields=["last_signed_ms", "last_seen_at", "updated_at"])
        result = _revoke_locked(
            statement.relay_key,
            revoke_deposit=True,
            reason=statement.reason or "worker-revoke",
            actor=f"worker:{binding.worker_key}",
            now=now,
        )
    return result


def _revoke_locked(
    relay_key: str, *, revoke_deposit: bool, reason: str, actor: str, now: datetime, lease_id: str | None = None
) -> dict[str, Any]:
    lease = _active_lease(relay_key)
    if lease is not None and lease_id is not None and str(lease.id) != lease_id:
        raise ApiError("lease-mismatch", "That lease is not the relay's active lease.", status=409)
    if lease is not None:
        _end_lease(lease, state=Lease.State.REVOKED, reason=reason, actor=actor, action=A.REVOKE, now=now)
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
    now = _now(now)
    key = _relay(relay_key)
    with transaction.atomic():
        _locked_binding(key)
        _expire_stale(key, now)
        return _revoke_locked(
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
    now = _now(now)
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
    binding = _locked_binding(relay_key)
    _expire_stale(relay_key, now)
    active = _active_lease(relay_key)
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
        return "active", {"leaseId": str(active.id), "expiresAt": _ts(active.expires_at)}
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
            expires_at=_ts(expires_at),
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
            "expiresAt": _ts(expires_at),
            "inputs": inputs,
            "sessionKeyHash": crypto.sha256_hex(request.session_public_key),
        },
        now=now,
    )
    return "granted", {
        "leaseId": str(lease_id),
        "relayKey": relay_key,
        "fence": fence,
        "issuedAt": _ts(now),
        "expiresAt": _ts(expires_at),
        "maxExpiresAt": _ts(max_expires_at),
        "writerPublicKey": deposit_row.writer_public_key,
        "sealedSecret": crypto.b64encode(sealed),
        "signature": crypto.b64encode(signature),
        "escrowVerifyKey": keys.verify_key.hex(),
    }


def renew(*, lease_id: str, requester: str, ttl: int | None = None, now: datetime | None = None) -> dict[str, Any]:
    """Extend an active lease, never past its ``max_expires_at``. The secret is not sent again."""
    now = _now(now)
    policy = current_policy()
    target = Lease.objects.filter(id=_uuid(lease_id)).first()
    if target is None:
        raise ApiError("lease-not-found", "No such lease.", status=404)
    with transaction.atomic():
        _locked_binding(target.relay_key)
        _expire_stale(target.relay_key, now)
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
                details={"expiresAt": _ts(lease.expires_at), "renewals": lease.renewals},
                now=now,
            )
    # Raised after commit so an expiry found during the renew attempt stays recorded.
    if failure is not None:
        raise ApiError(failure[0], failure[1], status=409)
    return {"leaseId": str(lease.id), "expiresAt": _ts(lease.expires_at), "maxExpiresAt": _ts(lease.max_expires_at)}


# --- Sweeps (Celery beat) and operator actions -----------------------------------------------------------


def expire_leases(now: datetime | None = None) -> int:
    """End every lapsed active lease and deposit, one relay per transaction. Idempotent."""
    now = _now(now)
    relays = set(
        Lease.objects.filter(state=Lease.State.ACTIVE, expires_at__lte=now).values_list("relay_key", flat=True)
    )
    relays |= set(
        Deposit.objects.filter(state=Deposit.State.ACTIVE, expires_at__lte=now).values_list("relay_key", flat=True)
    )
    for relay_key in sorted(relays):
        with transaction.atomic():
            _locked_binding(relay_key)
            _expire_stale(relay_key, now)
    return len(relays)


def rebind_worker(*, relay_key: str, worker_key: str, actor: str, reason: str, now: datetime | None = None) -> None:
    """Operator override: pin a new worker key for a relay. The old worker's deposit and lease end."""
    now = _now(now)
    relay_key = _relay(relay_key)
    try:
        new_key = crypto.hex32(worker_key, field="workerKey").hex()
    except crypto.CryptoError as exc:
        raise ApiError(exc.code, str(exc)) from None
    with transaction.atomic():
        binding = _locked_binding(relay_key)
        if binding is None:
            raise ApiError("unknown-relay", "No deposit was ever made for this relay.", status=404)
        previous = binding.worker_key
        _revoke_locked(relay_key, revoke_deposit=True, reason="worker-rebound", actor=actor, now=now)
        binding.worker_key = new_key
        binding.last_signed_ms = 0
        binding.rotation_required = False
        binding.updated_at = now
        binding.save(update_fields=["worker_key", "last_signed_ms", "rotation_required", "updated_at"])
        audit.append(
            action=A.REBIND,
            actor=actor,
            relay_key=relay_key,
            reason=reason or "operator",
            details={"previousWorkerKey": previous, "workerKey": new_key},
            now=now,
        )


def prune_idempotency(now: datetime | None = None, *, keep_hours: int = 48) -> int:
    """Idempotency records outlive the signature window many times over; older ones can go."""
    cutoff = _now(now) - timedelta(hours=keep_hours)
    deleted, _ = IdempotencyRecord.objects.filter(created_at__lt=cutoff).delete()
    return deleted
