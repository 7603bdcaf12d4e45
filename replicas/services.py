"""Every write to mirrors, replicas and materialized replica events, by concern:

- :mod:`replicas.mirrors`: bridge mirror events and workers' signed mirror metadata;
- :mod:`replicas.readiness`: replica state, real lag, the view-core link;
- :mod:`replicas.materialize`: view batches → visible events, checkpoints, sync bookkeeping;
- :mod:`replicas.actions`: operator GC / drop requests and the bridge's answers;
- :mod:`replicas.keys`: core keys, tag keys, millisecond timestamps.

Each service runs in one transaction; side effects (bridge calls through Celery) are enqueued with
``transaction.on_commit`` so nothing is asked of the bridge for an intent that was rolled back. This
module re-exports the public services so callers keep one import.
"""

from __future__ import annotations

from replicas.actions import complete_mirror_action, request_drop, request_gc
from replicas.keys import MAX_PLAIN_TAG_BYTES, normalize_core_key, tag_key
from replicas.materialize import (
    DELETION_KIND,
    IngestResult,
    SyncPlan,
    begin_sync,
    ingest_view_batch,
    materialize_events,
    record_sync_failure,
)
from replicas.mirrors import (
    MetadataResult,
    record_mirror_added,
    record_mirror_progress,
    record_mirror_removed,
    record_worker_metadata,
)
from replicas.readiness import MAX_OBSERVATIONS, derive_state, lag_ms, refresh_states

__all__ = [
    "DELETION_KIND",
    "MAX_OBSERVATIONS",
    "MAX_PLAIN_TAG_BYTES",
    "IngestResult",
    "MetadataResult",
    "SyncPlan",
    "begin_sync",
    "complete_mirror_action",
    "derive_state",
    "ingest_view_batch",
    "lag_ms",
    "materialize_events",
    "normalize_core_key",
    "record_mirror_added",
    "record_mirror_progress",
    "record_mirror_removed",
    "record_sync_failure",
    "record_worker_metadata",
    "refresh_states",
    "request_drop",
    "request_gc",
    "tag_key",
]
