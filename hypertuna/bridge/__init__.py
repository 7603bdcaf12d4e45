"""Asyncio client of the bridge RPC (``node bridge/src/main.mjs``); standard library only, no Django.

The RPC protocol is specified in ``bridge/README.md``.
"""

from .client import PROTOCOL_VERSION, BridgeClient
from .errors import BridgeClientError, BridgeError, BridgeProtocolError, BridgeTimeout, BridgeUnavailable
from .probe import probe
from .results import BridgeEvent, BridgeStream, EventSubscription, PeerResponse

__all__ = [
    "PROTOCOL_VERSION",
    "BridgeClient",
    "BridgeClientError",
    "BridgeError",
    "BridgeEvent",
    "BridgeProtocolError",
    "BridgeStream",
    "BridgeTimeout",
    "BridgeUnavailable",
    "EventSubscription",
    "PeerResponse",
    "probe",
]
