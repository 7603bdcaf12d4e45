"""Worker → escrow wire format: parsing and the exact bytes each message signs (Django-free).

Used by the escrow (verify) and by ``escrow.worker_client`` (sign), so both sides share one definition.
The byte layouts are specified for other implementations in ``escrow/WIRE.md``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from escrow import crypto
from hypertuna.compat.relaykeys import normalize_relay_key

WIRE_VERSION = 1
_IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_KEY_ID = re.compile(r"^[0-9a-f]{16}$")
MAX_SEALED_BYTES = crypto.SEALED_OVERHEAD + 1024
MAX_REASON = 200
MAX_OWNER = 200


class WireError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _relay_key(value: object) -> str:
    normalized = normalize_relay_key(value)
    # Only the canonical spelling is accepted: the signature covers the exact string.
    if normalized is None or normalized != value:
        raise WireError("invalid-relay-key", "relayKey must be a canonical 64-hex key or npub…:name identifier.")
    return normalized


def _int(body: dict[str, Any], name: str, *, minimum: int = 0) -> int:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or value > 2**53:
        raise WireError("invalid-request", f"{name} must be a non-negative integer.")
    return value


def _str(body: dict[str, Any], name: str, *, max_length: int, allow_empty: bool = True) -> str:
    value = body.get(name, "")
    if not isinstance(value, str) or len(value) > max_length or (not allow_empty and not value):
        raise WireError("invalid-request", f"{name} must be a string of at most {max_length} characters.")
    if any(ord(ch) < 0x20 for ch in value):
        raise WireError("invalid-request", f"{name} must not contain control characters.")
    return value


def _hex_key(body: dict[str, Any], name: str) -> bytes:
    try:
        return crypto.hex32(body.get(name), field=name)
    except crypto.CryptoError as exc:
        raise WireError(exc.code, str(exc)) from None


def _signature(body: dict[str, Any]) -> bytes:
    try:
        return crypto.b64decode(body.get("signature"), field="signature", length=crypto.SIGNATURE_BYTES)
    except crypto.CryptoError as exc:
        raise WireError(exc.code, str(exc)) from None


def _check_version(body: dict[str, Any]) -> None:
    if body.get("version", WIRE_VERSION) != WIRE_VERSION:
        raise WireError("unsupported-version", f"Only wire version {WIRE_VERSION} is understood.")


# --- Deposit --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DepositRequest:
    relay_key: str
    worker_key: bytes
    owner_identity: str
    writer_public_key: bytes
    sealed_secret: bytes
    escrow_key_id: str
    policy_version: int
    allow_gateway_writes: bool
    expires_at: int  # Unix seconds
    issued_at_ms: int
    idempotency_key: str
    signature: bytes

    def signed_bytes(self) -> bytes:
        return deposit_message(
            relay_key=self.relay_key,
            worker_key=self.worker_key,
            owner_identity=self.owner_identity,
            writer_public_key=self.writer_public_key,
            sealed_secret=self.sealed_secret,
            escrow_key_id=self.escrow_key_id,
            policy_version=self.policy_version,
            allow_gateway_writes=self.allow_gateway_writes,
            expires_at=self.expires_at,
            issued_at_ms=self.issued_at_ms,
            idempotency_key=self.idempotency_key,
        )

    def __repr__(self) -> str:
        return f"DepositRequest(relay_key={self.relay_key!r}, idempotency_key={self.idempotency_key!r})"


def deposit_message(
    *,
    relay_key: str,
    worker_key: bytes,
    owner_identity: str,
    writer_public_key: bytes,
    sealed_secret: bytes,
    escrow_key_id: str,
    policy_version: int,
    allow_gateway_writes: bool,
    expires_at: int,
    issued_at_ms: int,
    idempotency_key: str,
) -> bytes:
    return crypto.message(
        crypto.DOMAIN_DEPOSIT,
        [
            relay_key,
            worker_key.hex(),
            owner_identity,
            writer_public_key.hex(),
            crypto.sha256_hex(sealed_secret),
            escrow_key_id,
            str(policy_version),
            "1" if allow_gateway_writes else "0",
            str(expires_at),
            str(issued_at_ms),
            idempotency_key,
        ],
    )


def parse_deposit(body: object) -> DepositRequest:
    if not isinstance(body, dict):
        raise WireError("invalid-request", "Body must be a JSON object.")
    _check_version(body)
    idempotency_key = body.get("idempotencyKey")
    if not isinstance(idempotency_key, str) or not _IDEMPOTENCY_KEY.match(idempotency_key):
        raise WireError("idempotency-key-required", "idempotencyKey must be 16-64 characters of [A-Za-z0-9_-].")
    escrow_key_id = body.get("escrowKeyId")
    if not isinstance(escrow_key_id, str) or not _KEY_ID.match(escrow_key_id):
        raise WireError("invalid-request", "escrowKeyId must be 16 lowercase hex characters.")
    allow = body.get("allowGatewayWrites")
    if not isinstance(allow, bool):
        raise WireError("invalid-request", "allowGatewayWrites must be a boolean.")
    try:
        sealed = crypto.b64decode(body.get("sealedSecret"), field="sealedSecret", max_length=MAX_SEALED_BYTES)
    except crypto.CryptoError as exc:
        raise WireError(exc.code, str(exc)) from None
    return DepositRequest(
        relay_key=_relay_key(body.get("relayKey")),
        worker_key=_hex_key(body, "workerKey"),
        owner_identity=_str(body, "ownerIdentity", max_length=MAX_OWNER),
        writer_public_key=_hex_key(body, "writerPublicKey"),
        sealed_secret=sealed,
        escrow_key_id=escrow_key_id,
        policy_version=_int(body, "policyVersion", minimum=1),
        allow_gateway_writes=allow,
        expires_at=_int(body, "expiresAt", minimum=1),
        issued_at_ms=_int(body, "issuedAt", minimum=1),
        idempotency_key=idempotency_key,
        signature=_signature(body),
    )


# --- Heartbeat and revoke ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerStatement:
    """A signed heartbeat or revoke: who (worker key), for which relay, when (worker ms clock), why."""

    kind: str  # "heartbeat" or "revoke"
    relay_key: str
    worker_key: bytes
    issued_at_ms: int
    reason: str
    signature: bytes

    def signed_bytes(self) -> bytes:
        return statement_message(self.kind, self.relay_key, self.worker_key, self.issued_at_ms, self.reason)


def statement_message(kind: str, relay_key: str, worker_key: bytes, issued_at_ms: int, reason: str = "") -> bytes:
    if kind == "heartbeat":
        return crypto.message(crypto.DOMAIN_HEARTBEAT, [relay_key, worker_key.hex(), str(issued_at_ms)])
    if kind == "revoke":
        return crypto.message(crypto.DOMAIN_REVOKE, [relay_key, worker_key.hex(), str(issued_at_ms), reason])
    raise ValueError(kind)


def parse_statement(kind: str, body: object) -> WorkerStatement:
    if not isinstance(body, dict):
        raise WireError("invalid-request", "Body must be a JSON object.")
    _check_version(body)
    reason = _str(body, "reason", max_length=MAX_REASON) if kind == "revoke" else ""
    return WorkerStatement(
        kind=kind,
        relay_key=_relay_key(body.get("relayKey")),
        worker_key=_hex_key(body, "workerKey"),
        issued_at_ms=_int(body, "issuedAt", minimum=1),
        reason=reason,
        signature=_signature(body),
    )
