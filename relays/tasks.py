"""Periodic relay maintenance (beat schedule in settings) and blind-peer trust pushes. Tasks take no
secrets and are idempotent."""

from __future__ import annotations

from asgiref.sync import async_to_sync, sync_to_async
from celery import shared_task

from hypertuna.bridge import BridgeClientError
from relays import blind_trust, services
from replicas.blindpeer import bridge_client


@shared_task(autoretry_for=(Exception,), retry_backoff=True, max_retries=3)
def expire_registrations() -> int:
    return services.expire_registrations()


@shared_task(autoretry_for=(Exception,), retry_backoff=True, max_retries=3)
def prune_registration_history() -> int:
    return services.prune_registration_history()


async def _push(relay_key: str, withdraw: bool) -> dict[str, object]:
    if withdraw:
        scopes = blind_trust.withdrawn_scopes([relay_key])
    else:
        scopes = await sync_to_async(blind_trust.relay_scopes)([relay_key])
    async with bridge_client() as client:
        return await blind_trust.push(client, scopes)


@shared_task(autoretry_for=(BridgeClientError, OSError), retry_backoff=True, retry_backoff_max=60, max_retries=5)
def push_blind_peer_trust(relay_key: str, withdraw: bool = False) -> dict[str, object]:
    """Send the relay's blind-peer trust scope to the bridge (computed now, so a late run sends the
    current state), or drop it (``withdraw``: the registration lapsed or was removed). The bridge event
    consumer's reconcile covers a bridge that was down for every retry."""
    return async_to_sync(_push)(relay_key, withdraw)


@shared_task(autoretry_for=(Exception,), retry_backoff=True, max_retries=3)
def collect_stats() -> int:
    """One dashboard sample (and the rollup of complete hours); see ``relays.stats``."""
    from relays import stats

    return stats.collect().pk


@shared_task(autoretry_for=(Exception,), retry_backoff=True, max_retries=3)
def prune_stats() -> int:
    from relays import stats

    return stats.prune()
