"""The gateway's use of the bridge: one client per event loop, and the ``PeerTransport`` over it.

Everything that talks to Node goes through ``hypertuna.bridge``; this module only adapts it to the worker
protocol types and to Django settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Iterator

from django.conf import settings

from hypertuna.bridge import BridgeClient, BridgeError, BridgeTimeout, BridgeUnavailable
from hypertuna.bridge.probe import probe
from relays.bridge_outage import BridgeDown
from relays.forwarding import PeerError, PeerResponse, PeerStream

_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, BridgeClient] = weakref.WeakKeyDictionary()

# Bridge error codes that mean "this peer cannot be reached now" (try another one).
# ``peer.disconnected`` reasons that do not mean the worker is gone: the gateway's own disconnect, or a newer
# connection of the same worker replacing this one.
BENIGN_CLOSES = frozenset({"manual-destroy", "duplicate-replacement"})
# How long a restarted bridge (empty worker pool) is given to reach each worker it is asked to dial again.
REDIAL_TIMEOUT_MS = 30_000
_UNREACHABLE = {"peer-unavailable", "peer-timeout", "peer-closed", "connect-timeout", "handshake-timeout"}


def get_bridge() -> BridgeClient:
    """The bridge client of the running event loop (created on first use, reconnecting on its own)."""
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        client = BridgeClient(
            socket_path=settings.HYPERTUNA_BRIDGE_SOCKET,
            secret=settings.HYPERTUNA_BRIDGE_SECRET,
            client_name="gateway-web",
            subscribe=("peer.wsframe",),
        )
        _clients[loop] = client
    return client


def bridge_ready() -> tuple[bool, str]:
    """Readiness probe for ``/ready`` (sync, never raises)."""
    if not settings.HYPERTUNA_BRIDGE_REQUIRED:
        return True, "not required"
    return probe(socket_path=settings.HYPERTUNA_BRIDGE_SOCKET, secret=settings.HYPERTUNA_BRIDGE_SECRET)


class BridgePeerTransport:
    """``PeerTransport`` over the bridge's ``peer.request``."""

    def __init__(self, client: BridgeClient) -> None:
        self.client = client

    async def request(
        self, peer_key: str, method: str, path: str, *, headers: dict[str, str], body: bytes | None, timeout: float
    ) -> PeerResponse:
        with _as_peer_errors():
            response = await self.client.peer_request(
                peer_key,
                method,
                path,
                headers=headers,
                body=body,
                timeout_ms=int(timeout * 1000),
                connect_timeout_ms=int(timeout * 1000),
            )
        return PeerResponse(response.status_code, {k: str(v) for k, v in response.headers.items()}, response.body)

    async def stream(
        self, peer_key: str, method: str, path: str, *, headers: dict[str, str], body: bytes | None, timeout: float
    ) -> PeerStream:
        stream = self.client.peer_request_stream(
            peer_key, method, path, headers=headers, body=body, timeout_ms=int(timeout * 1000)
        )
        with _as_peer_errors():
            await stream.__aenter__()
        head = stream.head or {}

        async def chunks():  # type: ignore[no-untyped-def]
            try:
                async for chunk in stream:
                    yield chunk
            finally:
                await stream.__aexit__(None, None, None)

        return PeerStream(
            int(head.get("statusCode", 502)),
            {k: str(v) for k, v in (head.get("headers") or {}).items()},
            chunks(),
        )


@contextlib.contextmanager
def _as_peer_errors() -> Iterator[None]:
    """Translate bridge client errors into the worker-protocol errors sessions understand."""
    try:
        yield
    except BridgeError as exc:
        raise PeerError(_describe(exc), unreachable=exc.code in _UNREACHABLE) from None
    except BridgeTimeout:
        raise PeerError("Request timeout", unreachable=True) from None
    except BridgeUnavailable:
        raise BridgeDown("gateway bridge unavailable") from None


def _describe(exc: BridgeError) -> str:
    if exc.code in ("peer-timeout", "connect-timeout", "handshake-timeout"):
        return "Connection timeout"
    if exc.code in _UNREACHABLE:
        return "Peer unavailable"
    return f"Bridge error ({exc.code})"
