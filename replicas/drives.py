"""Files of a relay while its workers are offline: where copies are (selectors) and what the gateway wrote
for the relay (services).

Reads: a worker's drive cores are known from its mirror metadata and registration (``MirrorCore`` rows of
type ``hyperdrive-metadata`` / ``pfp-drive``); the folder its files sit in is the relay's public identifier
(``npub…:name``) or, legacy, the relay key (worker-data-layout §3). Writes: each file or HTTP artifact the
gateway stores in a relay's gateway-owned drive is a ``PendingWrite`` until the relay's worker has
replicated it and completed its resync. Leased EVENTs are the replica's ``pending`` events and are counted
from there, not recorded twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.db.models import Count
from django.utils import timezone
from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from replicas.models import CoreType, GatewayDrive, MirrorCore, PendingWrite, Replica
from replicas.selectors import pending_event_counts


@dataclass(frozen=True)
class DriveCopies:
    """Where a relay's files may be read from when no worker answers."""

    relay_key: str
    mirror_drive_keys: tuple[str, ...]
    folders: tuple[str, ...]  # worker folder names, most specific first
    gateway_drive: bool  # the gateway wrote files for this relay into a drive of its own

    @property
    def any(self) -> bool:
        return bool(self.mirror_drive_keys) or self.gateway_drive


def drive_copies(relay_key: str, *, pfp: bool = False) -> DriveCopies:
    """The relay's mirrored drive cores (active, newest activity first) and the folders to look in."""
    core_type = CoreType.PFP_DRIVE if pfp else CoreType.HYPERDRIVE_METADATA
    cores = (
        MirrorCore.objects.filter(relay_key=relay_key, core_type=core_type, state=MirrorCore.State.ACTIVE)
        .order_by("-last_activity_at")
        .values_list("core_key", "public_identifier")[:8]
    )
    keys: list[str] = []
    folders: list[str] = []
    for core_key, identifier in cores:
        keys.append(core_key)
        if identifier and identifier not in folders:
            folders.append(identifier)
    replica_identifier = Replica.objects.filter(relay_key=relay_key).values_list("public_identifier", flat=True).first()
    for name in (replica_identifier, relay_key if ":" in relay_key else None, relay_key.lower()):
        if name and name not in folders:
            folders.append(name)
    gateway = not pfp and GatewayDrive.objects.filter(relay_key=relay_key).exists()
    return DriveCopies(relay_key, tuple(keys), tuple(folders), gateway)


def relay_known(relay_key: str) -> bool:
    """Whether the gateway holds anything of this relay's (a mirror, a replica or a gateway drive): its files
    may be served even after its registration lapsed."""
    return (
        MirrorCore.objects.filter(relay_key=relay_key).exists()
        or GatewayDrive.objects.filter(relay_key=relay_key).exists()
        or Replica.objects.filter(relay_key=relay_key).exists()
    )


def record_drive(*, relay_key: str, identifier: str, info: dict[str, Any]) -> GatewayDrive:
    """Create or refresh the row of a relay's gateway drive from the bridge's description of it."""
    drive, _ = GatewayDrive.objects.update_or_create(
        relay_key=relay_key,
        defaults={
            "identifier": identifier,
            "drive_key": str(info.get("driveKey") or ""),
            "blobs_key": str(info.get("blobsKey") or ""),
            "version": int(info.get("version") or 0),
            "mirrored": bool(info.get("mirrored")),
        },
    )
    return drive


def record_pending_write(
    *, relay_key: str, identifier: str, write_type: str, info: dict[str, Any], lease_id: str
) -> PendingWrite:
    """One file or artifact the gateway stored for ``relay_key`` (``info``: the bridge's answer to the write),
    with the drive row refreshed in the same transaction."""
    with transaction.atomic():
        drive = record_drive(relay_key=relay_key, identifier=identifier, info=info)
        return PendingWrite.objects.create(
            relay_key=relay_key,
            write_type=write_type,
            reference=str(info.get("path") or "")[:300],
            drive_key=drive.drive_key,
            drive_version=drive.version,
            size=int(info.get("bytes") or 0),
            lease_id=lease_id[:128],
            next_push_at=timezone.now(),
        )


def note_leased_events(relay_key: str, event_id: str) -> None:
    """Leased events await the relay's worker: one open ``event`` row per relay marks that it must be told (the
    events themselves are the replica's pending rows). New events after an acknowledgement re-arm the push."""
    now = timezone.now()
    open_rows = PendingWrite.objects.filter(
        relay_key=relay_key, write_type=PendingWrite.Type.EVENT, cleared_at__isnull=True
    )
    if not open_rows.update(acknowledged_at=None, next_push_at=now, reference=event_id):
        PendingWrite.objects.create(
            relay_key=relay_key, write_type=PendingWrite.Type.EVENT, reference=event_id, next_push_at=now
        )


def pending_counts() -> dict[str, int]:
    """Open pending writes per relay: uncleared files and artifacts plus leased events not yet linearized."""
    counts: dict[str, int] = {}
    rows = (
        PendingWrite.objects.filter(cleared_at__isnull=True)
        .exclude(write_type=PendingWrite.Type.EVENT)  # a marker: the events are counted from the replica
        .values("relay_key")
        .annotate(n=Count("id"))
    )
    for row in rows:
        counts[row["relay_key"]] = counts.get(row["relay_key"], 0) + row["n"]
    for key, n in pending_event_counts().items():
        counts[key] = counts.get(key, 0) + n
    return counts


PENDING = (
    "gateway_pending_writes",
    "Writes the gateway holds for a relay until its worker resyncs (files, artifacts, events)",
)


class PendingWritesCollector(Collector):
    """``gateway_pending_writes{relay}`` at scrape time, from the database (every node reports the same)."""

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(*PENDING, labels=["relay"])

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily(*PENDING, labels=["relay"])
        try:
            counts = pending_counts()
        except Exception:  # a scrape must not fail because the database is briefly unavailable
            return
        for relay_key, n in sorted(counts.items()):
            gauge.add_metric([relay_key], n)
        yield gauge


_registered = False


def register_collector() -> None:
    global _registered
    if not _registered:
        REGISTRY.register(PendingWritesCollector())
        _registered = True
