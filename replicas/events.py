"""Dispatch of bridge-pushed blind-peer events to services (shapes in replicas/README.md).

Whoever consumes the bridge event stream (``manage.py replicas_listen``, or a shared listener) calls
:func:`handle_bridge_event` for every ``mirror.*`` event; it is synchronous ORM code, so async listeners
wrap it in ``sync_to_async``.
"""

from __future__ import annotations

import logging
from typing import Any

from hypertuna.exceptions import ApiError
from replicas import mirrors

logger = logging.getLogger(__name__)

TOPICS = ("mirror.*",)

_HANDLERS = {
    "mirror.added": mirrors.record_mirror_added,
    "mirror.removed": mirrors.record_mirror_removed,
    "mirror.progress": mirrors.record_mirror_progress,
}


def handle_bridge_event(name: str, data: Any) -> bool:
    """Apply one event. Returns False (and logs) for unknown names or malformed data, never raises for
    them: one bad event must not stop the listener."""
    handler = _HANDLERS.get(name)
    if handler is None or not isinstance(data, dict):
        return False
    try:
        handler(data=data)
    except ApiError as exc:
        logger.warning("bridge event refused", extra={"event": name, "error": exc.code})
        return False
    return True
