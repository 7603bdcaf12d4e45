"""One socket's open subscriptions and what each has delivered.

The session opens and closes subscriptions as the client asks, and passes every client-bound frame
through :meth:`Subscriptions.admit`, which decides whether the client may see it:

- EVENT / EOSE / CLOSED of a subscription the socket has not opened (or has closed) are dropped — a worker
  may re-attach a returning client's earlier subscriptions to this socket;
- a second EOSE, and an event a subscription already delivered (the gateway's live fan-out and the
  worker's copy; the overlap after a subscription resumed on another peer) are dropped;
- everything admitted is remembered: the newest ``created_at`` per subscription (to resume it elsewhere
  with ``since``), its EOSE, and the delivered ids (bounded, :class:`DeliveredIds`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field

from hypertuna.nostr import Event, ReqMessage, closed_frame, matches_any
from relays.frames_filter import SUBSCRIPTION_FRAMES, DeliveredIds, WorkerFrame


@dataclass
class Subscription:
    raw: str
    message: ReqMessage
    newest_seen: int | None = None
    # Ids delivered at exactly ``newest_seen``: a resumed subscription asks for ``since=newest_seen``
    # (inclusive, so nothing at that second is lost) and these are the ones not to send twice.
    newest_ids: set[str] = field(default_factory=set)
    # Set when the subscription resumes on another peer: (second, ids) the client already has.
    resumed_at: int | None = None
    resumed_ids: frozenset[str] = frozenset()
    eose_sent: bool = False

    def resume_request(self) -> str:
        """The REQ that re-opens this subscription on another peer, after what the client already has."""
        if self.newest_seen is None:
            return self.raw
        self.resumed_at, self.resumed_ids = self.newest_seen, frozenset(self.newest_ids)
        filters = [{**f.to_dict(), "since": max(f.since or 0, self.newest_seen)} for f in self.message.filters]
        return json.dumps(["REQ", self.message.subscription_id, *filters], ensure_ascii=False, separators=(",", ":"))


class Subscriptions:
    def __init__(self, delivered_size: int = 2048, *, max_open: int | None = None) -> None:
        self._open: dict[str, Subscription] = {}
        self._delivered = DeliveredIds(delivered_size)
        self.max_open = max_open

    def __len__(self) -> int:
        return len(self._open)

    def get(self, subscription_id: str) -> Subscription | None:
        return self._open.get(subscription_id)

    def items(self) -> Iterator[tuple[str, Subscription]]:
        return iter(list(self._open.items()))

    def open(self, message: ReqMessage, raw: str) -> str | None:
        """A REQ: a subscription with an open id is replaced and starts afresh. Returns the CLOSED frame to answer
        instead when it would be one more than ``max_open`` (nothing is opened or replaced then)."""
        sub_id = message.subscription_id
        if self.max_open is not None and sub_id not in self._open and len(self._open) >= self.max_open:
            reason = f"error: too many open subscriptions (at most {self.max_open}); close one first"
            return closed_frame(sub_id, reason)
        self.close(sub_id)
        self._open[sub_id] = Subscription(raw=raw, message=message)
        return None

    def close(self, subscription_id: str) -> None:
        self._open.pop(subscription_id, None)
        self._delivered.forget(subscription_id)

    def matching(self, event: Event) -> list[str]:
        """Subscriptions a live event belongs to: open, past their EOSE, and matched by a filter."""
        return [
            sub_id for sub_id, sub in self._open.items() if sub.eose_sent and matches_any(sub.message.filters, event)
        ]

    def admit(self, frame: WorkerFrame) -> str | None:
        """None if the client may see ``frame`` (then it is remembered), else why it is dropped."""
        if frame.kind not in SUBSCRIPTION_FRAMES:
            return None
        sub_id = frame.subscription_id or ""
        sub = self._open.get(sub_id)
        if sub is None:
            return "unknown-subscription"
        if frame.kind == "EOSE":
            if sub.eose_sent:
                return "duplicate"
            sub.eose_sent = True
        elif frame.kind == "CLOSED":
            self.close(sub_id)
        else:
            event_id, created = frame.event_id, frame.created_at
            if event_id is not None:
                if self._delivered.seen(sub_id, event_id) or (
                    created == sub.resumed_at and event_id in sub.resumed_ids
                ):
                    return "duplicate"
                self._delivered.add(sub_id, event_id)
            if created is not None and (sub.newest_seen is None or created > sub.newest_seen):
                sub.newest_seen = created
                sub.newest_ids = {event_id} if event_id is not None else set()
            elif created is not None and created == sub.newest_seen and event_id is not None:
                sub.newest_ids.add(event_id)
        return None
