"""Files while a relay's workers are offline: reads from the mirrored or gateway-owned drives, uploads and
HTTP artifacts into the relay's gateway-owned drive under an escrow lease.

Reads (``GET /drive``, ``GET /pfp`` once no worker answered): the bridge's ``drive.read`` tries the worker's
drive as the gateway's blind peer mirrors it, then the relay's gateway drive, and streams the file under
the bridge's credit window (never whole in memory), honouring one ``Range`` (206 / 416) and answering
``If-None-Match`` with 304. Which source served it is in ``X-Hypertuna-Source`` and in
``gateway_drive_reads_total{source}``.

Writes follow the escrow rule: nothing is stored without the relay's active lease (425
``gateway-escrow-lease-missing`` otherwise). An upload is read from Django's spooled request body in chunks
and each chunk is handed to the bridge only after it took the previous one, so neither process holds the
file. The bridge writes the drive entry only when the whole upload arrived; it refuses a second concurrent
upload of the same path (409).
"""

from __future__ import annotations

import contextlib
import logging
import mimetypes
import re
import secrets
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponseBase, JsonResponse, StreamingHttpResponse
from django.utils.http import http_date
from prometheus_client import Counter

from hypertuna.bridge import BridgeError, BridgeTimeout, BridgeUnavailable
from relays.bridge import get_bridge
from relays.tokens import TokenRejected, verify_token
from replicas import drives

logger = logging.getLogger(__name__)

drive_reads = Counter("gateway_drive_reads_total", "Files served by GET /drive and /pfp, by source", ["source"])
drive_writes = Counter(
    "gateway_drive_writes_total", "Files and artifacts stored in gateway drives, by type and result", ["type", "result"]
)

UPLOAD_CHUNK = 256 * 1024
# What a worker names files with (worker-data-layout §3): one path segment, never "." or "..".
_SEGMENT = re.compile(r"^(?!\.{1,2}$)[A-Za-z0-9._:-]{1,200}$")
_HASH = re.compile(r"^[0-9a-f]{64}$")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
# Never stored in an artifact: credentials of the client, the gateway or the worker.
_SECRET_HEADERS = frozenset(
    {"authorization", "cookie", "set-cookie", "x-relay-token", "x-signature", "proxy-authorization"}
)


def error(status: int, code: str, message: str, **headers: str) -> JsonResponse:
    response = JsonResponse({"error": code, "message": message}, status=status)
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response


def file_segment(file: str) -> str | None:
    """The drive file name for a request's file, or None when it is not a plain segment."""
    return file if _SEGMENT.match(file) else None


def _stem(file: str) -> str:
    """Workers store files under their SHA-256 without extension and serve ``<hash>.<ext>`` from there."""
    stem = file.split(".", 1)[0]
    return stem if _HASH.match(stem) else file


def _parse_range(header: str | None) -> tuple[int | None, int | None, int | None]:
    """(start, end, suffix) of a single ``bytes=`` range; (None, None, None) for none or one we ignore
    (several ranges, other units): the whole file is then served, as RFC 9110 allows."""
    match = _RANGE.match((header or "").strip())
    if not match or (not match[1] and not match[2]):
        return None, None, None
    if not match[1]:
        return None, None, int(match[2])
    return int(match[1]), int(match[2]) if match[2] else None, None


async def serve_offline(
    request: HttpRequest, relay_key: str, file: str, *, owner: str | None = None, pfp: bool = False
) -> HttpResponseBase | None:
    """Answer a file read from the drives the gateway holds for ``relay_key``; 404 JSON when none has it, and
    None when the gateway holds no drive of this relay at all (the caller's answer stands)."""
    copies = await sync_to_async(drives.drive_copies)(relay_key, pfp=pfp)
    if not copies.any:
        return None
    name = file_segment(file)
    if name is None or (owner is not None and file_segment(owner) is None):
        return error(400, "invalid-path", "File names are one path segment of [A-Za-z0-9._:-]")
    stem = _stem(name)
    if pfp:
        mirror_paths = [f"/{owner}/{stem}"] if owner else [f"/{stem}"]
        gateway_paths = [[owner or "global", stem]]
    else:
        mirror_paths = [f"/{folder}/{n}" for folder in copies.folders for n in dict.fromkeys((stem, name))]
        gateway_paths = [[relay_key, n] for n in dict.fromkeys((stem, name))]
    params: dict[str, Any] = {
        "sources": ["mirror", "gateway-drive"],
        "kind": "pfp" if pfp else "relay",
        "relayKey": relay_key,
        "driveKeys": list(copies.mirror_drive_keys),
        "mirrorPaths": mirror_paths,
        "gatewayPaths": gateway_paths,
        "headOnly": request.method == "HEAD",
    }
    start, end, suffix = _parse_range(request.headers.get("range"))
    if start is not None:
        params["start"], params["end"] = start, end
    elif suffix is not None:
        params["suffix"] = suffix
    stream = get_bridge().drive_read_stream(params)
    try:
        await stream.__aenter__()
    except BridgeError as exc:
        if exc.code == "not-found":
            drive_reads.labels("none").inc()
            return error(404, "file-not-found", "No worker answered and no copy of this file is held")
        if exc.code == "invalid-path":
            return error(400, "invalid-path", str(exc))
        logger.warning("offline drive read failed", extra={"relay": relay_key, "code": exc.code})
        return error(502, "drive-read-failed", "The gateway could not read its copy of this file")
    except (BridgeUnavailable, BridgeTimeout):
        return error(503, "bridge-unavailable", "The gateway cannot read files right now", Retry_After="5")
    head = stream.head or {}
    source = str(head.get("source") or "mirror")
    drive_reads.labels(source).inc()
    return _file_response(request, stream, head, name, source, ranged=start is not None or suffix is not None)


