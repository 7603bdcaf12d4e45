"""Escrow maintenance on Celery beat (schedule in settings). No arguments, no secrets, idempotent.

Expiry is enforced whenever a lease or deposit is read; these sweeps make it visible (state, audit row,
``escrow_lease_expirations_total``) without waiting for the next request for that relay.
"""

from __future__ import annotations

from celery import shared_task

from escrow import audit, leases, services


@shared_task(autoretry_for=(Exception,), retry_backoff=True, max_retries=3)
def expire_leases() -> int:
    # Leases and deposits in one sweep: one relay per transaction, binding lock first.
    return leases.expire_leases()


@shared_task(autoretry_for=(Exception,), retry_backoff=True, max_retries=3)
def audit_checkpoint() -> int:
    checkpoint = audit.create_checkpoint()
    return checkpoint.seq if checkpoint else 0


@shared_task(autoretry_for=(Exception,), retry_backoff=True, max_retries=3)
def verify_audit() -> bool:
    return audit.verify().ok


@shared_task(autoretry_for=(Exception,), retry_backoff=True, max_retries=3)
def prune_idempotency() -> int:
    return services.prune_idempotency()
