"""The operator dashboard on the admin index: health at a glance, each number linking to the admin list it
counts. Server-rendered (``templates/admin/index.html`` through the ``relays_dashboard`` tag), charts are
inline SVG, so the admin works offline.

A relay is *online* when its registration is live and one of its listed peers is reachable; otherwise it is
*offline*, and then *writable under a lease* when the escrow holds an active lease for it, else *read-only*
when a replica of it exists. The same definitions drive the relays list's health filter and column.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Q, QuerySet
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

from relays import selectors, stats
from relays.models import Relay, StatSample

logger = logging.getLogger(__name__)

ONLINE, OFFLINE, READ_ONLY, LEASED = "online", "offline", "replica", "lease"
WORST_LAGS = 5


def online_q(now: datetime) -> Q:
    return Q(
        status=Relay.Status.ACTIVE,
        expires_at__gt=now,
        peers__active=True,
        peers__unreachable_since__isnull=True,
    )


def filter_health(queryset: QuerySet[Relay], health: str, lease_keys: set[str]) -> QuerySet[Relay]:
    """``queryset`` narrowed to the relays in ``health`` (online, offline, replica, lease)."""
    from replicas.models import Replica

    online = Relay.objects.filter(online_q(timezone.now())).values("pk")
    if health == ONLINE:
        return queryset.filter(pk__in=online)
    offline = queryset.exclude(pk__in=online)
    if health == LEASED:
        return offline.filter(relay_key__in=lease_keys)
    if health == READ_ONLY:
        replicas = Replica.objects.values("relay_key")
        return offline.exclude(relay_key__in=lease_keys).filter(relay_key__in=replicas)
    return offline if health == OFFLINE else queryset


def escrow_summary() -> dict[str, Any] | None:
    """The escrow's summary (``escrow.admin_remote``), or None while it cannot be read."""
    from escrow.admin_remote import EscrowUnreachable, fetch_summary

    try:
        return fetch_summary()
    except EscrowUnreachable as exc:
        logger.debug("escrow summary unavailable", extra={"error": str(exc)})
        return None


def lease_keys(summary: dict[str, Any] | None) -> set[str]:
    return {str(lease["relay_key"]) for lease in (summary or {}).get("active_leases", [])}


def leased_relays() -> set[str]:
    """Relay keys under an active lease (none while the escrow cannot be read)."""
    from escrow.admin_remote import EscrowUnreachable, active_lease_keys

    try:
        return active_lease_keys()
    except EscrowUnreachable:
        return set()


def reachability() -> list[dict[str, Any]]:
    """Each dependency this process uses, probed now with the probes (and short timeouts) of ``/ready``."""
    from hypertuna.health_metrics import dependency_probes

    rows = []
    for component, probe in dependency_probes().items():
        try:
            ok, detail = probe()
        except Exception as exc:  # a failed probe is the answer
            ok, detail = False, type(exc).__name__
        rows.append({"component": component, "up": ok, "detail": detail})
    return rows


def sparkline(values: list[float], *, width: int = 240, height: int = 36) -> SafeString:
    """An inline SVG polyline of ``values`` (oldest first), scaled to its own maximum."""
    if not values:
        return format_html(
            '<svg class="spark" width="{}" height="{}" role="img"><title>no data</title></svg>', width, height
        )
    top = max(values) or 1.0
    step = width / max(1, len(values) - 1)
    points = " ".join(f"{i * step:.1f},{height - 2 - (v / top) * (height - 4):.1f}" for i, v in enumerate(values))
    return format_html(
        '<svg class="spark" width="{}" height="{}" viewBox="0 0 {} {}" role="img"><title>max {} · last {}</title>'
        '<polyline fill="none" stroke="currentColor" stroke-width="1.5" points="{}"/></svg>',
        width,
        height,
        width,
        height,
        _short(top),
        _short(values[-1]),
        points,
    )


