"""Escrow settings as typed values (read at call time so tests can override settings)."""

from __future__ import annotations

from django.conf import settings

from escrow.policy import Policy


def current_policy() -> Policy:
    return Policy(
        version=settings.HYPERTUNA_ESCROW_POLICY_VERSION,
        heartbeat_silence=settings.HYPERTUNA_ESCROW_HEARTBEAT_SILENCE,
        mirror_max_age=settings.HYPERTUNA_ESCROW_MIRROR_MAX_AGE,
        lease_ttl=settings.HYPERTUNA_ESCROW_LEASE_TTL,
        lease_max_ttl=settings.HYPERTUNA_ESCROW_LEASE_MAX_TTL,
        deposit_max_ttl=settings.HYPERTUNA_ESCROW_DEPOSIT_MAX_TTL,
    )


def signature_window() -> int:
    return settings.HYPERTUNA_ESCROW_SIGNATURE_WINDOW
