"""The worker's side of the escrow (deposit, heartbeat, revoke) and the operator's re-binding of a relay to
another worker key. Lock order, fail-closed refusals and read-time expiry are ``escrow.leases``'s rules.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import IntegrityError, transaction

from escrow import audit, crypto, wire
from escrow.conf import current_policy, signature_window
from escrow.evidence import relay_key_param as _relay
from escrow.keystore import escrow_keys
from escrow.leases import (
    active_lease,
    end_lease,
    expire_stale,
    locked_binding,
    resolve_now,
    revoke_locked,
    unix,
)
from escrow.models import Deposit, IdempotencyRecord, Lease, WorkerBinding
from hypertuna.exceptions import ApiError

logger = logging.getLogger(__name__)

A = audit.AuditEntry.Action


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


# --- Deposit ----------------------------------------------------------------------------------------------


def deposit(*, body: object, actor: str, now: datetime | None = None) -> tuple[int, dict[str, Any]]:
    """Accept a signed, sealed writer package. Returns (status, response body).

    Retrying with the same idempotency key returns the first response (200/201 alike) without touching
    state; reusing a key for a different deposit is refused (422). A re-deposit supersedes the previous
    package in the same transaction, so the old package can never be unlocked again.
    """
    now = resolve_now(now)
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
    refusal: ApiError | None = None
    with transaction.atomic():
        binding = locked_binding(request.relay_key)
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
        expire_stale(request.relay_key, now)
        # The worker is back (it signed this deposit): whatever lease the gateway holds ends now, even if
        # the deposit is refused below, and the released key is dead.
        _end_lease_worker_back(request.relay_key, worker_hex, now)
        if Deposit.objects.filter(
            relay_key=request.relay_key, writer_public_key=request.writer_public_key.hex(), released_at__isnull=False
        ).exists():
            binding.rotation_required = True
            binding.last_signed_ms = request.issued_at_ms
            binding.last_seen_at = binding.updated_at = now
            binding.save(update_fields=["rotation_required", "last_signed_ms", "last_seen_at", "updated_at"])
            refusal = ApiError(
                "writer-key-must-rotate",
                "This writer key was released under a lease; deposit a new writer key.",
                status=409,
            )
        else:
            response = _accept_deposit(request, binding, digest=digest, expires_at=expires_at, actor=actor, now=now)
    # Raised after commit, so the lease the worker's return ended stays ended.
    if refusal is not None:
        raise refusal
    return 201, response


def _end_lease_worker_back(relay_key: str, worker_hex: str, now: datetime) -> Lease | None:
    """A signed deposit or heartbeat from the bound worker ends the gateway's lease (caller holds the lock)."""
    lease = active_lease(relay_key)
    if lease is None:
        return None
    end_lease(
        lease,
        state=Lease.State.REVOKED,
        reason="worker-reconnected",
        actor=f"worker:{worker_hex}",
        action=A.HEARTBEAT_ROTATION,
        now=now,
    )
    return lease


def _accept_deposit(
    request: wire.DepositRequest,
    binding: WorkerBinding,
    *,
    digest: str,
    expires_at: datetime,
    actor: str,
    now: datetime,
) -> dict[str, Any]:
    """Store the deposit, superseding the relay's previous one (caller holds the binding lock)."""
    worker_hex = request.worker_key.hex()
    writer_hex = request.writer_public_key.hex()
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
    binding.save(update_fields=["rotation_required", "last_signed_ms", "last_seen_at", "updated_at", "owner_identity"])
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
            "expiresAt": unix(expires_at),
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
        "expiresAt": unix(expires_at),
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
    return response


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
    binding = locked_binding(statement.relay_key)
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
    now = resolve_now(now)
    statement = _verified_statement("heartbeat", body, now)
    with transaction.atomic():
        binding = _bound_for(statement)
        expire_stale(statement.relay_key, now)
        lease = _end_lease_worker_back(statement.relay_key, binding.worker_key, now)
        if lease is not None:
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
        "serverTime": unix(now),
    }


def worker_revoke(*, body: object, actor: str, now: datetime | None = None) -> dict[str, Any]:
    """The worker withdraws its deposit: the package and any lease on it end now."""
    now = resolve_now(now)
    statement = _verified_statement("revoke", body, now)
    with transaction.atomic():
        binding = _bound_for(statement)
        binding.last_signed_ms = statement.issued_at_ms
        binding.last_seen_at = binding.updated_at = now
        binding.save(update_fields=["last_signed_ms", "last_seen_at", "updated_at"])
        result = revoke_locked(
            statement.relay_key,
            revoke_deposit=True,
            reason=statement.reason or "worker-revoke",
            actor=f"worker:{binding.worker_key}",
            now=now,
        )
    return result


def rebind_worker(*, relay_key: str, worker_key: str, actor: str, reason: str, now: datetime | None = None) -> None:
    """Operator override: pin a new worker key for a relay. The old worker's deposit and lease end."""
    now = resolve_now(now)
    relay_key = _relay(relay_key)
    try:
        new_key = crypto.hex32(worker_key, field="workerKey").hex()
    except crypto.CryptoError as exc:
        raise ApiError(exc.code, str(exc)) from None
    with transaction.atomic():
        binding = locked_binding(relay_key)
        if binding is None:
            raise ApiError("unknown-relay", "No deposit was ever made for this relay.", status=404)
        previous = binding.worker_key
        revoke_locked(relay_key, revoke_deposit=True, reason="worker-rebound", actor=actor, now=now)
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
    cutoff = resolve_now(now) - timedelta(hours=keep_hours)
    deleted, _ = IdempotencyRecord.objects.filter(created_at__lt=cutoff).delete()
    return deleted
