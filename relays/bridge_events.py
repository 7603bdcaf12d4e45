"""Facts the bridge reports, turned into gateway state (one consumer per node, ``manage.py bridge_events``).

- ``peer.connected`` / ``peer.health`` (ok) mark a worker peer reachable; ``peer.disconnected`` (except
  deliberate closes) and failed health checks mark it unreachable, so new sessions stop choosing it.
- ``mirror.*`` (the blind peer accepted, dropped or advanced a mirrored core) goes to the replicas app.
- ``peer.register`` is a worker's Hyperswarm ``/gateway/register``, which carries no credential. The
  gateway never lets it add a peer to a relay (that would let anyone on the topic hijack a relay's
  traffic): it only acknowledges peers that a signed HTTP registration already lists, and tells the
  others to register over HTTPS. An acknowledged peer's ``blindPeeringPublicKey`` is remembered and the
  blind-peer trust of its relays is pushed before the answer, so its mirror is accepted at once.
- The blind-peer trust table (``relays.blind_trust``) is reconciled with the bridge on every
  (re)connection and every ``RECONCILE_INTERVAL_S``: a bridge restart or a missed push heals.
- On every (re)connection the bridge is also asked to dial every peer that live relays' fresh signed
  registrations list (healthy or not): a restarted bridge knows no worker, and nothing else would dial a
  worker no client is using. Each peer it reaches is reported ``peer.connected`` (healthy again), and the
  worker sees the gateway again (its swarm registration, its mirror).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from asgiref.sync import sync_to_async
from django.core.cache import cache

from hypertuna.bridge import BridgeClient, BridgeClientError, BridgeEvent, BridgeTimeout
from hypertuna.compat.relaykeys import HEX64
from relays import blind_trust, selectors, services
from relays.bridge import BENIGN_CLOSES, REDIAL_TIMEOUT_MS
from replicas import events as replica_events
from replicas.blindpeer import PUBLIC_CACHE_KEY
from replicas.keys import normalize_core_key

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
RECONCILE_INTERVAL_S = 60.0
# The replica node republishes its blind peer's summary on every reconcile; it outlives three of them.
PUBLISHED_SECONDS = int(3 * RECONCILE_INTERVAL_S)


def register_answer(peer_key: str, blind_peer: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """The answer to a worker's Hyperswarm registration. A 2xx also lets this peer mirror its relays'
    cores into the blind peer, so it is given only to peers of signed registrations."""
    relays = selectors.relays_served_by(peer_key) if HEX64.match(peer_key or "") else []
    if not relays:
        return 403, {
            "error": "http-registration-required",
            "message": "Register relays with the gateway's signed HTTP API first.",
        }
    services.record_peer_health(peer_key=peer_key, healthy=True)
    return 200, {"status": "ok", "relays": relays, "hyperbee": None, "blindPeer": blind_peer}


def announced_blind_key(body: Any) -> str:
    """The ``blindPeeringPublicKey`` a swarm registration body announces (hex), or "" (also for a value
    that is not a key: the body is unsigned, so nothing in it is worth an error)."""
    if not isinstance(body, dict):
        return ""
    metadata = body.get("metadata")
    nested = metadata.get("blindPeeringPublicKey") if isinstance(metadata, dict) else None
    for value in (body.get("blindPeeringPublicKey"), nested):
        key = normalize_core_key(value)
        if key:
            return key
    return ""


def _trust_for_registered_peer(peer_key: str, body: Any) -> list[dict[str, Any]]:
    """Scopes of the live relays that list ``peer_key``, after remembering the blind-peering key its
    (acknowledged) swarm registration announced."""
    relays = blind_trust.record_swarm_blind_key(peer_key=peer_key, blind_peering_key=announced_blind_key(body))
    return blind_trust.relay_scopes(relays) if relays else []


async def answer_register(client: BridgeClient, data: dict[str, Any]) -> None:
    peer_key = str(data.get("peerKey") or "")
    own = await own_blind_peer(client)
    status, body = await sync_to_async(register_answer)(peer_key, await blind_peer_summary(client, own))
    params: dict[str, Any] = {"registerId": str(data["registerId"]), "statusCode": status, "body": body}
    if status == 200 and (own is None or own["enabled"]):
        scopes = await sync_to_async(_trust_for_registered_peer)(peer_key, data.get("body"))
        try:
            await blind_trust.push(client, scopes)
        except BridgeClientError as exc:
            logger.warning("blind-peer trust push failed", extra={"peer": peer_key[:16], "error": str(exc)})
        # The bridge adds the swarm key to these relays' scopes (and never trusts it unscoped).
        params["blindPeerTrust"] = [{"relayKey": s["relayKey"], "keys": s["keys"]} for s in scopes if s["peerKeys"]]
    await client.call("register.reply", params)


async def reconcile_trust(client: BridgeClient) -> dict[str, Any]:
    """Replace the bridge's whole blind-peer trust table with what the database says now (and publish the
    blind peer's summary for the other nodes). Nothing to do on a bridge without a blind peer."""
    own = await own_blind_peer(client)
    if own is not None and not own["enabled"]:
        return {}
    if own is not None:
        await cache.aset(PUBLIC_CACHE_KEY, own, timeout=PUBLISHED_SECONDS)
    scopes = await sync_to_async(blind_trust.relay_scopes)()
    return await blind_trust.push(client, scopes, replace_all=True)


