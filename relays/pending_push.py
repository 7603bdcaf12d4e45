"""Telling a returning worker what the gateway wrote for its relay, and letting go once it caught up.

While a relay has pending writes not yet acknowledged, the gateway pushes ``POST /gateway/pending-writes``
to every live worker of the relay over the bridge (the reference body, reference §8.3, with the types the
worker's resync branches test for and **the gateway drive's key**, which the JavaScript gateway never sent).
A worker's 2xx is its acknowledgement: the rows are marked acknowledged and the wait is observed in
``gateway_pending_write_push_wait_seconds``. Without a worker or an answer the push is retried with jittered
exponential backoff (``HYPERTUNA_PENDING_PUSH_BASE_S`` doubling up to ``HYPERTUNA_PENDING_PUSH_MAX_S``, ±20 %),
on the beat. When the worker reports ``resync-complete`` the pending writes are cleared, a ``cleared`` push
is sent, and the relay's lease is released at the escrow (which wipes it from this node's vault).
"""

from __future__ import annotations

import logging
import random
import secrets
from datetime import datetime, timedelta
from typing import Any

from asgiref.sync import async_to_sync, sync_to_async
from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.db.models import Min
from django.utils import timezone
from prometheus_client import Counter, Histogram

from hypertuna.bridge import BridgeClientError, BridgeError
from relays import selectors
from replicas import blindpeer
from replicas.models import GatewayDrive, PendingWrite, ReplicaEvent

logger = logging.getLogger(__name__)

push_total = Counter("gateway_pending_write_push_total", "Pending-write pushes to workers, by result", ["result"])
push_wait = Histogram(
    "gateway_pending_write_push_wait_seconds",
    "From a pending write to its acknowledgement by a worker",
    buckets=(1, 5, 15, 60, 300, 900, 3600, 6 * 3600, 24 * 3600),
)
PUSH_PATH = "/gateway/pending-writes"


def backoff(attempts: int) -> float:
    """Seconds before the next push after ``attempts`` unanswered ones: doubling, capped, ±20 % jitter."""
    base = settings.HYPERTUNA_PENDING_PUSH_BASE_S * (2 ** min(attempts, 30))
    return min(settings.HYPERTUNA_PENDING_PUSH_MAX_S, base) * random.uniform(0.8, 1.2)


def _ms(moment: datetime | None) -> int | None:
    return int(moment.timestamp() * 1000) if moment else None


def push_body(
    relay_key: str, state: str, rows: list[PendingWrite], drive: GatewayDrive | None, *, events: int = 0
) -> dict[str, Any]:
    """The push a worker receives: which kinds of writes (``event`` when leased events await linearizing),
    where the files are, and since when."""
    types = sorted({row.write_type for row in rows} | ({"event"} if events else set()))
    if any(t.startswith("http-") for t in types) and "drive" not in types:
        types.append("drive")  # artifacts live in the gateway drive too: the worker must replicate it
    lease_ids = sorted({row.lease_id for row in rows if row.lease_id})
    body: dict[str, Any] = {
        "pushId": secrets.token_hex(8),
        "relayKey": relay_key,
        "state": state,
        "reason": "drive" if "drive" in types else "autobase",
        "types": sorted(types),
        "driveIdentifier": drive.identifier if drive else relay_key,
        "driveKey": drive.drive_key if drive else None,
        "driveVersion": max((row.drive_version for row in rows), default=drive.version if drive else 0),
        "pendingSince": _ms(min((row.created_at for row in rows), default=None)),
        "updatedAt": int(timezone.now().timestamp() * 1000),
        "leaseActive": bool(lease_ids),
        "writes": [
            {"type": row.write_type, "path": row.reference, "size": row.size, "driveVersion": row.drive_version}
            for row in rows[:500]
            if row.write_type != PendingWrite.Type.EVENT
        ],
    }
    if state == "cleared":
        body["clearedAt"] = body["updatedAt"]
    return body


