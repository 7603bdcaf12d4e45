"""What a client socket gets while this node's bridge is away (killed, restarting): Django-free, like the session.

The bridge is the only way to the workers, so while it is gone no worker can be reached through this node,
though the workers themselves are fine. Nothing that happens then counts against a worker (no peer is marked
failed or unhealthy), and the socket stays open: the client is told once (``BRIDGE_DOWN_NOTICE``), a REQ is
answered from the replica when the relay has one (else ``CLOSED`` with ``error: …; try again``), an EVENT is
refused with ``OK false "error: …; try again"``. Once the bridge is back the session re-opens its
subscriptions on its worker (``GatewaySession.bridge_changed``).
"""

from __future__ import annotations

from collections.abc import Sequence

from hypertuna.nostr import CloseMessage, EventMessage, ReqMessage, closed_frame, notice_frame, ok_frame
from relays.forwarding import PeerError
from relays.frames_filter import Frame
from relays.session_config import Fallback

BRIDGE_DOWN_NOTICE = "gateway: connection to workers interrupted; reconnecting"
BRIDGE_BACK_NOTICE = "gateway: connection to workers restored"
TRY_AGAIN = "error: the gateway's connection to the relay's workers is interrupted; try again"


class BridgeDown(PeerError):
    """The local bridge itself is not answering: no peer can be reached through this node."""


async def outage_reply(message: object, raw: str, fallback: Fallback | None) -> Sequence[Frame]:
    """The answer to one client frame while the bridge is away (a REQ refused with ``CLOSED`` is closed in
    the session as the frame passes, so it is not re-opened on the worker when the bridge is back)."""
    if fallback is not None and isinstance(message, (ReqMessage, CloseMessage)):
        served = await fallback.handle(message, raw)
        if served is not None:
            return served
    if isinstance(message, EventMessage):
        return [ok_frame(message.event.id, False, TRY_AGAIN)]
    if isinstance(message, ReqMessage):
        return [closed_frame(message.subscription_id, TRY_AGAIN)]
    if isinstance(message, CloseMessage):
        return []
    return [notice_frame(TRY_AGAIN)]
