"""Replica sync and blind-peer operator actions (beat schedule in settings). Tasks take keys or ids,
call services, are idempotent (re-running a sync re-reads from the committed checkpoint; an action
already finished is not performed twice) and declare their retries."""

from __future__ import annotations

import logging
from datetime import timedelta

from asgiref.sync import async_to_sync
from celery import shared_task
from django.db.models import Q
from django.utils import timezone

from hypertuna.bridge import BridgeClientError
from replicas import actions, blindpeer, readiness
from replicas.models import MirrorAction, Replica
from replicas.sources import BridgeReplicaSource, SourceError
from replicas.sync import SyncResult, sync_relay

logger = logging.getLogger(__name__)


async def _sync_with_bridge(relay_key: str, full: bool) -> SyncResult:
    async with blindpeer.bridge_client() as client:
        return await sync_relay(relay_key, BridgeReplicaSource(client), full=full)


@shared_task(autoretry_for=(BridgeClientError, SourceError), retry_backoff=True, retry_backoff_max=300, max_retries=5)
def sync_replica(relay_key: str, full: bool = False) -> dict[str, object]:
    """Sync one relay's replica from the bridge (bounded by HYPERTUNA_REPLICA_MAX_BATCHES per run)."""
    result = async_to_sync(_sync_with_bridge)(relay_key, full)
    return {
        "relayKey": relay_key,
        "checkpoint": result.checkpoint,
        "length": result.length,
        "inserted": result.inserted,
        "complete": result.complete,
    }


@shared_task(autoretry_for=(Exception,), retry_backoff=True, max_retries=3)
def sync_all_replicas() -> int:
    """Enqueue a sync for every replica with a view core that is behind, never synced, or not checked
    for a minute (the bridge's progress events may lag; a quiet poll keeps lengths honest)."""
    quiet = timezone.now() - timedelta(seconds=60)
    keys = list(
        Replica.objects.exclude(view_core_key="")
        .filter(Q(behind_since__isnull=False) | Q(last_synced_at__isnull=True) | Q(last_synced_at__lt=quiet))
        .values_list("relay_key", flat=True)
    )
    for key in keys:
        sync_replica.delay(key)
    return len(keys)


@shared_task(autoretry_for=(Exception,), retry_backoff=True, max_retries=3)
def refresh_replica_states() -> int:
    return readiness.refresh_states()


@shared_task(autoretry_for=(BridgeClientError,), retry_backoff=True, max_retries=5)
def perform_mirror_action(action_id: int) -> str:
    """Ask the bridge to carry out a recorded operator action, then store its answer."""
    action = MirrorAction.objects.filter(pk=action_id).first()
    if action is None or action.status != MirrorAction.Status.REQUESTED:
        return "skipped"
    try:
        if action.action == MirrorAction.Action.GC:
            result = async_to_sync(blindpeer.run_gc)(reason=action.reason)
        else:
            result = async_to_sync(blindpeer.delete_core)(core_key=action.core_key, reason=action.reason)
    except BridgeClientError as exc:
        if perform_mirror_action.request.retries >= (perform_mirror_action.max_retries or 0):
            actions.complete_mirror_action(action_id=action_id, ok=False, error=str(exc))
            return "failed"
        raise
    actions.complete_mirror_action(action_id=action_id, ok=True, result=result)
    return "done"