def _open_rows(relay_key: str) -> tuple[list[PendingWrite], GatewayDrive | None, int]:
    rows = list(PendingWrite.objects.filter(relay_key=relay_key, cleared_at__isnull=True).order_by("created_at"))
    events = ReplicaEvent.objects.filter(replica__relay_key=relay_key, pending=True).count()
    return rows, GatewayDrive.objects.filter(relay_key=relay_key).first(), events


async def _send(relay_key: str, body: dict[str, Any]) -> tuple[int, str]:
    """Push to every live worker of the relay; (how many acknowledged, last problem)."""
    relay = await sync_to_async(selectors.live_relay)(relay_key)
    if relay is None or not relay.peers:
        return 0, "no live worker"
    acked, problem = 0, ""
    try:
        async with blindpeer.bridge_client() as bridge:
            for peer in relay.peers:
                try:
                    response = await bridge.peer_request(peer, "POST", PUSH_PATH, body=body, timeout_ms=10_000)
                except BridgeError as exc:
                    problem = f"{exc.code}: {exc.message}"[:300]
                    continue
                if 200 <= response.status_code < 300:
                    acked += 1
                else:
                    problem = f"worker answered {response.status_code}"
    except BridgeClientError as exc:
        problem = f"bridge: {type(exc).__name__}"
    return acked, problem


def push(relay_key: str) -> str:
    """One pending push for a relay (sync: Celery and tests call it); returns the result label."""
    rows, drive, events = _open_rows(relay_key)
    waiting = [row for row in rows if row.acknowledged_at is None]
    if not waiting:
        return "nothing"
    body = push_body(relay_key, "pending", rows, drive, events=events)
    acked, problem = async_to_sync(_send)(relay_key, body)
    now = timezone.now()
    with transaction.atomic():
        for row in PendingWrite.objects.select_for_update().filter(pk__in=[r.pk for r in waiting]):
            row.push_attempts += 1
            row.last_push_at = now
            if acked:
                row.acknowledged_at = now
                row.last_push_error = ""
                push_wait.observe(max(0.0, (now - row.created_at).total_seconds()))
            else:
                row.next_push_at = now + timedelta(seconds=backoff(row.push_attempts - 1))
                row.last_push_error = problem
            row.save(
                update_fields=["push_attempts", "last_push_at", "acknowledged_at", "next_push_at", "last_push_error"]
            )
    result = "acknowledged" if acked else ("no-worker" if problem == "no live worker" else "failed")
    push_total.labels(result).inc()
    if acked:
        logger.info("pending writes acknowledged by the worker", extra={"relay": relay_key, "writes": len(waiting)})
    return result


def complete_resync(relay_key: str) -> int:
    """The worker has what the gateway wrote: clear the pending writes, tell its workers, release the lease."""
    from escrow.coordinator import get_coordinator

    now = timezone.now()
    rows, drive, events = _open_rows(relay_key)
    cleared = PendingWrite.objects.filter(pk__in=[r.pk for r in rows]).update(cleared_at=now)
    if rows:
        acked, _ = async_to_sync(_send)(relay_key, push_body(relay_key, "cleared", rows, drive, events=events))
        push_total.labels("cleared" if acked else "cleared-unsent").inc()
    released = async_to_sync(get_coordinator().release)(relay_key, reason="worker-resync")
    logger.info("worker resync complete", extra={"relay": relay_key, "cleared": cleared, "lease_released": released})
    return cleared


@shared_task(ignore_result=True)
def push_due_pending_writes() -> int:
    """Beat: one push per relay whose unacknowledged writes are due; returns how many relays were pushed."""
    due = (
        PendingWrite.objects.filter(cleared_at__isnull=True, acknowledged_at__isnull=True)
        .values("relay_key")
        .annotate(next_at=Min("next_push_at"))
        .filter(next_at__lte=timezone.now())
    )
    relays = [row["relay_key"] for row in due[:100]]
    for relay_key in relays:
        push(relay_key)
    return len(relays)
