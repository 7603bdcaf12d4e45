"""``manage.py escrow_audit verify|checkpoint``: prove the audit chain, or sign a checkpoint now.

``verify`` exits 0 when the chain, the head and every checkpoint (database rows and exported files)
agree, and 1 otherwise, naming the first bad row. Each run is recorded for the
``escrow_audit_verification_ok`` metric.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from escrow import audit


class Command(BaseCommand):
    help = "Verify the escrow audit hash chain and signed checkpoints, or create a checkpoint."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["verify", "checkpoint"])
        parser.add_argument("--checkpoint-dir", help="Exported checkpoint files (default: the configured directory)")
        parser.add_argument("--verify-key", help="Expected escrow verify key, hex (default: the loaded escrow key)")

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
        if report.ok:
            self.stdout.write(
                self.style.SUCCESS(f"OK: {report.entries} entries, {report.checkpoints} checkpoints verified.")
            )
            return
        for problem in report.problems:
            self.stderr.write(f"- {problem}")
        raise CommandError(f"Audit chain verification FAILED; first bad row: #{report.first_bad_seq}")
