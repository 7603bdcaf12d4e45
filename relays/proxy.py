"""HTTP routes forwarded to a relay's workers with the same peer selection as WebSockets.

``GET /drive/<identifier>/<file>`` and ``GET /pfp/...`` stream the worker's answer back chunk by chunk
(the bridge pulls chunks with credit-based flow control, so a slow client slows the worker, and no
file is held whole in memory). ``POST /post/join/<identifier>`` and ``POST /callback/finalize-auth/
<identifier>`` forward a small JSON body. Hop-by-hop and credential headers are dropped both ways. A peer
that cannot be reached is reported and the next one is tried; a peer's own answer (even 4xx/5xx) is
relayed as is. When no worker answers, files are read from the gateway's own copies and join/callback
requests are kept as artifacts, and ``PUT /drive`` stores into the relay's gateway drive, both under the
relay's escrow lease (``relays.drive_offline``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from hypertuna.parsers import JSONRejected, parse_json
from relays import drive_offline, selectors
from relays.bridge import BridgeDown, BridgePeerTransport, get_bridge
from relays.forwarding import PeerError, PeerStream, PeerTransport, clean_headers
from relays.health import tracker
from replicas import drives

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


async def _peer_or_offline(
    request: HttpRequest, identifier: str, path_for: Callable[[str], str], *, file: str, owner: str | None = None
) -> HttpResponseBase:
    """A worker's answer when one gives it; otherwise the gateway's own copy (``relays.drive_offline``)."""
    relay_key = await sync_to_async(selectors.resolve_path)(identifier)
    if relay_key is None:
        return _error(404, "relay-not-registered", "Relay not registered with gateway")
    relay = await sync_to_async(selectors.live_relay)(relay_key)
    failed: HttpResponseBase = _error(404, "relay-not-registered", "Relay not registered with gateway")
    if relay is not None:
        result = await _open(relay, request.method or "GET", path_for(relay_key), _forward_headers(request), None)
        if not isinstance(result, HttpResponse):
            drive_offline.drive_reads.labels("peer").inc()
            return _response(result)
        failed = result
    pfp = path_for(relay_key).startswith("/pfp/")
    offline = await drive_offline.serve_offline(request, relay_key, file, owner=owner, pfp=pfp)
    return failed if offline is None else offline


@csrf_exempt
@require_http_methods(["GET", "HEAD", "PUT"])
async def drive_file(request: HttpRequest, identifier: str, file: str) -> HttpResponseBase:
    if request.method == "PUT":
        relay_key = await sync_to_async(selectors.resolve_path)(identifier)
        if relay_key is None or not await sync_to_async(_relay_exists)(relay_key):
            return _error(404, "relay-not-registered", "Relay not registered with gateway")
        return await drive_offline.store_upload(request, relay_key, file)
    return await _peer_or_offline(
        request, identifier, lambda key: f"/drive/{quote(key, safe=':')}/{quote(file)}", file=file
    )


def _relay_exists(relay_key: str) -> bool:
    return selectors.live_relay(relay_key) is not None or drives.relay_known(relay_key)


@require_http_methods(["GET", "HEAD"])
async def pfp_file(request: HttpRequest, file: str, owner: str | None = None) -> HttpResponseBase:
    identifier = request.GET.get("relay") or request.GET.get("identifier")
    if not identifier:
        return _error(400, "relay-required", "Pass ?relay=<relay key or npub…/name> to locate the avatar")
    path = f"/pfp/{quote(owner) + '/' if owner else ''}{quote(file)}"
    return await _peer_or_offline(request, identifier, lambda _key: path, file=file, owner=owner)


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
        if result.status_code in (502, 503) and b"bridge-unavailable" not in result.content:
            # No worker could take it: kept for the worker as an artifact, under the relay's lease.
            category, write_type = ("join", "http-join") if kind == "post/join" else ("callback", "http-callback")
            return await drive_offline.store_artifact(request, relay.relay_key, category, payload, write_type)
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
