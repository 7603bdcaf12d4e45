"""What of a worker's frames a NIP-01 client may see.

Workers answer for more than the socket in front of them: a real worker re-attaches a returning client's
earlier subscriptions to a new connection key (so a fresh socket may get EVENT / EOSE for ids it never
opened), repeats ``["NOTICE","Invalid authentication"]`` on every poll of a connection it rejects, and a
live event can reach a socket twice (the gateway's fan-out, then the worker's own copy). This module reads
a frame once into :class:`WorkerFrame` and keeps the small state the session needs to decide:

- frames for subscriptions this socket has not opened (or has closed) are dropped;
- an authentication refusal is recognised (the session then closes the socket once, with 4403);
- an event already delivered live to a subscription is not delivered to it again (bounded memory).

Worker chatter that no client should see (``Subscription <id> created/updated successfully``) is removed
earlier, where worker replies are parsed (:mod:`relays.forwarding`).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, NamedTuple

from prometheus_client import Counter

# The texts workers send when they refuse the credentials the gateway forwarded for this client (the
# published worker runtime and the reference worker use the same ones).
AUTH_REJECTIONS = frozenset({"Invalid authentication", "Authentication required for read access"})

# What the published worker runtime answers (HTTP 200) for a relay it is registered for but has not loaded
# yet, e.g. for the seconds after a restart while it reopens its relays: the worker is up, this relay is not.
RELAY_NOT_LOADED_PREFIX = "Error: Relay not found: "

SUBSCRIPTION_FRAMES = frozenset({"EVENT", "EOSE", "CLOSED"})

worker_frames_dropped = Counter(
    "gateway_worker_frames_dropped_total",
    "Worker frames not sent to the client (unknown-subscription, duplicate)",
    ["reason"],
)


class WorkerFrame(NamedTuple):
    """One client-bound frame, read once: its type and, where it has them, subscription id, the id and
    ``created_at`` of its event (None when absent or not of the right type) and notice (a named tuple: one is
    built per frame sent, and a tuple is the cheapest immutable record to build and read)."""

    text: str
    kind: str
    subscription_id: str | None = None
    event_id: str | None = None
    created_at: int | None = None
    notice: str | None = None

    @property
    def is_auth_rejection(self) -> bool:
        return self.notice in AUTH_REJECTIONS

    @property
    def is_relay_not_loaded(self) -> bool:
        return self.notice is not None and self.notice.startswith(RELAY_NOT_LOADED_PREFIX)


# A client-bound frame as text, or already read by whoever built it (the gateway's own replica answers, so
# that the session does not parse back what it has just serialized).
Frame = str | WorkerFrame


def frame_text(frame: Frame) -> str:
    """The text a client receives for ``frame``."""
    return frame if isinstance(frame, str) else frame.text


def relay_not_loaded(frames: Sequence[Frame]) -> bool:
    """Whether a worker's whole answer is "this relay is not loaded here (yet)": nothing a client should
    see; the message goes to another peer or the replica, and the worker is asked again later."""
    # A text frame is tested for the prefix first: the common answer is not parsed here only to be parsed again.
    return bool(frames) and all(
        (isinstance(f, WorkerFrame) or RELAY_NOT_LOADED_PREFIX in f) and read_frame(f).is_relay_not_loaded
        for f in frames
    )


def read_frame(frame: Frame) -> WorkerFrame:
    """Classify one frame (a frame already read is returned as is); anything that is not a JSON array with a
    string type is kind ``""``."""
    if isinstance(frame, WorkerFrame):
        return frame
    try:
        data = json.loads(frame)
    except ValueError:
        return WorkerFrame(frame, "")
    return classify(frame, data)


def classify(text: str, data: Any) -> WorkerFrame:
    """The frame ``text`` read from its decoded form ``data``."""
    if not isinstance(data, list) or not data or not isinstance(data[0], str):
        return WorkerFrame(text, "")
    kind = data[0]
    if kind == "NOTICE":
        return WorkerFrame(text, kind, notice=data[1] if len(data) > 1 and isinstance(data[1], str) else None)
    if kind in SUBSCRIPTION_FRAMES:
        sub_id = data[1] if len(data) > 1 and isinstance(data[1], str) else None
        if kind != "EVENT" or len(data) < 3 or not isinstance(data[2], dict):
            return WorkerFrame(text, kind, sub_id)
        event_id, created_at = data[2].get("id"), data[2].get("created_at")
        return WorkerFrame(
            text,
            kind,
            sub_id,
            event_id if isinstance(event_id, str) else None,
            created_at if isinstance(created_at, int) and not isinstance(created_at, bool) else None,
        )
    return WorkerFrame(text, kind)


def read_decoded(data: list[Any]) -> WorkerFrame:
    """A frame a worker sent as decoded JSON (one line of a reply, one pushed frame), written out compactly for
    the client and read from its decoded form: never parsed again on its way to the socket."""
    return classify(json.dumps(data, ensure_ascii=False, separators=(",", ":")), data)


def accepted_event(frames: Sequence[Frame], event_id: str) -> bool:
    """Whether a worker's reply stored ``event_id`` now: ``OK true``, not a ``duplicate:`` of one it had."""
    for item in frames:
        text = frame_text(item)
        if not text.startswith('["OK"'):
            continue
        try:
            data = json.loads(text)
        except ValueError:
            continue
        if len(data) >= 3 and data[1] == event_id and data[2] is True:
            message = data[3] if len(data) > 3 and isinstance(data[3], str) else ""
            return not message.startswith("duplicate:")
    return False


class DeliveredIds:
    """Which events each subscription of one socket got live, to drop a second copy.

    Bounded: the oldest entries go first. A copy arriving after its entry was evicted is sent again, which
    only happens when a socket received more than ``size`` live events in the meantime. The ids are kept per
    subscription as well as in one age order, so forgetting a subscription (every CLOSE) costs its own
    entries, not a walk over the whole socket's (up to ``size``: 0.28 ms at 2,048, on every REQ/CLOSE pair).
    """

    def __init__(self, size: int = 2048) -> None:
        self.size = size
        self._order: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._by_subscription: dict[str, dict[str, None]] = {}

    def __len__(self) -> int:
        return len(self._order)

    def seen(self, subscription_id: str, event_id: str) -> bool:
        ids = self._by_subscription.get(subscription_id)
        return ids is not None and event_id in ids

    def add(self, subscription_id: str, event_id: str) -> None:
        ids = self._by_subscription.setdefault(subscription_id, {})
        key = (subscription_id, event_id)
        if event_id in ids:
            self._order.move_to_end(key)
            return
        ids[event_id] = None
        self._order[key] = None
        while len(self._order) > self.size:
            (oldest_subscription, oldest_event), _ = self._order.popitem(last=False)
            oldest = self._by_subscription[oldest_subscription]
            del oldest[oldest_event]
            if not oldest:
                del self._by_subscription[oldest_subscription]

    def forget(self, subscription_id: str) -> None:
        """The subscription was replaced or closed: a new REQ with the same id starts afresh."""
        for event_id in self._by_subscription.pop(subscription_id, ()):
            del self._order[(subscription_id, event_id)]
