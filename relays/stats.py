"""The gateway's own activity history, for the operator dashboard: no external service needed.

Live state: each web node's runtime publishes one snapshot every ``PUBLISH_INTERVAL`` seconds to the shared
cache (``publish_node``): its open sessions (relay, token id, client address, since, frames in/out) and its
cumulative counters (frames forwarded to workers, fallback reads and writes). The snapshot lives three
intervals, so a node that stops is gone from the dashboard shortly after. One cache write per node per
interval, never per socket or per frame.

Where: the shared cache (Redis) when there is one; in the embedded default (a per-process local-memory
cache) a file cache under ``HYPERTUNA_VAR_DIR``, which the web process and Celery on the one host share.

History: the beat's ``collect`` turns the snapshots into a minute ``StatSample`` (the counters' growth since
the previous sample, per node, so a node restart or a vanished node never counts negative), ``rollup``
folds complete hours into hour rows, and ``prune`` keeps minute rows a day and hour rows 30 days.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypedDict

from django.conf import settings
from django.core.cache import BaseCache, cache
from django.core.cache.backends.filebased import FileBasedCache
from django.db import transaction
from django.db.models import Count, Max, Sum
from django.db.models.functions import TruncHour
from django.utils import timezone

from relays.models import StatSample

NODES_KEY = "stats:nodes"
PREVIOUS_KEY = "stats:previous-totals"
COUNTERS = ("frames", "fallback_reads", "fallback_writes")
PUBLISH_INTERVAL = 2.0
MINUTE_RETENTION = timedelta(days=1)
HOUR_RETENTION = timedelta(days=30)


class LiveSession(TypedDict):
    relay: str
    token: int | None
    address: str
    since: float
    framesIn: int
    framesOut: int
    node: str


@functools.cache
def _file_cache(directory: str) -> BaseCache:
    return FileBasedCache(directory, {"TIMEOUT": None})


def _store() -> BaseCache:
    if settings.REDIS_URL:
        return cache
    return _file_cache(str(Path(settings.VAR_DIR) / "stats-cache"))


def _node_key(node: str) -> str:
    return f"stats:node:{node}"


# A node's snapshot is kept this long; it counts only while the node is listed in the index (which it renews
# every interval), and a node whose snapshot did not change rewrites it once per half of this.
SNAPSHOT_TTL = 60


def _ttl() -> int:
    return int(3 * PUBLISH_INTERVAL)


def publish_node(node: str, *, sessions: list[LiveSession], totals: dict[str, int]) -> None:
    """Store this node's snapshot and list the node in the index (an entry is re-added every interval, so
    one lost to a concurrent index write by another node returns within an interval)."""
    now = time.time()
    _store().set(_node_key(node), {"at": now, "sessions": sessions, "totals": totals}, timeout=SNAPSHOT_TTL)
    _list_node(node, now)


def _list_node(node: str, now: float) -> None:
    nodes = _store().get(NODES_KEY) or {}
    nodes = {name: seen for name, seen in nodes.items() if now - seen < _ttl()}
    nodes[node] = now
    _store().set(NODES_KEY, nodes, timeout=_ttl() * 10)


def refresh_node(node: str) -> bool:
    """Keep this node's last snapshot current for another interval without rewriting it (only the small index
    entry is); False when it is gone (evicted, the cache restarted): then the caller publishes it whole."""
    now = time.time()
    if not _store().has_key(_node_key(node)):
        return False
    _list_node(node, now)
    return True


def node_snapshots() -> dict[str, dict[str, Any]]:
    """The current snapshot of every node that published within the last three intervals."""
    now = time.time()
    nodes = {name: seen for name, seen in (_store().get(NODES_KEY) or {}).items() if now - seen < _ttl()}
    if not nodes:
        return {}
    found = _store().get_many([_node_key(n) for n in nodes])
    return {node: found[_node_key(node)] for node in nodes if _node_key(node) in found}


def live_sessions(snapshots: dict[str, dict[str, Any]] | None = None) -> list[LiveSession]:
    """Every open client session on every node, oldest first."""
    snapshots = node_snapshots() if snapshots is None else snapshots
    sessions = [s for snap in snapshots.values() for s in snap.get("sessions", [])]
    return sorted(sessions, key=lambda s: s["since"])


def sessions_by_relay(sessions: Iterable[LiveSession]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for session in sessions:
        counts[session["relay"]] = counts.get(session["relay"], 0) + 1
    return counts


def _growth(snapshots: dict[str, dict[str, Any]]) -> dict[str, int]:
    """How much each counter grew on all nodes since the previous sample (a counter below its previous
    value means the node restarted: all of it is new)."""
    previous: dict[str, dict[str, int]] = _store().get(PREVIOUS_KEY) or {}
    growth = dict.fromkeys(COUNTERS, 0)
    current: dict[str, dict[str, int]] = {}
    for node, snap in snapshots.items():
        totals = {name: int(snap.get("totals", {}).get(name, 0)) for name in COUNTERS}
        current[node] = totals
        before = previous.get(node)
        for name in COUNTERS:
            if before is None:
                continue  # first sight of the node: its history predates this sample
            value, old = totals[name], int(before.get(name, 0))
            growth[name] += value - old if value >= old else value
    _store().set(PREVIOUS_KEY, current, timeout=None)
    return growth


def worst_lag_ms(now: datetime | None = None) -> list[tuple[str, int]]:
    """(relay key, lag in ms) of every replica, worst first."""
    from replicas.models import Replica
    from replicas.readiness import lag_ms

    now = now or timezone.now()
    lags = [(r.relay_key, lag_ms(r, now)) for r in Replica.objects.exclude(behind_since=None)]
    return sorted(lags, key=lambda item: -item[1])


def _interval() -> float:
    entry: dict[str, Any] = settings.CELERY_BEAT_SCHEDULE.get("collect-stats", {})
    return float(entry.get("schedule", 60.0))


def collect(now: datetime | None = None) -> StatSample:
    """Write one minute sample from the nodes' snapshots, then roll up the hours that are complete."""
    now = now or timezone.now()
    snapshots = node_snapshots()
    growth = _growth(snapshots)
    last = StatSample.objects.filter(resolution=StatSample.Resolution.MINUTE, at__lt=now).order_by("-at").first()
    seconds = (now - last.at).total_seconds() if last else _interval()
    lags = worst_lag_ms(now)
    sample, _ = StatSample.objects.update_or_create(
        resolution=StatSample.Resolution.MINUTE,
        at=now,
        defaults={
            "seconds": seconds,
            "sessions": len(live_sessions(snapshots)),
            "max_lag_ms": lags[0][1] if lags else 0,
            **growth,
        },
    )
    rollup(now)
    return sample


