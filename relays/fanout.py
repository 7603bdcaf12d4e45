"""Gateway-side live fan-out of accepted events, on every gateway node.

A worker that never pushes queues a live event for each of its connections until the gateway polls: up to
one idle poll interval late. The gateway knows sooner: when a worker answers ``OK true`` to an EVENT a
client sent through it, the session publishes that event once to the relay's channel-layer group (the group
every socket of the relay joins, on every node). Each socket that receives it delivers it at once to its
own subscriptions that match (the sending socket included, as a relay would); the worker's copy arriving
later by poll or push is dropped there by id (:class:`relays.frames_filter.DeliveredIds`).

One channel-layer message per accepted event, never one per frame or per subscription.
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import Counter

from hypertuna.nostr import Event, InvalidEvent

logger = logging.getLogger(__name__)

MESSAGE_TYPE = "relay.event"  # handled by RelayConsumer.relay_event

fanout_published = Counter("gateway_fanout_events_total", "Accepted events published to the relay's sockets")


def message(event: Event) -> dict[str, Any]:
    """The channel-layer message for one accepted event."""
    return {"type": MESSAGE_TYPE, "event": event.to_dict()}


async def publish(channel_layer: Any, group: str, event: Event) -> None:
    """Publish one accepted event to every socket of the relay; a channel-layer failure costs the live
    copies only (the worker still delivers them by poll), never the client's OK."""
    try:
        await channel_layer.group_send(group, message(event))
    except Exception as exc:  # the channel layer (Redis) may be briefly unavailable
        logger.warning("live fan-out failed", extra={"group": group, "error": str(exc)})
        return
    fanout_published.inc()


def event_of(payload: dict[str, Any]) -> Event | None:
    """The event of a fan-out message (from this gateway's channel layer; parsed, not re-verified)."""
    try:
        return Event.from_json(payload.get("event"))
    except (InvalidEvent, ValueError, TypeError):
        return None
