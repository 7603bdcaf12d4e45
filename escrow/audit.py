"""The escrow audit log: a SHA-256 hash chain in the database plus Ed25519-signed checkpoints.

Append (``append``) runs inside the caller's transaction, so an audit row exists if and only if the
state change it describes committed. Chain positions are serialized by locking the single head row
``FOR UPDATE`` (on SQLite every write transaction is ``BEGIN IMMEDIATE``, which serializes writers), never
taken from a sequence: a sequence leaves gaps on rollback and would make a deleted row look like a
rollback.

Entry hash (encoder version 1)::

    entry_hash = SHA-256(0x00 || "hypertuna/escrow/audit/v1" || 0x00 || prev_hash(32 bytes) || body)
    body       = JSON, keys sorted, no whitespace, ASCII-only, of
                 {"v":1,"seq","at" (integer microseconds since the Unix epoch, UTC),"action","actor",
                  "relay","lease","deposit","reason","details"}

Triggers refuse UPDATE and DELETE (migration 0002) and, on Postgres, TRUNCATE (0003) of audit rows and
checkpoints. A database superuser can still disable them and rewrite the chain consistently; the signed
checkpoints, exported as files outside the database, are what exposes that: ``verify`` checks every
checkpoint's signature and that the chain still has the signed hash at the signed position.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from escrow import crypto
from escrow.keystore import escrow_keys
from escrow.models import AuditCheckpoint, AuditEntry, AuditHead, AuditVerification

logger = logging.getLogger(__name__)

GENESIS = "0" * 64
ENCODER_VERSION = 1
_DOMAIN = b"\x00hypertuna/escrow/audit/v1\x00"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class AuditError(RuntimeError):
    """The chain cannot be appended to (fail closed: the surrounding transaction must roll back)."""


def _micros(moment: datetime) -> int:
    delta = moment.astimezone(UTC) - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def entry_body(
    *,
    seq: int,
    occurred_at: datetime,
    action: str,
    actor: str,
    relay_key: str,
    lease_id: str,
    deposit_id: str,
    reason: str,
    details: dict[str, Any],
) -> bytes:
    document = {
        "v": ENCODER_VERSION,
        "seq": seq,
        "at": _micros(occurred_at),
        "action": action,
        "actor": actor,
        "relay": relay_key,
        "lease": lease_id,
        "deposit": deposit_id,
        "reason": reason,
        "details": details,
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def chain_hash(prev_hash: str, body: bytes) -> str:
    return hashlib.sha256(_DOMAIN + bytes.fromhex(prev_hash) + body).hexdigest()


def _row_hash(row: AuditEntry) -> str:
    return chain_hash(
        row.prev_hash,
        entry_body(
            seq=row.seq,
            occurred_at=row.occurred_at,
            action=row.action,
            actor=row.actor,
            relay_key=row.relay_key,
            lease_id=row.lease_id,
            deposit_id=row.deposit_id,
            reason=row.reason,
            details=row.details,
        ),
    )


def _locked_head() -> AuditHead:
    head = AuditHead.objects.select_for_update().filter(id=1).first()
    if head is None:
        # First append ever (or after a test flush): create the head without racing a concurrent creator.
        AuditHead.objects.bulk_create([AuditHead(id=1, seq=0, entry_hash=GENESIS)], ignore_conflicts=True)
        head = AuditHead.objects.select_for_update().get(id=1)
    return head


def append(
    *,
    action: str,
    actor: str,
    relay_key: str = "",
    lease_id: str = "",
    deposit_id: str = "",
    reason: str = "",
    details: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> AuditEntry:
    """Append one row to the chain, inside the caller's transaction (required)."""
    if not connection.in_atomic_block:
        raise AuditError("Audit rows must be written in the same transaction as the change they record.")
    details = details or {}
    # Round-trip through JSON so the hashed form equals what the database will hand back on verify.
    details = json.loads(json.dumps(details, sort_keys=True))
    head = _locked_head()
    occurred_at = (now or timezone.now()).astimezone(UTC)
    seq = head.seq + 1
    body = entry_body(
        seq=seq,
        occurred_at=occurred_at,
        action=action,
        actor=actor,
        relay_key=relay_key,
        lease_id=lease_id,
        deposit_id=deposit_id,
        reason=reason[:500],
        details=details,
    )
    entry_hash = chain_hash(head.entry_hash, body)
    row = AuditEntry.objects.create(
        seq=seq,
        occurred_at=occurred_at,
        action=action,
        actor=actor,
        relay_key=relay_key,
        lease_id=lease_id,
        deposit_id=deposit_id,
        reason=reason[:500],
        details=details,
        prev_hash=head.entry_hash,
        entry_hash=entry_hash,
    )
    AuditHead.objects.filter(id=1).update(seq=seq, entry_hash=entry_hash)
    return row


