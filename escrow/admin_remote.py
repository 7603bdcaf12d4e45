"""The escrow's records as the gateway's admin and dashboard show them: read-only, never key material.

Where they live: the escrow role keeps its own database (``make run``: its own SQLite file; compose: a
Postgres on a network only the escrow joins). A gateway configured with ``HYPERTUNA_ESCROW_URL`` therefore
reads them from the escrow's read-only operator endpoints (``escrow.api.admin_read``) over the mutual TLS
its coordinator already uses; a process without one (the escrow role itself, a single-database test) reads
its own tables. Both give the same rows, built here by the same functions.

Rows are plain JSON values. Deposits carry no sealed secret, leases no session key hash; audit rows carry
the policy inputs of a decision but not the entry's other details.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.core.cache import cache
from django.db.models import QuerySet
from django.utils import timezone

from escrow.models import AuditEntry, AuditVerification, Deposit, Lease

LIMIT = 200
REFUSALS_WINDOW = timedelta(hours=24)
SUMMARY_CACHE_SECONDS = 5
REMOTE_TIMEOUT = 2.0


class EscrowUnreachable(RuntimeError):
    """The escrow did not answer the read (down, refused the certificate, or timed out)."""


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def deposit_row(d: Deposit) -> dict[str, Any]:
    return {
        "id": str(d.id),
        "relay_key": d.relay_key,
        "state": d.state,
        "writer_public_key": d.writer_public_key,
        "worker_key": d.worker_key,
        "owner_identity": d.owner_identity,
        "allow_gateway_writes": d.allow_gateway_writes,
        "policy_version": d.policy_version,
        "created_at": _iso(d.created_at),
        "expires_at": _iso(d.expires_at),
        "released_at": _iso(d.released_at),
        "end_reason": d.end_reason,
    }


def lease_row(lease: Lease) -> dict[str, Any]:
    return {
        "id": str(lease.id),
        "relay_key": lease.relay_key,
        "state": lease.state,
        "fence": lease.fence,
        "requester": lease.requester,
        "issued_at": _iso(lease.issued_at),
        "expires_at": _iso(lease.expires_at),
        "renewals": lease.renewals,
        "end_reason": lease.end_reason,
    }


def audit_row(entry: AuditEntry) -> dict[str, Any]:
    inputs = entry.details.get("inputs") if isinstance(entry.details, dict) else None
    return {
        "seq": entry.seq,
        "occurred_at": _iso(entry.occurred_at),
        "action": entry.action,
        "actor": entry.actor,
        "relay_key": entry.relay_key,
        "lease_id": entry.lease_id,
        "reason": entry.reason,
        "inputs": inputs if isinstance(inputs, dict) else None,
    }


def verification_row(v: AuditVerification) -> dict[str, Any]:
    return {
        "ran_at": _iso(v.ran_at),
        "ok": v.ok,
        "entries": v.entries,
        "checkpoints": v.checkpoints,
        "first_bad_seq": v.first_bad_seq,
        "problem": v.problem,
    }


def _active_leases() -> QuerySet[Lease]:
    return Lease.objects.filter(state=Lease.State.ACTIVE, expires_at__gt=timezone.now())


def _leases(params: Mapping[str, str]) -> QuerySet[Lease]:
    rows = _active_leases() if params.get("usable") == "yes" else Lease.objects.all()
    return rows.filter(state=params["state"]) if params.get("state") else rows


def _deposits(params: Mapping[str, str]) -> QuerySet[Deposit]:
    return Deposit.objects.filter(state=params["state"]) if params.get("state") else Deposit.objects.all()


def _audit(params: Mapping[str, str]) -> QuerySet[AuditEntry]:
    rows = AuditEntry.objects.order_by("-seq")
    return rows.filter(action=params["action"]) if params.get("action") else rows


def _verifications(params: Mapping[str, str]) -> QuerySet[AuditVerification]:
    return AuditVerification.objects.order_by("-ran_at")


Select = Callable[[Mapping[str, str]], QuerySet[Any]]
# kind -> (rows for the query parameters, row builder, parameters understood)
KINDS: dict[str, tuple[Select, Callable[[Any], dict[str, Any]], tuple[str, ...]]] = {
    "deposits": (_deposits, deposit_row, ("state", "relay_key")),
    "leases": (_leases, lease_row, ("state", "usable", "relay_key")),
    "audit": (_audit, audit_row, ("action", "relay_key")),
    "verifications": (_verifications, verification_row, ()),
}


def query(kind: str, params: Mapping[str, str]) -> list[dict[str, Any]]:
    """Rows of ``kind`` from this process's database, newest first, at most ``LIMIT``."""
    select, row, _ = KINDS[kind]
    rows = select(params)
    if params.get("relay_key"):
        rows = rows.filter(relay_key=params["relay_key"])
    return [row(item) for item in rows[:LIMIT]]


