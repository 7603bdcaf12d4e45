"""Sync replicas from the bridge now: ``manage.py replicas_sync [--relay KEY ...] [--full]``."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from hypertuna.bridge import BridgeClientError
from replicas import blindpeer
from replicas.models import Replica
from replicas.sources import BridgeReplicaSource, ReplicaSource, SourceError
from replicas.sync import sync_relay


class ProgressLine:
    """A one-line progress bar on a terminal (plain lines otherwise): blocks done / view length, rate."""

    def __init__(self, label: str, stream: Any) -> None:
        self.label = label
        self.stream = stream
        self.started = time.monotonic()
        self.tty = hasattr(stream, "isatty") and stream.isatty()

    def __call__(self, done: int, total: int) -> None:
        width = 30
        fraction = 1.0 if total <= 0 else min(1.0, done / total)
        bar = "#" * int(width * fraction) + "-" * (width - int(width * fraction))
        rate = done / max(time.monotonic() - self.started, 1e-6)
        line = f"{self.label[:24]:24} [{bar}] {done}/{total} blocks {rate:,.0f}/s"
        if self.tty:
            self.stream.write("\r" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")


class Command(BaseCommand):
    help = "Read mirrored relay views through the bridge into the replica tables (incremental, resumable)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--relay", action="append", default=[], help="relay key (repeatable); default: all")
        parser.add_argument("--full", action="store_true", help="re-read each view from block 0")
        parser.add_argument("--max-batches", type=int, default=None, help="stop each relay after this many batches")

    def handle(self, *args: Any, **options: Any) -> None:
        keys = options["relay"] or list(Replica.objects.exclude(view_core_key="").values_list("relay_key", flat=True))
        known = set(Replica.objects.filter(relay_key__in=keys).values_list("relay_key", flat=True))
        missing = set(options["relay"]) - known
        if missing:
            raise CommandError(f"no replica for: {', '.join(sorted(missing))}")
        if not keys:
            self.stdout.write("No replica has a mirrored view yet.")
            return
        try:
            failures = asyncio.run(self._run(keys, options["full"], options["max_batches"]))
        except BridgeClientError as exc:
            raise CommandError(f"bridge unavailable: {exc}") from None
        if failures:
            raise CommandError(f"{failures} relay(s) failed; see the admin (Replicas) for the errors")

    async def _run(self, keys: list[str], full: bool, max_batches: int | None) -> int:
        async with blindpeer.bridge_client() as client:
            return await self.sync_all(keys, BridgeReplicaSource(client), full=full, max_batches=max_batches)

    async def sync_all(self, keys: list[str], source: ReplicaSource, *, full: bool, max_batches: int | None) -> int:
        failures = 0
        for key in keys:
            progress = ProgressLine(key, self.stdout._out if hasattr(self.stdout, "_out") else sys.stdout)
            try:
                result = await sync_relay(key, source, full=full, max_batches=max_batches, progress=progress)
            except (BridgeClientError, SourceError, OSError) as exc:
                progress.close()
                failures += 1
                self.stderr.write(f"{key}: {type(exc).__name__}: {exc}")
                continue
            progress.close()
            state = "caught up" if result.complete else "partial"
            self.stdout.write(
                f"{key}: {state}, +{result.inserted} events, -{result.removed}, "
                f"{result.rejected} rejected, checkpoint {result.checkpoint}/{result.length}"
            )
        return failures
