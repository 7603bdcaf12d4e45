"""NIP-11 relay information: ``GET`` on a relay's URL with ``Accept: application/nostr+json``.

The document is built from the relay's last registration (name, description, owner key, contact), so it is
served while a worker is live and, when every worker is offline, as long as a replica keeps the relay
readable (the same rule as the WebSocket: a path that would be closed with 4404 answers a 404 here). No
token is needed. Every answer carries CORS headers, and ``OPTIONS`` answers the browser's preflight.

Without that ``Accept`` header the URL keeps its plain behaviour (404: relays are reached over WebSocket).
"""

from __future__ import annotations

import tomllib
from functools import cache
from typing import Any

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.common import no_append_slash
from django.views.decorators.csrf import csrf_exempt

from hypertuna import ratelimit
from hypertuna.compat.relaykeys import HEX64
from hypertuna.exceptions import ApiError
from hypertuna.nostr.filters import DEFAULT_FILTER_LIMITS
from hypertuna.nostr.frames import DEFAULT_FRAME_LIMITS, MAX_SUBSCRIPTION_ID_LENGTH
from relays import paths
from relays.middleware import RelayLookup, find_relay
from relays.models import Relay

NOSTR_JSON = "application/nostr+json"
SOFTWARE = "hypertuna-gateway"
# NIP-01 (the relay protocol) and NIP-11 (this document) on every relay. What else a relay offers is up to
# the worker hosting it, which does not say.
SUPPORTED_NIPS = [1, 11]
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Headers": "Accept, Content-Type, Authorization",
    "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
}


@cache
def gateway_version() -> str | None:
    """The project version from ``pyproject.toml``; None when the file is not deployed."""
    try:
        with open(settings.BASE_DIR / "pyproject.toml", "rb") as handle:
            version = tomllib.load(handle).get("project", {}).get("version")
    except (OSError, tomllib.TOMLDecodeError):
        return None
    return version if isinstance(version, str) else None


def wants_information(request: HttpRequest) -> bool:
    """Whether the request asks for the NIP-11 document: ``application/nostr+json`` named in ``Accept``
    (``*/*`` does not count, so a browser opening the URL sees the plain answer)."""
    accepted = (part.split(";", 1)[0].strip().lower() for part in request.headers.get("Accept", "").split(","))
    return NOSTR_JSON in accepted


def _with_cors(response: HttpResponse) -> HttpResponse:
    for header, value in CORS_HEADERS.items():
        response[header] = value
    response["Vary"] = "Accept"
    return response


def _error(status: int, code: str, message: str) -> HttpResponse:
    return _with_cors(JsonResponse({"error": code, "message": message}, status=status))


def _owner_pubkey(relay: Relay) -> str | None:
    latest = relay.registrations.only("payload").first()
    registration = latest.payload if latest is not None and isinstance(latest.payload, dict) else {}
    metadata = relay.metadata if isinstance(relay.metadata, dict) else {}
    try:
        return paths.owner_pubkey(
            registration,
            metadata,
            relay.relay_key,
            [relay.public_identifier, metadata.get("publicIdentifier"), metadata.get("identifier")],
        )
    except ApiError:  # a stored registration from before its owner fields were checked
        return None


def information_document(relay: Relay, lookup: RelayLookup) -> dict[str, Any]:
    """The NIP-11 document of ``relay`` as the gateway serves it now (``lookup``: live or replica)."""
    metadata = relay.metadata if isinstance(relay.metadata, dict) else {}
    served_by_worker = lookup.relay is not None and bool(lookup.relay.peers)
    max_limit = DEFAULT_FILTER_LIMITS.max_limit
    if not served_by_worker:
        max_limit = min(max_limit, settings.HYPERTUNA_REPLICA_MAX_LIMIT)
    document: dict[str, Any] = {
        "name": relay.name or relay.public_identifier or relay.relay_key,
        "description": relay.description,
        "supported_nips": SUPPORTED_NIPS,
        "software": SOFTWARE,
        "limitation": {
            "max_message_length": settings.HYPERTUNA_MAX_FRAME_BYTES,
            "max_subscriptions": settings.HYPERTUNA_MAX_SUBSCRIPTIONS,
            "max_subid_length": MAX_SUBSCRIPTION_ID_LENGTH,
            "max_filters": DEFAULT_FRAME_LIMITS.max_filters,
            "max_limit": max_limit,
            # A token (?token=…) is required before anything else on the connection.
            "auth_required": relay.requires_auth,
            "payment_required": False,
            # Writes need the token; with every worker offline they are accepted only under an escrow lease.
            "restricted_writes": relay.requires_auth or not served_by_worker,
        },
    }
    version = gateway_version()
    if version:
        document["version"] = version
    pubkey = _owner_pubkey(relay)
    if pubkey is not None and HEX64.match(pubkey):
        document["pubkey"] = pubkey
    contact = metadata.get("contact")
    if isinstance(contact, str) and contact.strip():
        document["contact"] = contact.strip()[:200]
    return document


@csrf_exempt
@no_append_slash
def relay_information(request: HttpRequest, path: str) -> HttpResponse:
    """Any path not served by another route: a relay's NIP-11 document when asked for, else 404."""
    preflight = request.method == "OPTIONS"
    if not preflight and (request.method not in ("GET", "HEAD") or not wants_information(request)):
        raise Http404
    decision = ratelimit.hit("nip11", ratelimit.client_ip(request), limit=settings.HYPERTUNA_RATELIMIT_IP_PER_MINUTE)
    if not decision.allowed:
        response = _error(429, "rate-limited", f"Too many requests; retry in {decision.retry_after} s.")
        response["Retry-After"] = str(decision.retry_after)
        return response
    lookup = find_relay(request.path)
    if preflight:
        if lookup.relay_key is None:
            raise Http404
        response = _with_cors(HttpResponse(status=204))
        response["Access-Control-Max-Age"] = "86400"
        return response
    if lookup.relay_key is None:
        return _error(404, "relay-not-found", f"No relay at {request.path[:200]}.")
    relay = Relay.objects.filter(relay_key=lookup.relay_key).first() if lookup.relay is not None else None
    if relay is None:
        return _error(404, "relay-not-registered", "Relay not registered with gateway.")
    return _with_cors(JsonResponse(information_document(relay, lookup), content_type=NOSTR_JSON))