def summary() -> dict[str, Any]:
    """What the dashboard shows of the escrow, from this process's database."""
    since = timezone.now() - REFUSALS_WINDOW
    refusals = AuditEntry.objects.filter(action=AuditEntry.Action.UNLOCK_REFUSED, occurred_at__gte=since)
    last = AuditVerification.objects.order_by("-ran_at").first()
    return {
        "active_leases": [lease_row(lease) for lease in _active_leases().order_by("relay_key")],
        "active_deposits": Deposit.objects.filter(state=Deposit.State.ACTIVE).count(),
        "refusals_24h": refusals.count(),
        "recent_refusals": [audit_row(e) for e in refusals.order_by("-seq")[:5]],
        "audit_entries": AuditEntry.objects.count(),
        "last_verification": verification_row(last) if last is not None else None,
    }


def active_lease_keys() -> set[str]:
    """Relay keys with an active, unexpired lease, from wherever leases live."""
    if not is_remote():
        return set(_active_leases().values_list("relay_key", flat=True))
    return {str(lease["relay_key"]) for lease in fetch_summary().get("active_leases", [])}


def is_remote() -> bool:
    """Whether this process reads the escrow over its API (a gateway that has an escrow URL)."""
    return settings.ROLE == "gateway" and bool(settings.HYPERTUNA_ESCROW_URL)


def _remote_get(path: str) -> dict[str, Any]:
    from escrow.transport import EscrowHTTPError, EscrowUnavailable, gateway_client

    try:
        client = gateway_client(timeout=REMOTE_TIMEOUT)
        if client is None:
            raise EscrowUnreachable("mutual TLS settings incomplete (check escrow.E001)")
        return client.request("GET", path)
    except EscrowHTTPError as exc:
        raise EscrowUnreachable(f"escrow answered {exc.status} {exc.code}") from None
    except (EscrowUnavailable, OSError, ValueError) as exc:
        raise EscrowUnreachable(str(exc)) from None


def fetch(kind: str, params: Mapping[str, str]) -> list[dict[str, Any]]:
    """Rows of ``kind`` (``KINDS``) filtered by the parameters it understands, from wherever they live."""
    wanted = {name: str(params[name]) for name in KINDS[kind][2] if params.get(name)}
    if not is_remote():
        return query(kind, wanted)
    rows = _remote_get(f"/escrow/admin/{kind}" + (f"?{urlencode(wanted)}" if wanted else "")).get("rows")
    return rows if isinstance(rows, list) else []


def fetch_summary() -> dict[str, Any]:
    """The escrow summary, from wherever it lives (a remote answer is reused for a few seconds: each
    dashboard view would otherwise spend the gateway certificate's escrow rate limit)."""
    if not is_remote():
        return summary()
    cached = cache.get("escrow:admin-summary")
    if isinstance(cached, dict):
        return cached
    answer = _remote_get("/escrow/admin/summary")
    cache.set("escrow:admin-summary", answer, timeout=SUMMARY_CACHE_SECONDS)
    return answer
