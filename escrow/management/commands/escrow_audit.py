"""``manage.py escrow_audit verify|checkpoint``: prove the audit chain, or sign a checkpoint now.

``verify`` exits 0 when the chain, the head and every checkpoint (database rows and exported files)
agree, and 1 otherwise, naming the first bad row. Each run is recorded for the
``escrow_audit_verification_ok`` metric. With ``--relay KEY`` it also lists that relay's entries in chain
order, one step a line (deposit, refused and granted unlocks, renewals, revocation, expiry, re-deposit),
so an operator sees what the verified chain says happened.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from escrow import audit
from escrow.models import AuditEntry

# Detail fields worth a column in the timeline (no key material is ever in an audit row).
_TIMELINE_DETAILS = ("fence", "renewals", "expiresAt", "writerPublicKey", "supersedes", "rotationCompleted")


def timeline(relay_key: str) -> list[str]:
    """One line per audit entry of ``relay_key``, in chain order."""
    lines = []
    for entry in AuditEntry.objects.filter(relay_key=relay_key).order_by("seq"):
        details = entry.details if isinstance(entry.details, dict) else {}
        extra = [f"{name}={details[name]}" for name in _TIMELINE_DETAILS if details.get(name) is not None]
        if entry.lease_id:
            extra.insert(0, f"lease={entry.lease_id}")
        if entry.deposit_id:
            extra.insert(0, f"deposit={entry.deposit_id}")
        when = entry.occurred_at.isoformat(timespec="milliseconds")
        lines.append(f"#{entry.seq} {when} {entry.action} [{entry.reason}] by {entry.actor} {' '.join(extra)}".rstrip())
    return lines


class Command(BaseCommand):
    help = "Verify the escrow audit hash chain and signed checkpoints, or create a checkpoint."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["verify", "checkpoint"])
        parser.add_argument("--checkpoint-dir", help="Exported checkpoint files (default: the configured directory)")
        parser.add_argument("--verify-key", help="Expected escrow verify key, hex (default: the loaded escrow key)")
        parser.add_argument("--relay", help="verify: also list this relay's entries (64-hex key), one step a line")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["action"] == "checkpoint":
            cp = audit.create_checkpoint()
            if cp is None:
                self.stdout.write("No new entries since the last checkpoint.")
            else:
                self.stdout.write(f"Checkpoint signed at #{cp.seq} ({cp.entry_hash}).")
            return
        report = audit.verify(
            checkpoint_dir=Path(options["checkpoint_dir"]) if options["checkpoint_dir"] else None,
            verify_key=bytes.fromhex(options["verify_key"]) if options["verify_key"] else None,
        )
        if options["relay"]:
            steps = timeline(options["relay"].lower())
            self.stdout.write(f"Relay {options['relay'].lower()}: {len(steps)} entries")
            for line in steps:
                self.stdout.write(f"  {line}")
        if report.ok:
            self.stdout.write(
                self.style.SUCCESS(f"OK: {report.entries} entries, {report.checkpoints} checkpoints verified.")
            )
            return
        for problem in report.problems:
            self.stderr.write(f"- {problem}")
        raise CommandError(f"Audit chain verification FAILED; first bad row: #{report.first_bad_seq}")
