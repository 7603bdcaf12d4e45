"""Per-token usage accounting without a database write per frame.

Frames and bytes are counted in process memory and persisted in batches by ``flush`` (called from a
periodic loop in each web process and at shutdown). Live connections are counted in the shared cache so
any node can tell how many sockets a revocation will close. Aggregates also go to Prometheus.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterable

from django.core.cache import cache
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from relays import metrics
from relays.models import RelayToken

_FIELDS = ("connections", "frames", "bytes_in", "bytes_out")
_lock = threading.Lock()
_pending: dict[int, dict[str, int]] = defaultdict(lambda: dict.fromkeys(_FIELDS, 0))
LIVE_TTL = 24 * 3600


def _live_key(token_id: int) -> str:
    return f"live:token:{token_id}"


def record(token_id: int, *, connections: int = 0, frames: int = 0, bytes_in: int = 0, bytes_out: int = 0) -> None:
    with _lock:
        entry = _pending[token_id]
        entry["connections"] += connections
        entry["frames"] += frames
        entry["bytes_in"] += bytes_in
        entry["bytes_out"] += bytes_out
    for kind, amount in (
        ("connections", connections),
        ("frames", frames),
        ("bytes_in", bytes_in),
        ("bytes_out", bytes_out),
    ):
        if amount:
            metrics.token_usage_total.labels(kind=kind).inc(amount)


def connection_opened(token_id: int) -> None:
    record(token_id, connections=1)
    cache.add(_live_key(token_id), 0, timeout=LIVE_TTL)
    try:
        cache.incr(_live_key(token_id))
    except ValueError:
        cache.set(_live_key(token_id), 1, timeout=LIVE_TTL)


def connection_closed(token_id: int) -> None:
    try:
        if cache.decr(_live_key(token_id)) <= 0:
            cache.delete(_live_key(token_id))
    except ValueError:
        pass


def live_connections(token_ids: Iterable[int]) -> int:
    keys = [_live_key(t) for t in token_ids]
    if not keys:
        return 0
    return sum(max(0, int(v)) for v in cache.get_many(keys).values())


def flush() -> int:
    """Persist pending counters (one UPDATE per token touched since the last flush). Returns tokens."""
    with _lock:
        batch = dict(_pending)
        _pending.clear()
    if not batch:
        return 0
    now = timezone.now()
    try:
        with transaction.atomic():
            for token_id, counts in batch.items():
                RelayToken.objects.filter(pk=token_id).update(
                    last_used_at=now, **{name: F(name) + counts[name] for name in _FIELDS}
                )
    except Exception:
        # Nothing is lost on a failed flush: the counts go back to be retried next time.
        with _lock:
            for token_id, counts in batch.items():
                for name in _FIELDS:
                    _pending[token_id][name] += counts[name]
        raise
    return len(batch)