# --- Checkpoints ----------------------------------------------------------------------------------------


def checkpoint_message(seq: int, entry_hash: str, signed_at: datetime, key_id: str) -> bytes:
    return crypto.message(crypto.DOMAIN_CHECKPOINT, [str(seq), entry_hash, str(_micros(signed_at)), key_id])


def _checkpoint_document(cp: AuditCheckpoint) -> dict[str, Any]:
    return {
        "seq": cp.seq,
        "entryHash": cp.entry_hash,
        "signedAtMicros": _micros(cp.signed_at),
        "keyId": cp.key_id,
        "signature": cp.signature,
        "verifyKey": escrow_keys().verify_key.hex(),
    }


def export_checkpoint(cp: AuditCheckpoint, directory: Path | None = None) -> Path:
    directory = Path(directory or settings.HYPERTUNA_ESCROW_CHECKPOINT_DIR)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"checkpoint-{cp.seq:012d}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_checkpoint_document(cp), sort_keys=True, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def create_checkpoint(now: datetime | None = None) -> AuditCheckpoint | None:
    """Sign the current head if it advanced since the last checkpoint; export the file after commit."""
    with transaction.atomic():
        head = AuditHead.objects.select_for_update().filter(id=1).first()
        if head is None or head.seq == 0 or AuditCheckpoint.objects.filter(seq=head.seq).exists():
            return None
        # Loaded only when there is something to sign: a process without escrow state never creates keys.
        keys = escrow_keys()
        signed_at = (now or timezone.now()).astimezone(UTC)
        signature = keys.sign(checkpoint_message(head.seq, head.entry_hash, signed_at, keys.signing_key_id))
        cp = AuditCheckpoint.objects.create(
            seq=head.seq,
            entry_hash=head.entry_hash,
            signed_at=signed_at,
            key_id=keys.signing_key_id,
            signature=signature.hex(),
        )
        transaction.on_commit(lambda: export_checkpoint(cp))
    return cp


# --- Verification ---------------------------------------------------------------------------------------


@dataclass
class Report:
    ok: bool = True
    entries: int = 0
    checkpoints: int = 0
    first_bad_seq: int | None = None
    problems: list[str] = field(default_factory=list)

    def fail(self, seq: int | None, problem: str) -> None:
        if self.ok or (seq is not None and (self.first_bad_seq is None or seq < self.first_bad_seq)):
            self.first_bad_seq = seq
        self.ok = False
        self.problems.append(problem)


@dataclass(frozen=True)
class _SignedPoint:
    source: str
    seq: int
    entry_hash: str
    signed_at_micros: int
    key_id: str
    signature_hex: str


