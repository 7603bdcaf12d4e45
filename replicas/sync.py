"""Replica sync: read a relay's mirrored view from a :class:`ReplicaSource` into the replica tables.

Incremental from the replica's checkpoint, in batches of ``HYPERTUNA_REPLICA_BATCH_SIZE`` view blocks;
each batch is materialized and the checkpoint advanced in **one** transaction
(``materialize.ingest_view_batch``), so a crash at any point resumes from the last committed batch with
nothing lost or doubled. Runs of the same relay may overlap (two Celery workers, a command and a task):
the replica row lock serializes the batches and a batch read from a stale checkpoint is dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from asgiref.sync import sync_to_async
from django.conf import settings

from replicas import materialize
from replicas.readiness import lost_view_error
from replicas.sources import BridgeReplicaSource, ReplicaSource, SourceError, ViewBatch, ViewEntry

__all__ = [
    "BridgeReplicaSource",
    "ReplicaSource",
    "SyncResult",
    "ViewBatch",
    "ViewCoreRemoved",
    "ViewEntry",
    "sync_relay",
]


class ViewCoreRemoved(SourceError):
    """The replica is behind and the blind peer no longer holds the view core it reads."""


@dataclass
class SyncResult:
    relay_key: str
    start: int
    checkpoint: int = 0
    length: int = 0
    batches: int = 0
    inserted: int = 0
    removed: int = 0
    rejected: int = 0
    complete: bool = False
    notes: list[str] = field(default_factory=list)


Progress = Callable[[int, int], None]


async def sync_relay(
    relay_key: str,
    source: ReplicaSource,
    *,
    full: bool = False,
    batch_size: int | None = None,
    max_batches: int | None = None,
    progress: Progress | None = None,
) -> SyncResult:
    """Sync ``relay_key`` until caught up with the view length or ``max_batches`` batches were read.

    A source error is recorded on the replica (``consecutive_failures``, ``last_error``) and re-raised,
    so the Celery task retries; the checkpoint stays where the last committed batch left it.
    ``progress(checkpoint, length)`` is called after each batch. A replica whose view core the blind peer
    removed while it was behind is not read (the blind peer holds none of it): that is a failure too
    (:class:`ViewCoreRemoved`), so the run says why the replica does not progress.
    """
    size = batch_size or settings.HYPERTUNA_REPLICA_BATCH_SIZE
    budget = max_batches or settings.HYPERTUNA_REPLICA_MAX_BATCHES
    plan = await sync_to_async(materialize.begin_sync)(relay_key=relay_key, full=full)
    result = SyncResult(relay_key=relay_key, start=plan.checkpoint, checkpoint=plan.checkpoint)
    view_core_key = plan.view_core_key
    restarts = 0
    try:
        lost = await sync_to_async(lost_view_error)(relay_key)
        if lost is not None:
            raise ViewCoreRemoved(lost)
        while result.batches < budget:
            batch = await source.read_view(relay_key, view_core_key, result.checkpoint, size)
            outcome = await sync_to_async(materialize.ingest_view_batch)(
                relay_key=relay_key, start_seq=result.checkpoint, batch=batch, view_core_key=view_core_key
            )
            result.batches += 1
            result.inserted += outcome.inserted
            result.removed += outcome.removed
            result.rejected += outcome.rejected
            result.notes.extend(outcome.notes)
            result.length = batch.length
            if outcome.restarted:
                restarts += 1
                if restarts > 1:
                    break  # a view that keeps changing under us: let the next run pick it up
                view_core_key = batch.view_core_key or view_core_key
            advanced = outcome.checkpoint != result.checkpoint
            result.checkpoint = outcome.checkpoint
            if progress is not None:
                progress(result.checkpoint, batch.length)
            if outcome.restarted:
                continue
            if result.checkpoint >= batch.length:
                result.complete = True
                break
            if not advanced:
                result.notes.append("source returned no progress; stopping this run")
                break
    except Exception as exc:
        await sync_to_async(materialize.record_sync_failure)(relay_key=relay_key, error=f"{type(exc).__name__}: {exc}")
        raise
    return result
