"""Operator actions on the blind peer (GC, drop one mirror): recorded here, carried out by the bridge through
the ``replicas.tasks.perform_mirror_action`` task, answered back with :func:`complete_mirror_action`.

The task is looked up by name in the Celery app's registry, so this module does not import ``replicas.tasks``,
which imports it: no import circle between the services and the tasks that call them.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from celery import current_app
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from hypertuna.exceptions import ApiError
from replicas.keys import normalize_core_key
from replicas.models import MirrorAction, MirrorCore

PERFORM_TASK = "replicas.tasks.perform_mirror_action"


def _enqueue_action(action: MirrorAction) -> None:
    transaction.on_commit(lambda: current_app.tasks[PERFORM_TASK].delay(action.pk))


def request_gc(*, reason: str = "manual", requested_by: str = "") -> MirrorAction:
    """Record an operator GC request and ask the bridge (after commit) to run blind-peer hygiene."""
    with transaction.atomic():
        action = MirrorAction.objects.create(
            action=MirrorAction.Action.GC, reason=(reason or "manual")[:200], requested_by=requested_by[:150]
        )
        _enqueue_action(action)
    return action


def request_drop(*, core_key: str, reason: str = "manual", requested_by: str = "") -> MirrorAction:
    """Record an operator request to drop one mirrored core and ask the bridge to delete it."""
    normalized = normalize_core_key(core_key)
    if normalized is None:
        raise ApiError("invalid-core-key", "The mirror key must be 64-hex or a z-base-32 hypercore id.")
    with transaction.atomic():
        core = MirrorCore.objects.select_for_update().filter(core_key=normalized).first()
        if core is None:
            raise ApiError("mirror-not-found", "No mirror with this core key.", status=404)
        if core.state == MirrorCore.State.ACTIVE:
            core.state = MirrorCore.State.REMOVING
            core.removal_reason = (reason or "manual")[:200]
            core.save(update_fields=["state", "removal_reason"])
        action = MirrorAction.objects.create(
            action=MirrorAction.Action.DROP,
            core_key=normalized,
            reason=(reason or "manual")[:200],
            requested_by=requested_by[:150],
        )
        _enqueue_action(action)
    return action


def complete_mirror_action(
    *, action_id: int, ok: bool, result: dict[str, Any] | None = None, error: str = "", now: datetime | None = None
) -> MirrorAction:
    """Store the bridge's answer to an operator action (and, for a successful drop, the removal)."""
    now = now or timezone.now()
    with transaction.atomic():
        action = MirrorAction.objects.select_for_update().get(pk=action_id)
        action.status = MirrorAction.Status.DONE if ok else MirrorAction.Status.FAILED
        action.finished_at = now
        action.result = result or {}
        action.error = error[:2000]
        action.save()
        if action.action == MirrorAction.Action.DROP:
            core = MirrorCore.objects.select_for_update().filter(core_key=action.core_key).first()
            if core is not None and ok:
                core.state = MirrorCore.State.REMOVED
                core.removed_at = now
                core.save(update_fields=["state", "removed_at"])
            elif core is not None and core.state == MirrorCore.State.REMOVING:
                core.state = MirrorCore.State.ACTIVE  # the blind peer still holds it
                core.save(update_fields=["state"])
        elif ok:
            cutoff = now - timedelta(days=settings.HYPERTUNA_REPLICA_REMOVED_RETENTION_DAYS)
            pruned, _ = MirrorCore.objects.filter(state=MirrorCore.State.REMOVED, removed_at__lt=cutoff).delete()
            action.result = {**action.result, "prunedMirrorRows": pruned}
            action.save(update_fields=["result"])
    return action
