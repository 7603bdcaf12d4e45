"""The audit hash chain: append-only triggers, and verification against an attacker with DB access."""

from __future__ import annotations

import json
from contextlib import contextmanager

import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction

from escrow import audit
from escrow.models import AuditCheckpoint, AuditEntry, AuditHead
from tests.escrow.conftest import install_audit_triggers, remove_audit_triggers, unlock

pytestmark = pytest.mark.django_db


@contextmanager
def triggers_bypassed():
    """What an attacker with superuser access does: switch the append-only triggers off."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL session_replication_role = replica")
        yield
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL session_replication_role = origin")
    else:
        remove_audit_triggers()
        yield
        install_audit_triggers()


@pytest.fixture
def chain(worker, clock):
    """About ten audit rows from a realistic sequence."""
    worker.deposit()
    clock.advance(91)
    unlock(clock, worker.relay_key)
    clock.advance(1)
    worker.heartbeat()
    worker.rotate_writer()
    worker.deposit()
    clock.advance(91)
    unlock(clock, worker.relay_key)
    worker.revoke()
    for _ in range(2):
        with pytest.raises(Exception):
            unlock(clock, worker.relay_key)
    assert AuditEntry.objects.count() >= 9
    return list(AuditEntry.objects.order_by("seq"))


def test_chain_links_every_row_to_its_predecessor(chain):
    assert chain[0].prev_hash == audit.GENESIS and chain[0].seq == 1
    for before, after in zip(chain, chain[1:], strict=False):
        assert after.prev_hash == before.entry_hash and after.seq == before.seq + 1
    head = AuditHead.objects.get()
    assert (head.seq, head.entry_hash) == (chain[-1].seq, chain[-1].entry_hash)
    assert audit.verify(record=False).ok


def test_hash_encoding_is_stable():
    # Golden value: changing the encoder silently would break verification of every stored chain.
    from datetime import UTC, datetime

    body = audit.entry_body(
        seq=1,
        occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
        action="deposit",
        actor="worker:w",
        relay_key="ab" * 32,
        lease_id="",
        deposit_id="d",
        reason="first-deposit",
        details={"b": 1, "a": [True, None, "é"]},
    )
    assert body == (
        b'{"action":"deposit","actor":"worker:w","at":1767225600000000,"deposit":"d","details":{"a":[true,null,'
        b'"\\u00e9"],"b":1},"lease":"","reason":"first-deposit","relay":"' + b"ab" * 32 + b'","seq":1,"v":1}'
    )
    # SHA-256(0x00 || "hypertuna/escrow/audit/v1" || 0x00 || 32 zero bytes || body), computed independently.
    assert audit.chain_hash(audit.GENESIS, body) == "4d93975386489830897af3224fdf66a49deb6753ce32e26198354e6542de9f0d"


def test_append_outside_a_transaction_is_refused(transactional_db):
    with pytest.raises(audit.AuditError):
        audit.append(action="deposit", actor="x")


def test_database_refuses_update_and_delete(chain):
    for attempt in (
        lambda: AuditEntry.objects.filter(seq=2).update(reason="nothing happened"),
        lambda: AuditEntry.objects.filter(seq=2).delete(),
        lambda: AuditEntry.objects.all().delete(),
    ):
        with pytest.raises(DatabaseError), transaction.atomic():
            attempt()
    assert AuditEntry.objects.count() == len(chain)


@pytest.mark.parametrize(
    "statement",
    [
        "TRUNCATE escrow_auditentry",
        "TRUNCATE escrow_auditcheckpoint",
        "TRUNCATE escrow_auditentry RESTART IDENTITY CASCADE",
        "TRUNCATE escrow_audithead, escrow_auditverification, escrow_auditentry CASCADE",
        "TRUNCATE ONLY escrow_auditcheckpoint",
    ],
)
def test_database_refuses_truncate(chain, statement):
    if connection.vendor != "postgresql":
        pytest.skip("SQLite has no TRUNCATE (DELETE is refused above)")
    audit.create_checkpoint()
    checkpoints = AuditCheckpoint.objects.count()
    assert checkpoints >= 1
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(statement)
    assert AuditEntry.objects.count() == len(chain)
    assert AuditCheckpoint.objects.count() == checkpoints
    assert audit.verify(record=False).ok


def test_truncate_guard_binds_everyone_but_a_superuser(chain):
    """The guard is a trigger: switching triggers off (superuser-only) is what gets past it, as for 0002."""
    if connection.vendor != "postgresql":
        pytest.skip("SQLite has no TRUNCATE")
    with connection.cursor() as cursor:
        cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        if not cursor.fetchone()[0]:
            pytest.skip("needs a superuser connection")
        cursor.execute("CREATE ROLE escrow_app_probe NOLOGIN")
        cursor.execute("GRANT ALL ON escrow_auditentry TO escrow_app_probe")
    with pytest.raises(DatabaseError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL ROLE escrow_app_probe")
        cursor.execute("SET LOCAL session_replication_role = replica")
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL ROLE escrow_app_probe")
        cursor.execute("TRUNCATE escrow_auditentry")
    assert AuditEntry.objects.count() == len(chain)
    with triggers_bypassed(), connection.cursor() as cursor:
        cursor.execute("TRUNCATE escrow_auditentry")
    assert AuditEntry.objects.count() == 0
    assert not audit.verify(record=False).ok


def test_edited_row_is_detected_and_named(chain):
    with triggers_bypassed():
        AuditEntry.objects.filter(seq=3).update(reason="policy-satisfied-by-operator")
    report = audit.verify(record=False)
    assert not report.ok and report.first_bad_seq == 3


def test_edited_details_are_detected(chain):
    row = chain[4]
    with triggers_bypassed():
        AuditEntry.objects.filter(seq=row.seq).update(details={**row.details, "forged": True})
    assert audit.verify(record=False).first_bad_seq == row.seq


def test_deleted_row_is_detected_and_named(chain):
    with triggers_bypassed():
        AuditEntry.objects.filter(seq=4).delete()
    report = audit.verify(record=False)
    assert not report.ok and report.first_bad_seq == 4
    assert any("missing" in p for p in report.problems)


def test_reordered_rows_are_detected(chain):
    with triggers_bypassed():
        AuditEntry.objects.filter(seq=5).update(seq=-5)
        AuditEntry.objects.filter(seq=6).update(seq=5)
        AuditEntry.objects.filter(seq=-5).update(seq=6)
    report = audit.verify(record=False)
    assert not report.ok and report.first_bad_seq == 5


def test_truncated_tail_is_detected(chain):
    last = chain[-1].seq
    with triggers_bypassed():
        AuditEntry.objects.filter(seq=last).delete()
    report = audit.verify(record=False)
    assert not report.ok and report.first_bad_seq == last


def _rewrite_consistently(from_seq: int, reason: str) -> None:
    """Edit a row and recompute every later hash and the head: the chain alone then looks intact."""
    prev = audit.GENESIS
    for row in AuditEntry.objects.order_by("seq"):
        if row.seq == from_seq:
            row.reason = reason
        if row.seq >= from_seq:
            row.prev_hash = prev
            row.entry_hash = audit._row_hash(row)
            AuditEntry.objects.filter(pk=row.pk).update(
                reason=row.reason, prev_hash=row.prev_hash, entry_hash=row.entry_hash
            )
        prev = row.entry_hash
    AuditHead.objects.filter(id=1).update(entry_hash=prev)


def test_consistent_rewrite_is_caught_by_the_signed_checkpoint(chain, settings):
    cp = audit.create_checkpoint()
    assert cp is not None and cp.seq == chain[-1].seq
    audit.export_checkpoint(cp)  # on_commit does not fire inside the test transaction
    with triggers_bypassed():
        _rewrite_consistently(3, "rewritten")
    report = audit.verify(record=False)
    assert not report.ok and report.first_bad_seq == cp.seq
    # Deleting the checkpoint rows as well does not help: the exported file still holds the signed hash.
    with triggers_bypassed():
        AuditCheckpoint.objects.all().delete()
    report = audit.verify(record=False)
    assert not report.ok and any("file checkpoint" in p for p in report.problems)


def test_forged_checkpoint_file_is_detected(chain, settings):
    cp = audit.create_checkpoint()
    path = audit.export_checkpoint(cp)
    document = json.loads(path.read_text())
    document["entryHash"] = "ab" * 32
    path.write_text(json.dumps(document))
    report = audit.verify(record=False)
    assert not report.ok and any("signature" in p for p in report.problems)


def test_checkpoint_only_when_the_head_moved(chain):
    assert audit.create_checkpoint() is not None
    assert audit.create_checkpoint() is None


def test_verify_command_passes_and_fails_naming_the_row(chain, capsys):
    call_command("escrow_audit", "verify")
    assert "OK:" in capsys.readouterr().out
    with triggers_bypassed():
        AuditEntry.objects.filter(seq=2).update(actor="gateway:someone-else")
    with pytest.raises(CommandError, match="first bad row: #2"):
        call_command("escrow_audit", "verify")


def test_state_without_audit_rows_is_reported(chain, worker, clock):
    from escrow.models import Deposit, Lease

    deposit = Deposit.objects.filter(state="active").first() or Deposit.objects.first()
    Lease.objects.create(
        relay_key=worker.relay_key,
        deposit=deposit,
        fence=99,
        requester="gateway:ghost",
        session_key_hash="0" * 64,
        issued_at=clock.now,
        expires_at=clock.now,
        max_expires_at=clock.now,
        state="revoked",
    )
    report = audit.verify(record=False)
    assert not report.ok and any("without an unlock-granted audit row" in p for p in report.problems)
