"""HTTP routes forwarded to a relay's workers with the same peer selection as WebSockets.

``GET /drive/<identifier>/<file>`` and ``GET /pfp/...`` stream the worker's answer back chunk by chunk
(the bridge pulls chunks with credit-based flow control, so a slow client slows the worker, and no
file is held whole in memory). ``POST /post/join/<identifier>`` and ``POST /callback/finalize-auth/
<identifier>`` forward a small JSON body. Hop-by-hop and credential headers are dropped both ways. A peer
that cannot be reached is reported and the next one is tried; a peer's own answer (even 4xx/5xx) is
relayed as is.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from hypertuna.parsers import JSONRejected, parse_json
from relays import selectors
from relays.bridge import BridgeDown, BridgePeerTransport, get_bridge
from relays.forwarding import PeerError, PeerStream, PeerTransport, clean_headers
from relays.health import tracker

logger = logging.getLogger(__name__)

MAX_FORWARD_BODY = 256 * 1024
_FORWARDED_REQUEST_HEADERS = (
    "accept",
    "accept-language",
    "if-none-match",
    "if-modified-since",
    "range",
    "content-type",
)


def transport() -> PeerTransport:
    return BridgePeerTransport(get_bridge())


def _error(status: int, code: str, message: str) -> JsonResponse:
    return JsonResponse({"error": code, "message": message}, status=status)


async def _relay_for(identifier: str) -> selectors.RelaySnapshot | None:
    relay_key = await sync_to_async(selectors.resolve_path)(identifier)
    if relay_key is None:
        return None
    return await sync_to_async(selectors.live_relay)(relay_key)


async def _open(
    relay: selectors.RelaySnapshot, method: str, path: str, headers: dict[str, str], body: bytes | None
) -> PeerStream | HttpResponse:
    """Open the response of the first peer that answers; an error response when none does."""
    if not relay.peers:
        return _error(503, "no-peers", "Relay has no available peers")
    last = "no peer answered"
    via = transport()
    for peer in relay.peers:
        try:
            stream = await via.stream(
                peer, method, path, headers=headers, body=body, timeout=settings.HYPERTUNA_PEER_REQUEST_TIMEOUT
            )
        except BridgeDown:
            return _error(503, "bridge-unavailable", "The gateway cannot reach workers right now")
        except PeerError as exc:
            last = str(exc)
            await tracker.peer_failed(peer, str(exc))
            continue
        return stream
    return _error(502, "peers-unreachable", f"Relay peers did not answer ({last})")


def _response(stream: PeerStream) -> HttpResponseBase:
    async def body() -> AsyncIterator[bytes]:
        async for chunk in stream.chunks:
            yield chunk

    return _with_worker_headers(StreamingHttpResponse(body(), status=stream.status), stream.headers)


def _with_worker_headers(response: HttpResponseBase, headers: dict[str, str]) -> HttpResponseBase:
    """Copy a worker's response headers, minus hop-by-hop ones and cookies (a worker must not set
    cookies on the gateway's origin)."""
    for name, value in clean_headers(headers).items():
        if name != "set-cookie":
            response[name] = value
    return response


def _forward_headers(request: HttpRequest) -> dict[str, str]:
    return {name: request.headers[name] for name in _FORWARDED_REQUEST_HEADERS if name in request.headers}


@require_http_methods(["GET", "HEAD"])
async def drive_file(request: HttpRequest, identifier: str, file: str) -> HttpResponseBase:
    relay = await _relay_for(identifier)
    if relay is None:
        return _error(404, "relay-not-registered", "Relay not registered with gateway")
    path = f"/drive/{quote(relay.relay_key, safe=':')}/{quote(file)}"
    result = await _open(relay, request.method or "GET", path, _forward_headers(request), None)
    return result if isinstance(result, HttpResponse) else _response(result)


@require_http_methods(["GET", "HEAD"])
async def pfp_file(request: HttpRequest, file: str, owner: str | None = None) -> HttpResponseBase:
    identifier = request.GET.get("relay") or request.GET.get("identifier")
    if not identifier:
        return _error(400, "relay-required", "Pass ?relay=<relay key or npub…/name> to locate the avatar")
    relay = await _relay_for(identifier)
    if relay is None:
        return _error(404, "relay-not-registered", "Relay not registered with gateway")
    path = f"/pfp/{quote(owner) + '/' if owner else ''}{quote(file)}"
    result = await _open(relay, "GET", path, _forward_headers(request), None)
    return result if isinstance(result, HttpResponse) else _response(result)


async def _forward_json(request: HttpRequest, identifier: str, kind: str) -> HttpResponseBase:
    relay = await _relay_for(identifier)
    if relay is None:
        return _error(404, "relay-not-registered", "Relay not registered with gateway")
    try:
        raw = request.body  # Django refuses past DATA_UPLOAD_MAX_MEMORY_SIZE before reading it all
    except RequestDataTooBig:
        raw = None
    if raw is None or len(raw) > MAX_FORWARD_BODY:
        return _error(413, "body-too-large", f"Body exceeds {MAX_FORWARD_BODY} bytes")
    try:
        payload: Any = parse_json(raw or b"{}")
    except JSONRejected as exc:
        return _error(400, "invalid-json", f"Body must be JSON: {exc}")
    body = json.dumps(payload, ensure_ascii=False).encode()
    headers = {**clean_headers(dict(request.headers)), "content-type": "application/json"}
    path = f"/{kind}/{quote(relay.relay_key, safe=':')}"
    result = await _open(relay, "POST", path, headers, body)
    if isinstance(result, HttpResponse):
        return result
    content = b"".join([chunk async for chunk in result.chunks])
    return _with_worker_headers(HttpResponse(content, status=result.status), result.headers)


@csrf_exempt
@require_http_methods(["POST"])
async def post_join(request: HttpRequest, identifier: str) -> HttpResponseBase:
    return await _forward_json(request, identifier, "post/join")


@csrf_exempt
@require_http_methods(["POST"])
async def finalize_auth(request: HttpRequest, identifier: str) -> HttpResponseBase:
    return await _forward_json(request, identifier, "callback/finalize-auth")