async def own_blind_peer(client: BridgeClient) -> dict[str, Any] | None:
    """This node's bridge's blind peer: ``{"enabled": False}`` when it says it runs none, None when it could
    not tell (the call failed)."""
    try:
        status = await client.call("blindPeer.status", timeout_s=5)
    except BridgeClientError:
        return None
    if not isinstance(status, dict) or not status.get("enabled"):
        return {"enabled": False}
    return {
        "enabled": True,
        "publicKey": status.get("publicKey"),
        "encryptionKey": status.get("encryptionKey"),
        "maxBytes": status.get("maxBytes"),
    }


async def blind_peer_summary(client: BridgeClient, own: dict[str, Any] | None = None) -> dict[str, Any]:
    """What workers need to mirror into the gateway's blind peer. With several nodes only the replica node's
    bridge runs one (the others have ``HYPERTUNA_BRIDGE_BLIND_PEER=off``): that node's consumer publishes
    its summary in the shared cache on every reconcile, where every node's ``GET /api/blind-peer`` and
    swarm registration answers find it, so every worker mirrors into the one bridge the replica sync reads."""
    own = own or await own_blind_peer(client)
    if own is not None and own["enabled"]:
        return own
    published = await cache.aget(PUBLIC_CACHE_KEY)
    return published if isinstance(published, dict) and published.get("enabled") else {"enabled": False}


def node_of(client: BridgeClient) -> str:
    """This node's name among the gateway's nodes: its bridge's swarm key (each node has its own)."""
    info = getattr(client, "server_info", None) or {}
    return str(info.get("gatewayPublicKey") or "")


async def handle(client: BridgeClient, event: BridgeEvent) -> None:
    data = event.data
    peer_key = str(data.get("peerKey") or "")
    node = node_of(client)
    if event.name == "peer.connected" or (event.name == "peer.health" and data.get("ok")):
        await sync_to_async(services.record_peer_health)(
            peer_key=peer_key, healthy=True, latency_ms=data.get("latencyMs"), node=node
        )
    elif event.name == "peer.health" or (event.name == "peer.disconnected" and data.get("reason") not in BENIGN_CLOSES):
        await sync_to_async(services.record_peer_health)(peer_key=peer_key, healthy=False, node=node)
    elif event.name.startswith("mirror."):
        await sync_to_async(replica_events.handle_bridge_event)(event.name, data)
    elif event.name == "peer.register":
        await answer_register(client, data)
    elif event.name == "bridge.reconnected":
        await _reconcile_quietly(client)
        _redial_in_background(client)


_redials: set[asyncio.Task[int]] = set()


def _redial_in_background(client: BridgeClient) -> None:
    """Dial without holding up the events (a dial can take ``REDIAL_TIMEOUT_MS``); one round at a time."""
    if _redials:
        return
    task = asyncio.ensure_future(redial(client))
    _redials.add(task)
    task.add_done_callback(_redials.discard)
    task.add_done_callback(lambda t: t.cancelled() or t.exception())


async def redial(client: BridgeClient) -> int:
    """Ask the bridge to dial (and keep) every registered peer; returns how many it reached."""
    peers = await sync_to_async(selectors.peers_to_dial)()
    results = await asyncio.gather(
        *(client.peer_connect(peer, timeout_ms=REDIAL_TIMEOUT_MS) for peer in peers), return_exceptions=True
    )
    reached = sum(not isinstance(r, BaseException) for r in results)
    if peers:
        logger.info("dialled registered workers", extra={"peers": len(peers), "reached": reached})
    return reached


async def _reconcile_quietly(client: BridgeClient) -> None:
    try:
        await reconcile_trust(client)
    except BridgeClientError as exc:
        logger.warning("blind-peer trust reconcile failed; retrying later", extra={"error": str(exc)})


async def run(client: BridgeClient, *, stop: asyncio.Event) -> None:
    """Consume bridge events until ``stop`` is set; reconnects on its own, never dies on one bad event."""
    while not stop.is_set():
        try:
            if not client.connected:
                await client.connect()
            async with client.events(*TOPICS) as events:
                await _reconcile_quietly(client)
                _redial_in_background(client)
                reconciled_at = time.monotonic()
                while not stop.is_set():
                    if time.monotonic() - reconciled_at >= RECONCILE_INTERVAL_S:
                        await _reconcile_quietly(client)
                        reconciled_at = time.monotonic()
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
