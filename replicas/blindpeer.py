"""The few bridge calls the replicas app makes, behind small functions tests replace.

RPC methods (specified in ``replicas/README.md`` for the bridge): ``replica.readView`` (through
:class:`replicas.sources.BridgeReplicaSource`), ``blindPeer.gc`` and ``blindPeer.deleteCore``.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

from hypertuna.bridge import BridgeClient


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
