"""When a session asks its worker for queued frames (``GET /get/relay/<id>/<connectionKey>``).

Real workers never push: a REQ's stored events and its EOSE wait in the worker until the gateway polls.
Polling every idle interval would make every REQ take that long, polling fast all the time would cost an
idle socket far more than today. So the schedule has two modes:

- **idle** (nothing awaited): one poll per idle interval, counted from the end of the previous poll —
  exactly what a socket cost before;
- **awaiting** (a forwarded REQ whose EOSE has not arrived yet): poll at once, then after gaps that grow
  with the time already waited (``gap = max(min_gap, waited * growth)``), so the EOSE is seen at most
  ``growth`` times its own delay (plus ``min_gap``) after the worker has it. Awaiting ends when every awaited
  EOSE arrived, when the gap has grown to the idle interval, or after ``bound`` seconds — a worker that
  never answers costs a bounded number of polls per REQ.

An EVENT asks for one immediate poll (:meth:`poll_now`) and does not start the awaiting mode.

While the worker serving the socket pushes (:attr:`PollSchedule.pushing`, see ``relays.session_poll``) the idle
interval is ``keepalive`` instead, and a push (:meth:`pushed`) ends the awaiting mode: the frames come by push.

Pure: the caller passes the clock; tests drive it without a loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PollSchedule:
    idle: float
    min_gap: float = 0.002
    growth: float = 0.25
    bound: float = 5.0
    keepalive: float = 240.0
    pushing: bool = False
    _awaited: set[str] = field(default_factory=set)
    _since: float | None = None
    _now_requested: bool = False
    _last_poll: float | None = None

    @property
    def awaiting(self) -> frozenset[str]:
        return frozenset(self._awaited)

    def await_eose(self, subscription_id: str, now: float) -> None:
        """A REQ was forwarded and its EOSE is not here yet: poll at once and then fast."""
        if not self._awaited:
            self._since = now
        self._awaited.add(subscription_id)
        self._now_requested = True

    def poll_now(self) -> None:
        """One poll as soon as possible (after an EVENT, whose live copies the worker may queue)."""
        self._now_requested = True

    def settled(self, subscription_id: str) -> None:
        """The subscription's EOSE arrived, or it was closed: stop waiting for it."""
        self._awaited.discard(subscription_id)
        if not self._awaited:
            self._since = None

    def pushed(self) -> None:
        """A push arrived: the worker delivers this connection's frames (EOSEs too) without being polled."""
        self._awaited.clear()
        self._since = None

    def polled(self, now: float) -> None:
        """A poll finished (with or without frames)."""
        self._last_poll = now
        self._now_requested = False

    def next_delay(self, now: float) -> float:
        """Seconds until the next poll is due (0: now)."""
        if self._now_requested:
            return 0.0
        last = now if self._last_poll is None else self._last_poll
        if self._awaited and self._since is not None:
            waited = now - self._since
            gap = max(self.min_gap, waited * self.growth)
            if waited < self.bound and gap < self.idle:
                return max(0.0, last + gap - now)
            # The worker is slow to answer this REQ (or never will): back to the idle rhythm.
            self._awaited.clear()
            self._since = None
        return max(0.0, last + (self.keepalive if self.pushing else self.idle) - now)