def _file_checkpoints(directory: Path) -> Iterable[_SignedPoint | str]:
    if not directory.is_dir():
        return
    for path in sorted(directory.glob("checkpoint-*.json")):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            yield _SignedPoint(
                source=f"file {path.name}",
                seq=int(doc["seq"]),
                entry_hash=str(doc["entryHash"]),
                signed_at_micros=int(doc["signedAtMicros"]),
                key_id=str(doc["keyId"]),
                signature_hex=str(doc["signature"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            yield f"checkpoint file {path.name} is unreadable"


def _cross_check_state(report: Report) -> None:
    """State and log must agree: no lease or deposit exists (or ended) without the audit row saying so."""
    from escrow.models import Deposit, Lease

    granted = set(AuditEntry.objects.filter(action=AuditEntry.Action.UNLOCK_GRANTED).values_list("lease_id", flat=True))
    ended = set(
        AuditEntry.objects.filter(
            action__in=[AuditEntry.Action.REVOKE, AuditEntry.Action.EXPIRE, AuditEntry.Action.HEARTBEAT_ROTATION]
        )
        .exclude(lease_id="")
        .values_list("lease_id", flat=True)
    )
    deposited = set(AuditEntry.objects.filter(action=AuditEntry.Action.DEPOSIT).values_list("deposit_id", flat=True))
    for lease_id, state in Lease.objects.values_list("id", "state").iterator():
        if str(lease_id) not in granted:
            report.fail(None, f"lease {lease_id} exists without an unlock-granted audit row")
        elif state != Lease.State.ACTIVE and str(lease_id) not in ended:
            report.fail(None, f"lease {lease_id} is {state} without an audit row for its end")
    for deposit_id in Deposit.objects.values_list("id", flat=True).iterator():
        if str(deposit_id) not in deposited:
            report.fail(None, f"deposit {deposit_id} exists without a deposit audit row")


def verify(*, checkpoint_dir: Path | None = None, verify_key: bytes | None = None, record: bool = True) -> Report:
    """Walk the chain from seq 1, then check every checkpoint (database rows and exported files).

    Reports the first bad seq: a gap (deleted row), a ``prev_hash`` that does not link (reordered or
    deleted row), a recomputed hash that differs (edited row), a head that does not match the last row
    (truncated tail), or a signed checkpoint the chain no longer matches (consistent rewrite). Finally the
    state is cross-checked against the log (a lease or deposit the log does not account for).
    """
    report = Report()
    directory = Path(checkpoint_dir or settings.HYPERTUNA_ESCROW_CHECKPOINT_DIR)

    points: list[_SignedPoint] = []
    for cp in AuditCheckpoint.objects.order_by("seq"):
        points.append(
            _SignedPoint(
                source=f"checkpoint row #{cp.seq}",
                seq=cp.seq,
                entry_hash=cp.entry_hash,
                signed_at_micros=_micros(cp.signed_at),
                key_id=cp.key_id,
                signature_hex=cp.signature,
            )
        )
    for item in _file_checkpoints(directory):
        if isinstance(item, str):
            report.fail(None, item)
        else:
            points.append(item)
    wanted = {p.seq for p in points}
    hashes_at: dict[int, str] = {}

    expected_seq, prev = 1, GENESIS
    last_seq, last_hash = 0, GENESIS
    for row in AuditEntry.objects.order_by("seq").iterator(chunk_size=2000):
        report.entries += 1
        if row.seq != expected_seq:
            report.fail(expected_seq, f"row #{expected_seq} is missing (next row is #{row.seq})")
            # Keep walking from the row we have so later damage is reported too.
            expected_seq = row.seq
        if row.prev_hash != prev:
            report.fail(row.seq, f"row #{row.seq} does not link to its predecessor (moved, or a row before it changed)")
        recomputed = _row_hash(row)
        if recomputed != row.entry_hash:
            report.fail(row.seq, f"row #{row.seq} was modified (its hash does not match its contents)")
        if row.seq in wanted:
            hashes_at[row.seq] = row.entry_hash
        # Continue the chain with the stored hash so one edit is reported once, at the row that changed.
        prev, last_seq, last_hash = row.entry_hash, row.seq, row.entry_hash
        expected_seq = row.seq + 1

    head = AuditHead.objects.filter(id=1).first()
    if head is not None and (head.seq != last_seq or head.entry_hash != last_hash):
        report.fail(min(head.seq, last_seq + 1), f"chain head says #{head.seq} but the log ends at #{last_seq}")

    if points and verify_key is None:
        verify_key = escrow_keys().verify_key
    for point in points:
        assert verify_key is not None
        report.checkpoints += 1
        try:
            crypto.verify_signature(
                verify_key,
                crypto.message(
                    crypto.DOMAIN_CHECKPOINT,
                    [str(point.seq), point.entry_hash, str(point.signed_at_micros), point.key_id],
                ),
                bytes.fromhex(point.signature_hex),
            )
        except (crypto.CryptoError, ValueError):
            report.fail(point.seq, f"{point.source}: signature does not verify with the escrow key")
            continue
        if point.seq > last_seq:
            report.fail(last_seq + 1, f"{point.source}: signed #{point.seq} but the log ends at #{last_seq}")
        elif hashes_at.get(point.seq) != point.entry_hash:
            report.fail(point.seq, f"{point.source}: the chain no longer has the signed hash at #{point.seq}")

    _cross_check_state(report)

    if record:
        AuditVerification.objects.create(
            ran_at=timezone.now(),
            ok=report.ok,
            entries=report.entries,
            checkpoints=report.checkpoints,
            first_bad_seq=report.first_bad_seq,
            problem="; ".join(report.problems)[:500],
        )
    if not report.ok:
        logger.error("escrow audit verification failed", extra={"first_bad_seq": report.first_bad_seq})
    return report
