"""The few bridge calls the replicas app makes, behind small functions tests replace.

RPC methods (specified in ``replicas/README.md`` for the bridge): ``replica.readView`` (through
:class:`replicas.sources.BridgeReplicaSource`), ``blindPeer.gc``, ``blindPeer.deleteCore`` and
``blindPeer.status`` (for the public summary workers read from ``GET /api/blind-peer``).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.cache import cache

from hypertuna.bridge import BridgeClient, BridgeClientError

PUBLIC_CACHE_KEY = "blind-peer:public"
PUBLIC_CACHE_SECONDS = 30


def bridge_client() -> BridgeClient:
    """A client for the local bridge; the caller enters it (``async with``) and so owns its lifetime."""
    return BridgeClient(
        socket_path=settings.HYPERTUNA_BRIDGE_SOCKET,
        secret=settings.HYPERTUNA_BRIDGE_SECRET,
        client_name="replicas",
        reconnect=False,
    )


async def run_gc(*, reason: str) -> dict[str, Any]:
    """Ask the blind peer for a hygiene/GC run; returns the bridge's result object."""
    async with bridge_client() as client:
        result = await client.call("blindPeer.gc", {"reason": reason}, timeout_s=120)
    return result if isinstance(result, dict) else {"result": result}


async def delete_core(*, core_key: str, reason: str) -> dict[str, Any]:
    """Ask the blind peer to delete one mirrored core; returns the bridge's result object."""
    async with bridge_client() as client:
        result = await client.call("blindPeer.deleteCore", {"coreKey": core_key, "reason": reason}, timeout_s=60)
    return result if isinstance(result, dict) else {"result": result}


async def _public_from_bridge() -> dict[str, Any]:
    try:
        async with bridge_client() as client:
            status = await client.call("blindPeer.status", timeout_s=5)
    except (BridgeClientError, OSError):
        return {"enabled": False, "publicKey": None, "encryptionKey": None, "maxBytes": None}
    if not isinstance(status, dict) or not status.get("enabled"):
        return {"enabled": False, "publicKey": None, "encryptionKey": None, "maxBytes": None}
    return {
        "enabled": True,
        "publicKey": status.get("publicKey"),
        "encryptionKey": status.get("encryptionKey"),
        "maxBytes": status.get("maxBytes"),
    }


async def public_summary() -> dict[str, Any]:
    """What a worker needs to mirror here: enabled, the blind peer's public and encryption keys, its byte
    budget. Cached briefly (every node asks its own bridge; the keys only change with the gateway seed)."""
    cached = await cache.aget(PUBLIC_CACHE_KEY)
    if isinstance(cached, dict):
        return cached
    summary = await _public_from_bridge()
    if summary["enabled"]:
        await cache.aset(PUBLIC_CACHE_KEY, summary, timeout=PUBLIC_CACHE_SECONDS)
    # A bridge without a blind peer (a node other than the replica node) never writes the shared key: that
    # would hide the replica node's blind peer from every node until it expired.
    return summary