def _short(value: float) -> str:
    return f"{value:.0f}" if value >= 10 or value == int(value) else f"{value:.2f}"


SERIES = (
    ("sessions", "Live sessions"),
    ("frames_per_s", "Forwarded frames / s"),
    ("max_lag_ms", "Worst replica lag (ms)"),
    ("fallback_reads", "Fallback reads"),
    ("fallback_writes", "Fallback writes"),
)


def _point(sample: StatSample | dict[str, Any]) -> dict[str, float]:
    get = sample.get if isinstance(sample, dict) else lambda name: getattr(sample, name)
    seconds = float(get("seconds") or 0)
    return {
        "sessions": float(get("sessions") or 0),
        "frames_per_s": float(get("frames") or 0) / seconds if seconds else 0.0,
        "max_lag_ms": float(get("max_lag_ms") or 0),
        "fallback_reads": float(get("fallback_reads") or 0),
        "fallback_writes": float(get("fallback_writes") or 0),
    }


def charts(now: datetime) -> list[dict[str, Any]]:
    """For each series: a sparkline of the last hour (minute samples) and of the last day (hour rows, the
    current hour folded from its minute samples)."""
    minute = StatSample.Resolution.MINUTE
    hour_points = [
        _point(s) for s in StatSample.objects.filter(resolution=minute, at__gte=now - timedelta(hours=1)).order_by("at")
    ]
    this_hour = now.replace(minute=0, second=0, microsecond=0)
    day = list(
        StatSample.objects.filter(
            resolution=StatSample.Resolution.HOUR, at__gte=this_hour - timedelta(hours=23), at__lt=this_hour
        ).order_by("at")
    )
    current = [
        {
            "seconds": r["seconds_sum"],
            "sessions": r["sessions_max"],
            "frames": r["frames_sum"],
            "max_lag_ms": r["lag_max"],
            "fallback_reads": r["reads_sum"],
            "fallback_writes": r["writes_sum"],
        }
        for r in stats.hour_rows(this_hour, now + timedelta(seconds=1))
    ]
    day_points = [_point(s) for s in day] + [_point(r) for r in current]
    return [
        {
            "name": name,
            "label": label,
            "hour": sparkline([p[name] for p in hour_points]),
            "day": sparkline([p[name] for p in day_points]),
        }
        for name, label in SERIES
    ]


def build(now: datetime | None = None) -> dict[str, Any]:
    """Everything the dashboard shows, read now."""
    now = now or timezone.now()
    summary = escrow_summary()
    leased = lease_keys(summary)
    relays = Relay.objects.all()
    sessions = stats.live_sessions()
    per_relay = stats.sessions_by_relay(sessions)
    names = dict(Relay.objects.filter(relay_key__in=per_relay).values_list("relay_key", "pk"))
    latest = StatSample.objects.filter(resolution=StatSample.Resolution.MINUTE).order_by("-at").first()
    return {
        "now": now,
        "relays": {
            "total": relays.count(),
            ONLINE: filter_health(relays, ONLINE, leased).count(),
            OFFLINE: filter_health(relays, OFFLINE, leased).count(),
            READ_ONLY: filter_health(relays, READ_ONLY, leased).count(),
            LEASED: filter_health(relays, LEASED, leased).count(),
        },
        "sessions": {
            "total": len(sessions),
            "per_relay": sorted(
                ({"relay_key": key, "pk": names.get(key), "count": n} for key, n in per_relay.items()),
                key=lambda row: (-row["count"], row["relay_key"]),
            ),
        },
        "latest": latest,
        "frames_per_s": round(_point(latest)["frames_per_s"], 2) if latest else None,
        "peers": selectors.peer_health_counts(),
        "lags": [{"relay_key": k, "lag_ms": ms} for k, ms in stats.worst_lag_ms(now)[:WORST_LAGS]],
        "escrow": summary,
        "reachability": reachability(),
        "charts": charts(now),
    }
