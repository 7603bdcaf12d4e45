"""What a :class:`~relays.session.GatewaySession` is configured with, talks to and reports: its settings,
the health and fallback interfaces it calls, its counters and the close codes it uses."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from hypertuna.nostr import CloseMessage, EventMessage, ReqMessage
from relays.frames_filter import Frame

CLOSE_NO_PEERS = 1013
CLOSE_GATEWAY_ERROR = 1011
CLOSE_AUTH_REJECTED = 4403


@dataclass(frozen=True)
class SessionConfig:
    request_timeout: float = 10.0
    poll_interval: float = 1.0
    poll_timeout: float = 5.0
    max_queued_frames: int = 64
    max_subscriptions: int | None = None  # open REQs per socket; one more is answered CLOSED
    # Consecutive poll failures on one peer before the session moves on to the next.
    poll_failures_before_failover: int = 2
    # Fast polling while a REQ's EOSE is awaited (see PollSchedule).
    fast_poll_min_gap: float = 0.002
    fast_poll_growth: float = 0.25
    fast_poll_bound: float = 5.0
    # While the worker pushes, it is polled only this often: the worker forgets connections it has not heard
    # of for 10 minutes (its subscriptions with them).
    push_keepalive: float = 240.0


class HealthReporter(Protocol):
    async def peer_failed(self, peer_key: str, reason: str) -> None: ...

    async def peer_ok(self, peer_key: str, latency_ms: float) -> None: ...


class Fallback(Protocol):
    """Serves a frame when no worker can (read-only replica, leased writes). Returns client frames, or
    None when it cannot serve this frame either."""

    async def handle(self, message: EventMessage | ReqMessage | CloseMessage, raw: str) -> Sequence[Frame] | None: ...

    async def poll(self) -> Sequence[Frame]: ...


@dataclass
class SessionStats:
    frames_in: int = 0
    frames_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    forwarded: int = 0
    failovers: int = 0
    polls: int = 0
    started: float = field(default_factory=time.monotonic)