def hour_rows(since: datetime, until: datetime) -> list[dict[str, Any]]:
    """Minute samples in [since, until) folded per hour: sums of counts and seconds, highest levels."""
    rows = (
        StatSample.objects.filter(resolution=StatSample.Resolution.MINUTE, at__gte=since, at__lt=until)
        .annotate(hour=TruncHour("at"))
        .values("hour")
        .annotate(
            seconds_sum=Sum("seconds"),
            sessions_max=Max("sessions"),
            frames_sum=Sum("frames"),
            reads_sum=Sum("fallback_reads"),
            writes_sum=Sum("fallback_writes"),
            lag_max=Max("max_lag_ms"),
            count=Count("id"),
        )
        .order_by("hour")
    )
    return [dict(row) for row in rows]


def rollup(now: datetime | None = None) -> int:
    """Write (or rewrite, idempotently) the hour row of every complete hour still covered by minute rows
    and not rolled up yet. Returns how many hour rows were written."""
    now = now or timezone.now()
    this_hour = now.replace(minute=0, second=0, microsecond=0)
    done = set(
        StatSample.objects.filter(
            resolution=StatSample.Resolution.HOUR, at__gte=this_hour - MINUTE_RETENTION
        ).values_list("at", flat=True)
    )
    written = 0
    with transaction.atomic():
        for row in hour_rows(this_hour - MINUTE_RETENTION, this_hour):
            if row["hour"] in done:
                continue
            StatSample.objects.update_or_create(
                resolution=StatSample.Resolution.HOUR,
                at=row["hour"],
                defaults={
                    "seconds": row["seconds_sum"] or 0,
                    "sessions": row["sessions_max"] or 0,
                    "frames": row["frames_sum"] or 0,
                    "fallback_reads": row["reads_sum"] or 0,
                    "fallback_writes": row["writes_sum"] or 0,
                    "max_lag_ms": row["lag_max"] or 0,
                    "samples": row["count"],
                },
            )
            written += 1
    return written


def prune(now: datetime | None = None) -> int:
    """Drop minute rows older than a day and hour rows older than 30 days. Returns rows deleted."""
    now = now or timezone.now()
    minutes, _ = StatSample.objects.filter(
        resolution=StatSample.Resolution.MINUTE, at__lt=now - MINUTE_RETENTION
    ).delete()
    hours, _ = StatSample.objects.filter(resolution=StatSample.Resolution.HOUR, at__lt=now - HOUR_RETENTION).delete()
    return minutes + hours
