"""What registrations and tokens share: the registration secret, signed header checks, the relay group."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings

from hypertuna.compat import verify_hmac
from hypertuna.exceptions import ApiError

logger = logging.getLogger(__name__)


def registration_secret() -> str:
    secret = settings.HYPERTUNA_REGISTRATION_SECRET
    if not secret:
        raise ApiError("registration-disabled", "The gateway has no registration secret configured.", status=503)
    return secret


def now_ms(now: datetime) -> int:
    return int(now.timestamp() * 1000)


def relay_group(relay_id: int) -> str:
    """Channel-layer group of every live socket of a relay, on every gateway node."""
    return f"relay-{relay_id}"


def broadcast(group: str, message: dict[str, Any]) -> None:
    """Send a channel-layer message to a relay's sockets on every node (call it on commit).

    Failures are logged, never raised: what is broadcast (a revocation, a peer's reachability) is already
    committed and enforced on every new connection; only live sockets learn it later.
    """
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(group, message)
    except Exception:
        logger.exception("could not broadcast to a relay's sockets", extra={"group": group, "type": message["type"]})


def verify_header_signature(signed: dict[str, Any], signature: str | None) -> None:
    """Check an ``x-signature`` header: HMAC over the canonical JSON of ``signed``."""
    secret = registration_secret()
    if not signature:
        raise ApiError("missing-signature", "The x-signature header is required.", status=401)
    if not verify_hmac(secret, signed, signature):
        raise ApiError("invalid-signature", "x-signature does not verify.", status=401)
