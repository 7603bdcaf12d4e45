"""Periodic relay maintenance (beat schedule in settings). Tasks take no secrets and are idempotent."""

from __future__ import annotations

from celery import shared_task

from relays import services


@shared_task(autoretry_for=(Exception,), retry_backoff=True, max_retries=3)
def expire_registrations() -> int:
    return services.expire_registrations()


@shared_task(autoretry_for=(Exception,), retry_backoff=True, max_retries=3)
def prune_registration_history() -> int:
    return services.prune_registration_history()
