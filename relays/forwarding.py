"""The worker protocol as the gateway speaks it, over any ``PeerTransport``.

A transport carries one HTTP-like request to one worker peer (in production: the bridge's RelayProtocol
over Hyperswarm; in unit tests: a fake). This module knows the worker endpoints and their reply shapes,
and nothing about Django.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote

from relays.frames_filter import WorkerFrame, read_decoded

HOP_BY_HOP = frozenset(
    {
        "content-length",
        "host",
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "cookie",
        "authorization",
    }
)

# Workers answer a REQ/CLOSE with informational NOTICEs meant for the gateway, not the user. The published
# worker runtime writes the literal "created/updated" (hyperpipe-relay-event-processor.mjs).
_WORKER_CHATTER = re.compile(
    r"^Subscription .{1,80} (created|updated|created/updated) successfully$|^Subscription closed$", re.DOTALL
)


class PeerError(Exception):
    """A peer could not serve a request (unreachable, timed out, or answered with an error status)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        unreachable: bool = False,
        frames: list[WorkerFrame] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.unreachable = unreachable
        # Client-bound frames of an error reply (e.g. the worker's NOTICE explaining a 403).
        self.frames = frames or []


@dataclass
class PeerResponse:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass
class PeerStream:
    """A streamed response: status and headers first, then the body in chunks."""

    status: int
    headers: dict[str, str]
    chunks: AsyncIterator[bytes]


class PeerTransport(Protocol):
    async def request(
        self, peer_key: str, method: str, path: str, *, headers: dict[str, str], body: bytes | None, timeout: float
    ) -> PeerResponse: ...

    async def stream(
        self, peer_key: str, method: str, path: str, *, headers: dict[str, str], body: bytes | None, timeout: float
    ) -> PeerStream: ...


def clean_headers(headers: dict[str, str]) -> dict[str, str]:
    """Drop hop-by-hop and credential headers before forwarding to a worker or back to a client."""
    return {k.lower(): v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}


def _frames_from_json(value: Any) -> list[list[Any]]:
    """Frames from one decoded JSON document: a frame, or (worker error path) an array of frames."""
    if isinstance(value, list) and value and all(isinstance(item, list) for item in value):
        return value
    if isinstance(value, list) and value:
        return [value]
    return []


def _is_forwardable(frame: list[Any]) -> bool:
    if not frame or not isinstance(frame[0], str) or frame[0] == "ACK":
        return False
    return not (
        frame[0] == "NOTICE" and len(frame) > 1 and isinstance(frame[1], str) and _WORKER_CHATTER.match(frame[1])
    )


def _client_frames(values: list[list[Any]]) -> list[WorkerFrame]:
    """The frames a client may see, each read once."""
    return [read_decoded(frame) for frame in values if _is_forwardable(frame)]


def parse_ndjson(body: bytes) -> list[WorkerFrame]:
    """Client-bound frames from a ``/post/relay`` reply (NDJSON, or a single JSON array of frames)."""
    values: list[list[Any]] = []
    for line in body.decode("utf-8", "replace").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            values.extend(_frames_from_json(json.loads(line)))
        except ValueError:
            continue
    return _client_frames(values)


def parse_poll(body: bytes) -> list[WorkerFrame]:
    """Client-bound frames from a ``/get/relay`` reply (a JSON array of frames, or one frame)."""
    try:
        value = json.loads(body.decode("utf-8", "replace") or "[]")
    except ValueError:
        return []
    return _client_frames(_frames_from_json(value))


def relay_path(relay_key: str) -> str:
    return quote(relay_key, safe=":")


async def post_relay(
    transport: PeerTransport,
    peer_key: str,
    *,
    relay_key: str,
    message: str,
    connection_key: str,
    auth_token: str | None,
    timeout: float,
) -> list[WorkerFrame]:
    """Forward one client frame; returns the frames to send back to the client."""
    headers = {"content-type": "application/json"}
    if auth_token:
        headers["x-auth-token"] = auth_token
    body = json.dumps({"message": message, "connectionKey": connection_key}, ensure_ascii=False).encode()
    response = await transport.request(
        peer_key, "POST", f"/post/relay/{relay_path(relay_key)}", headers=headers, body=body, timeout=timeout
    )
    if response.status != 200:
        frames = parse_ndjson(response.body) if response.status < 500 else []
        raise PeerError(f"Peer returned status {response.status}", status=response.status, frames=frames)
    return parse_ndjson(response.body)


async def poll_relay(
    transport: PeerTransport,
    peer_key: str,
    *,
    relay_key: str,
    connection_key: str,
    auth_token: str | None,
    timeout: float,
) -> list[WorkerFrame]:
    """Fetch the frames a worker has queued for this connection's subscriptions."""
    headers = {"accept": "application/json"}
    if auth_token:
        headers["x-auth-token"] = auth_token
    response = await transport.request(
        peer_key,
        "GET",
        f"/get/relay/{relay_path(relay_key)}/{connection_key}",
        headers=headers,
        body=None,
        timeout=timeout,
    )
    if response.status != 200:
        raise PeerError(f"Peer returned status {response.status}", status=response.status)
    return parse_poll(response.body)
