"""Answers while Redis (cache, channel layer, rate limits, Celery broker) is unreachable.

What keeps working without Redis: WebSocket sessions already open on a node and everything that needs only
the database and the bridge (health, the admin, reads that do not touch the cache). What does not, and how
it says so: HTTP requests that need the cache (registrations, tokens, rate-limited routes) answer JSON 503
``service-unavailable`` with ``Retry-After``; a WebSocket whose channel-layer link breaks gets a NOTICE and
close 1013 ("try again later"); a new handshake is accepted only to be told the same and closed with 1013.
Nothing caches a failure: the next request after Redis returns uses a fresh connection.

The database going away (a Postgres restart or failover) is answered the same way over HTTP: JSON 503
``service-unavailable`` with Retry-After instead of a 500 page; Django's connection health checks
(``CONN_HEALTH_CHECKS``) replace the broken connections once it is back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5
CLOSE_TRY_AGAIN_LATER = 1013
OUTAGE_NOTICE = "error: the gateway lost its shared state store; try again later"
_last_warning = 0.0


def is_redis_outage(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what caused it) is Redis or the broker being unreachable."""
    from kombu.exceptions import OperationalError
    from redis.exceptions import ConnectionError, TimeoutError

    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, (ConnectionError, TimeoutError, OperationalError)):
            return True
        if type(exc).__name__ in ("ConnectionInterrupted", "MaxConnectionsError"):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def is_database_outage(exc: BaseException | None) -> bool:
    """Whether ``exc`` is the database being unreachable or its connection broken (not a bad query)."""
    from django.db import InterfaceError, OperationalError

    return isinstance(exc, (OperationalError, InterfaceError))


def _warn(where: str, exc: BaseException) -> None:
    """One warning per 10 s at most: an outage fails every request, the log needs one line."""
    global _last_warning
    now = time.monotonic()
    if now - _last_warning >= 10:
        _last_warning = now
        logger.warning(
            "redis or database unreachable; answering 503/1013 until it is back",
            extra={"where": where, "error": str(exc)},
        )


class RedisOutageMiddleware:
    """Django middleware: a request that failed because Redis or the database is down answers JSON 503 with
    Retry-After."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if is_redis_outage(exception):
            message = "The gateway's shared state store is unreachable; retry soon."
        elif is_database_outage(exception):
            message = "The gateway's database is unreachable; retry soon."
        else:
            return None
        _warn(request.path, exception)
        response = JsonResponse({"error": "service-unavailable", "message": message}, status=503)
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response


Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class WebSocketOutageGuard:
    """ASGI wrapper for the WebSocket stack: a Redis failure (in authentication, the handshake or the
    channel-layer link of an open socket) ends the socket with a NOTICE and close 1013 instead of an HTTP
    500 or a bare 1011."""

    def __init__(self, inner: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.inner = inner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = {"accepted": False, "closed": False}

        async def tracking_send(message: dict[str, Any]) -> None:
            if message["type"] == "websocket.accept":
                state["accepted"] = True
            elif message["type"] == "websocket.close":
                state["closed"] = True
            await send(message)

        try:
            await self.inner(scope, receive, tracking_send)
        except Exception as exc:
            if not is_redis_outage(exc) or state["closed"]:
                raise
            _warn(str(scope.get("path", "")), exc)
            from hypertuna.nostr import notice_frame

            if not state["accepted"]:
                await send({"type": "websocket.accept"})
            await send({"type": "websocket.send", "text": notice_frame(OUTAGE_NOTICE)})
            await send({"type": "websocket.close", "code": CLOSE_TRY_AGAIN_LATER})