def _file_response(
    request: HttpRequest, stream: Any, head: dict[str, Any], name: str, source: str, *, ranged: bool
) -> HttpResponseBase:
    size = int(head.get("size") or 0)
    etag = str(head.get("etag") or "")
    headers = {
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "X-Hypertuna-Source": source,
        "Cache-Control": "private, max-age=60",
    }
    if isinstance(head.get("lastModified"), int):
        headers["Last-Modified"] = http_date(head["lastModified"] / 1000)
    if etag and request.headers.get("if-none-match") == etag:
        return _headers(StreamingHttpResponse(_drain(stream), status=304), headers)
    if head.get("rangeUnsatisfiable"):
        headers["Content-Range"] = f"bytes */{size}"
        return _headers(error(416, "range-not-satisfiable", f"The file has {size} bytes"), headers)
    first, last = int(head.get("start") or 0), int(head.get("end", size - 1))
    length = max(0, last - first + 1)
    content_type = head.get("contentType") or mimetypes.guess_type(head.get("name") or name)[0]
    headers["Content-Type"] = str(content_type or "application/octet-stream")
    headers["Content-Length"] = str(length)
    status = 200
    if ranged:
        status = 206
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    body = _drain(stream) if request.method == "HEAD" else _chunks(stream)
    return _headers(StreamingHttpResponse(body, status=status), headers)


def _headers(response: HttpResponseBase, headers: dict[str, str]) -> HttpResponseBase:
    for name, value in headers.items():
        response[name] = value
    return response


async def _chunks(stream: Any) -> AsyncIterator[bytes]:
    try:
        async for chunk in stream:
            yield chunk
    finally:
        await stream.__aexit__(None, None, None)


async def _drain(stream: Any) -> AsyncIterator[bytes]:
    await stream.__aexit__(None, None, None)
    return
    yield b""  # an async generator that yields nothing


# --- writes ---------------------------------------------------------------------------------------------


async def _lease_or_refusal(relay_key: str) -> tuple[str | None, JsonResponse | None]:
    """The relay's active lease id, asking the escrow for one if needed; or the 425 answer."""
    from escrow.coordinator import LeasePending, get_coordinator

    coordinator = get_coordinator()
    if not coordinator.enabled:
        return None, error(425, "gateway-escrow-lease-missing", "This gateway has no escrow: writes need a worker")
    try:
        lease = await coordinator.ensure_write_lease(relay_key, healthy_peers=0)
    except LeasePending as exc:
        return None, error(
            425, "gateway-escrow-lease-missing", "A write lease is being requested", Retry_After=str(exc.retry_after)
        )
    if lease is None:
        return None, error(425, "gateway-escrow-lease-missing", "No write lease is active for this relay")
    return lease.lease_id, None


async def _token_refusal(request: HttpRequest, relay_key: str) -> JsonResponse | None:
    token = request.GET.get("token") or request.headers.get("x-relay-token")
    if not token:
        return error(401, "token-required", "Pass a relay token (?token= or x-relay-token)")
    try:
        await sync_to_async(verify_token)(token, relay_key)
    except TokenRejected as exc:
        return error(403, "invalid-token", f"The relay token is not valid for this relay ({exc.code})")
    return None


def _declared_length(request: HttpRequest) -> int | None:
    try:
        return int(request.META.get("CONTENT_LENGTH") or "")
    except ValueError:
        return None


