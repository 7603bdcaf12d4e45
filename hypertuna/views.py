"""Liveness, readiness and metrics endpoints."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable

from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django_prometheus.exports import ExportToDjangoView

logger = logging.getLogger(__name__)

# Components beyond the database and cache (the bridge, for instance) register a readiness probe here.
READINESS_PROBES: dict[str, Callable[[], tuple[bool, str]]] = {}


@never_cache
def health(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers. No dependency is consulted."""
    return JsonResponse({"status": "ok"})


def _probe_database() -> tuple[bool, str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return True, connection.vendor


def _probe_cache() -> tuple[bool, str]:
    cache.set("ready-probe", 1, timeout=10)
    ok = cache.get("ready-probe") == 1
    return ok, str(settings.CACHES["default"]["BACKEND"]).rsplit(".", 1)[-1]


@never_cache
def ready(request: HttpRequest) -> JsonResponse:
    """Readiness: every dependency answers. 503 with the failing component otherwise."""
    checks: dict[str, dict[str, object]] = {}
    probes = {"database": _probe_database, "cache": _probe_cache, **READINESS_PROBES}
    for name, probe in probes.items():
        try:
            ok, detail = probe()
        except Exception as exc:  # readiness reports failures; it must never raise itself
            logger.warning("readiness probe failed", extra={"component": name, "error": str(exc)})
            ok, detail = False, type(exc).__name__
        checks[name] = {"ok": ok, "detail": detail}
    all_ok = all(c["ok"] for c in checks.values())
    return JsonResponse({"status": "ok" if all_ok else "unavailable", "checks": checks}, status=200 if all_ok else 503)


@never_cache
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus exposition; behind a bearer token when HYPERTUNA_METRICS_TOKEN is set."""
    expected = settings.HYPERTUNA_METRICS_TOKEN
    if expected:
        supplied = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(supplied.encode(), expected.encode()):
            return JsonResponse({"error": "authentication-required", "message": "Bearer token required."}, status=401)
    return ExportToDjangoView(request)


@csrf_exempt
def api_not_found(request: HttpRequest, path: str = "") -> JsonResponse:
    """Any method on a path under ``/api/`` that no route serves: JSON, never an HTML page."""
    return JsonResponse({"error": "not-found", "message": f"No API route {request.path}."}, status=404)


@csrf_exempt
def open_join_pool(request: HttpRequest, relay_key: str) -> JsonResponse:
    """``POST /api/relays/<relayKey>/open-join/pool`` (hyperpipe workers publish open-join pools there):
    this gateway offers no open-join pools, and says so in JSON (the worker logs it and carries on)."""
    return JsonResponse(
        {"error": "not-found", "message": "This gateway does not offer open-join pools."},
        status=404,
    )
