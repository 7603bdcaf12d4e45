"""The bridge's RPC methods, typed: what each sends and what it returns.

:class:`BridgeMethods` is the part of :class:`~hypertuna.bridge.client.BridgeClient` that knows the methods
of the bridge's current protocol; the client supplies the transport (``call`` and ``stream``).
"""

from __future__ import annotations

import base64
from abc import ABC, abstractmethod
from typing import Any

from .results import BridgeStream, PeerResponse


# What a worker-protocol request may carry: bytes as they are, text, or a value sent as JSON.
RequestBody = bytes | str | dict[str, Any] | list[Any] | None


class BridgeMethods(ABC):
    call_timeout: float

    @abstractmethod
    async def call(self, method: str, params: dict[str, Any] | None = None, *, timeout_s: float | None = None) -> Any:
        """Call ``method``; raises BridgeError / BridgeTimeout / BridgeUnavailable."""

    @abstractmethod
    def stream(
        self, method: str, params: dict[str, Any] | None = None, *, timeout_s: float | None = None, window: int = 8
    ) -> BridgeStream:
        """A streamed call."""

    async def swarm_info(self) -> dict[str, Any]:
        return dict(await self.call("swarm.info"))

    async def pool_status(self) -> dict[str, Any]:
        return dict(await self.call("pool.status"))

    async def peer_connect(self, peer_key: str, *, timeout_ms: int | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"peerKey": peer_key}
        if timeout_ms:
            params["timeoutMs"] = timeout_ms
        call_timeout = max(self.call_timeout, (timeout_ms or 0) / 1000 + 5)
        return dict(await self.call("peer.connect", params, timeout_s=call_timeout))

    async def peer_request(
        self,
        peer_key: str,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        body: RequestBody = None,
        timeout_ms: int | None = None,
        connect_timeout_ms: int | None = None,
    ) -> PeerResponse:
        """Send a worker-protocol request and return the whole response."""
        params = self._request_params(peer_key, method, path, headers, body, timeout_ms, connect_timeout_ms)
        budget = ((timeout_ms or 30_000) + (connect_timeout_ms or 30_000)) / 1000 + 5
        result = await self.call("peer.request", params, timeout_s=max(self.call_timeout, budget))
        return PeerResponse(
            status_code=int(result["statusCode"]),
            headers=dict(result.get("headers") or {}),
            body=base64.b64decode(result.get("bodyBase64") or ""),
        )

    def peer_request_stream(
        self,
        peer_key: str,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        body: RequestBody = None,
        timeout_ms: int | None = None,
        chunk_size: int | None = None,
        window: int = 8,
    ) -> BridgeStream:
        """Streamed ``peer.request``: ``head`` has statusCode/headers/bodyLength; iterate for bytes."""
        params = self._request_params(peer_key, method, path, headers, body, timeout_ms, None)
        if chunk_size:
            params["chunkSize"] = chunk_size
        budget = (timeout_ms or 30_000) / 1000 + 35
        return self.stream("peer.request", params, timeout_s=max(self.call_timeout, budget), window=window)

    @staticmethod
    def _request_params(
        peer_key: str,
        method: str,
        path: str,
        headers: dict[str, str] | None,
        body: RequestBody,
        timeout_ms: int | None,
        connect_timeout_ms: int | None,
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"peerKey": peer_key, "method": method, "path": path, "headers": headers or {}}
        _put_body(params, body)
        if timeout_ms:
            params["timeoutMs"] = timeout_ms
        if connect_timeout_ms:
            params["connectTimeoutMs"] = connect_timeout_ms
        return params

    async def peer_health(self, peer_key: str, *, timeout_ms: int | None = None) -> float:
        """Health-check a worker; returns the latency in ms (BridgeError on failure)."""
        params: dict[str, Any] = {"peerKey": peer_key}
        if timeout_ms:
            params["timeoutMs"] = timeout_ms
        result = await self.call("peer.health", params)
        return float(result["latencyMs"])

    async def peer_disconnect(self, peer_key: str) -> bool:
        result = await self.call("peer.disconnect", {"peerKey": peer_key})
        return bool(result["disconnected"])

    def drive_read_stream(self, params: dict[str, Any], *, window: int = 8) -> BridgeStream:
        """Streamed ``drive.read``: ``head`` has source/size/etag/lastModified/start/end; iterate for bytes."""
        return self.stream("drive.read", params, window=window)

    async def drive_info(self, *, relay_key: str | None, kind: str = "relay") -> dict[str, Any]:
        """The gateway-owned drive of a relay (or the pfp drive): key, blobs key, version, mirrored."""
        return dict(await self.call("drive.info", {"kind": kind, "relayKey": relay_key}))

    async def drive_upload_begin(
        self,
        *,
        relay_key: str,
        path: list[str],
        max_bytes: int,
        sha256: str | None = None,
        mime: str | None = None,
        file_name: str | None = None,
    ) -> str:
        """Open an upload into the relay's gateway drive; raises BridgeError ``conflict`` when the path is busy."""
        params: dict[str, Any] = {"kind": "relay", "relayKey": relay_key, "path": path, "maxBytes": max_bytes}
        if sha256:
            params["sha256"] = sha256
        if mime:
            params["mime"] = mime
        if file_name:
            params["fileName"] = file_name
        return str((await self.call("drive.upload.begin", params))["uploadId"])

    async def drive_upload_chunk(self, upload_id: str, data: bytes) -> int:
        """Write one chunk; returns once the drive took it (the back-pressure), with the bytes so far."""
        payload = {"uploadId": upload_id, "dataBase64": base64.b64encode(data).decode("ascii")}
        return int((await self.call("drive.upload.chunk", payload))["bytes"])

    async def drive_upload_commit(self, upload_id: str) -> dict[str, Any]:
        """Write the entry; returns the drive's description with ``path``, ``bytes``, ``sha256``, ``version``."""
        return dict(await self.call("drive.upload.commit", {"uploadId": upload_id}, timeout_s=60))

    async def drive_upload_abort(self, upload_id: str) -> None:
        await self.call("drive.upload.abort", {"uploadId": upload_id})

    async def drive_put_json(self, *, relay_key: str, path: list[str], document: Any) -> dict[str, Any]:
        """Write a small JSON document (an offline HTTP artifact) into the relay's gateway drive."""
        params = {"kind": "relay", "relayKey": relay_key, "path": path, "document": document}
        return dict(await self.call("drive.putJson", params, timeout_s=60))

    async def register_reply(
        self,
        register_id: str,
        status_code: int,
        *,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer a ``peer.register`` event; the bridge relays it to the worker."""
        params: dict[str, Any] = {"registerId": register_id, "statusCode": status_code}
        _put_body(params, body)
        if headers:
            params["headers"] = headers
        await self.call("register.reply", params)


def _put_body(params: dict[str, Any], body: Any) -> None:
    """Bytes travel base64-encoded (``bodyBase64``); anything else but ``None`` as JSON (``body``)."""
    if isinstance(body, bytes | bytearray):
        params["bodyBase64"] = base64.b64encode(bytes(body)).decode("ascii")
    elif body is not None:
        params["body"] = body