async def store_upload(request: HttpRequest, relay_key: str, file: str) -> HttpResponseBase:
    """``PUT /drive/<identifier>/<file>``: 202 once the file is in the relay's gateway drive."""
    name = file_segment(file)
    if name is None:
        return error(400, "invalid-path", "File names are one path segment of [A-Za-z0-9._:-], not . or ..")
    limit = settings.HYPERTUNA_DRIVE_MAX_BYTES
    declared = _declared_length(request)
    if declared is not None and declared > limit:
        drive_writes.labels("drive", "too-large").inc()
        return error(413, "payload-too-large", f"Files are at most {limit} bytes")
    first = request.read(UPLOAD_CHUNK)
    if not first:
        return error(400, "empty-payload", "The request body is empty")
    refusal = await _token_refusal(request, relay_key)
    if refusal is None:
        lease_id, refusal = await _lease_or_refusal(relay_key)
    if refusal is not None:
        drive_writes.labels("drive", f"refused-{refusal.status_code}").inc()
        return refusal
    stored = name if _stem(name) == name else _stem(name)
    bridge = get_bridge()
    try:
        upload_id = await bridge.drive_upload_begin(
            relay_key=relay_key,
            path=[relay_key, stored],
            max_bytes=limit,
            sha256=stored if _HASH.match(stored) else None,
            mime=mimetypes.guess_type(name)[0],
            file_name=name,
        )
    except BridgeError as exc:
        return _write_error(exc, "drive")
    except (BridgeUnavailable, BridgeTimeout):
        return error(503, "gateway-drive-unavailable", "The gateway cannot store files right now", Retry_After="5")
    committed = False
    try:
        chunk = first
        while chunk:
            await bridge.drive_upload_chunk(upload_id, chunk)
            chunk = request.read(UPLOAD_CHUNK)
        info = await bridge.drive_upload_commit(upload_id)
        committed = True
    except BridgeError as exc:
        return _write_error(exc, "drive")
    except (BridgeUnavailable, BridgeTimeout, OSError):
        return error(503, "gateway-drive-unavailable", "The upload was interrupted; nothing was stored")
    finally:
        if not committed:
            # The bridge writes no entry for an upload that was not committed; have it drop what it has.
            with contextlib.suppress(BridgeError, BridgeUnavailable, BridgeTimeout):
                await bridge.drive_upload_abort(upload_id)
    await sync_to_async(drives.record_pending_write)(
        relay_key=relay_key, identifier=relay_key, write_type="drive", info=info, lease_id=lease_id or ""
    )
    drive_writes.labels("drive", "stored").inc()
    logger.info("file stored in gateway drive", extra={"relay": relay_key, "bytes": info.get("bytes")})
    return JsonResponse(
        {
            "status": "stored",
            "mode": "gateway-drive",
            "relayKey": relay_key,
            "driveVersion": info.get("version"),
            "driveKey": info.get("driveKey"),
            "path": info.get("path"),
            "bytes": info.get("bytes"),
        },
        status=202,
    )


def _write_error(exc: BridgeError, kind: str) -> JsonResponse:
    drive_writes.labels(kind, exc.code).inc()
    if exc.code == "conflict":
        return error(409, "upload-in-progress", "Another upload of this file is in progress")
    if exc.code == "too-large":
        return error(413, "payload-too-large", f"Files are at most {settings.HYPERTUNA_DRIVE_MAX_BYTES} bytes")
    if exc.code == "hash-mismatch":
        return error(400, "hash-mismatch", "The file is named by a SHA-256 its bytes do not have")
    if exc.code in ("invalid-path", "invalid-params", "empty"):
        return error(400, exc.code, str(exc))
    logger.warning("gateway drive write failed", extra={"code": exc.code})
    return error(503, "gateway-drive-unavailable", "The gateway could not store the file; nothing was stored")


async def store_artifact(
    request: HttpRequest, relay_key: str, category: str, payload: Any, write_type: str
) -> HttpResponseBase:
    """A join or auth-callback request no worker could take, kept as a JSON artifact in the relay's gateway
    drive for the worker to process when it returns (credential headers are not kept)."""
    lease_id, refusal = await _lease_or_refusal(relay_key)
    if refusal is not None:
        drive_writes.labels(write_type, f"refused-{refusal.status_code}").inc()
        return refusal
    received = datetime.now(UTC)
    document = {
        "category": category,
        "relayKey": relay_key,
        "driveIdentifier": relay_key,
        "receivedAt": received.isoformat().replace("+00:00", "Z"),
        "headers": {k.lower(): v for k, v in request.headers.items() if k.lower() not in _SECRET_HEADERS},
        "query": {k: v for k, v in request.GET.items() if k != "token"},
        "body": payload,
    }
    artifact = f"{int(time.time() * 1000)}-{secrets.token_hex(6)}.json"
    try:
        info = await get_bridge().drive_put_json(relay_key=relay_key, path=[category, artifact], document=document)
    except BridgeError as exc:
        return _write_error(exc, write_type)
    except (BridgeUnavailable, BridgeTimeout):
        return error(503, "gateway-drive-unavailable", "No worker answered and the gateway cannot store the request")
    await sync_to_async(drives.record_pending_write)(
        relay_key=relay_key, identifier=relay_key, write_type=write_type, info=info, lease_id=lease_id or ""
    )
    drive_writes.labels(write_type, "stored").inc()
    return JsonResponse(
        {"status": "queued", "mode": "gateway-drive", "artifactPath": info.get("path"), "relayKey": relay_key},
        status=202,
    )
