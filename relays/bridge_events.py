"""Facts the bridge reports, turned into gateway state (one consumer per node, ``manage.py bridge_events``).

- ``peer.connected`` / ``peer.health`` (ok) mark a worker peer reachable; ``peer.disconnected`` (except
  deliberate closes) and failed health checks mark it unreachable, so new sessions stop choosing it.
- ``mirror.*`` (the blind peer accepted, dropped or advanced a mirrored core) goes to the replicas app.
- ``peer.register`` is a worker's Hyperswarm ``/gateway/register``, which carries no credential. The
  gateway never lets it add a peer to a relay (that would let anyone on the topic hijack a relay's
  traffic): it only acknowledges peers that a signed HTTP registration already lists, and tells the
  others to register over HTTPS.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from asgiref.sync import sync_to_async

from hypertuna.bridge import BridgeClient, BridgeClientError, BridgeEvent, BridgeTimeout
from hypertuna.compat.relaykeys import HEX64
from relays import selectors, services
from replicas import events as replica_events

logger = logging.getLogger(__name__)

TOPICS = (
    "peer.connected",
    "peer.disconnected",
    "peer.health",
    "peer.register",
    "bridge.reconnected",
    *replica_events.TOPICS,
)
# Closes the gateway asked for, or a newer connection replacing an older one: not a health signal.
_BENIGN_CLOSES = {"manual-destroy", "duplicate-replacement"}


def register_answer(peer_key: str, blind_peer: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """The answer to a worker's Hyperswarm registration. A 2xx also tells the bridge to let this peer
    mirror cores into the blind peer, so it is given only to peers of signed registrations."""
    relays = selectors.relays_served_by(peer_key) if HEX64.match(peer_key or "") else []
    if not relays:
        return 403, {
            "error": "http-registration-required",
            "message": "Register relays with the gateway's signed HTTP API first.",
        }
    services.record_peer_health(peer_key=peer_key, healthy=True)
    return 200, {"status": "ok", "relays": relays, "hyperbee": None, "blindPeer": blind_peer}


async def blind_peer_summary(client: BridgeClient) -> dict[str, Any]:
    """What workers need to mirror into the gateway's blind peer (``{"enabled": False}`` when it is off)."""
    try:
        status = await client.call("blindPeer.status", timeout_s=5)
    except BridgeClientError:
        return {"enabled": False}
    if not isinstance(status, dict) or not status.get("enabled"):
        return {"enabled": False}
    return {
        "enabled": True,
        "publicKey": status.get("publicKey"),
        "encryptionKey": status.get("encryptionKey"),
        "maxBytes": status.get("maxBytes"),
    }


async def handle(client: BridgeClient, event: BridgeEvent) -> None:
    data = event.data
    peer_key = str(data.get("peerKey") or "")
    if event.name == "peer.connected" or (event.name == "peer.health" and data.get("ok")):
        await sync_to_async(services.record_peer_health)(
            peer_key=peer_key, healthy=True, latency_ms=data.get("latencyMs")
        )
    elif event.name == "peer.health" or (
        event.name == "peer.disconnected" and data.get("reason") not in _BENIGN_CLOSES
    ):
        await sync_to_async(services.record_peer_health)(peer_key=peer_key, healthy=False)
    elif event.name.startswith("mirror."):
        await sync_to_async(replica_events.handle_bridge_event)(event.name, data)
    elif event.name == "peer.register":
        status, body = await sync_to_async(register_answer)(peer_key, await blind_peer_summary(client))
        await client.register_reply(str(data["registerId"]), status, body=body)


async def run(client: BridgeClient, *, stop: asyncio.Event) -> None:
    """Consume bridge events until ``stop`` is set; reconnects on its own, never dies on one bad event."""
    while not stop.is_set():
        try:
            if not client.connected:
                await client.connect()
            async with client.events(*TOPICS) as events:
                while not stop.is_set():
                    try:
                        event = await events.get(timeout_s=1.0)
                    except BridgeTimeout:
                        continue
                    except StopAsyncIteration:
                        break
                    try:
                        await handle(client, event)
                    except Exception:
                        logger.exception("bridge event handling failed", extra={"event": event.name})
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning("bridge event stream interrupted; retrying", extra={"error": str(exc)})
            await asyncio.sleep(1.0)
