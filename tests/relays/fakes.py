"""An in-memory stand-in for worker peers, speaking the worker protocol through ``PeerTransport``."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

from hypertuna.nostr import Event, Filter
from relays.forwarding import PeerError, PeerResponse, PeerStream


@dataclass
class FakeWorker:
    events: list[dict] = field(default_factory=list)
    subs: dict[str, dict[str, list[Filter]]] = field(default_factory=dict)
    delivered: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    eosed: set[tuple[str, str]] = field(default_factory=set)
    down: bool = False
    status: int = 200
    requests: list[tuple[str, str]] = field(default_factory=list)

    def handle(self, method: str, path: str, body: bytes | None) -> PeerResponse:
        self.requests.append((method, path))
        if self.status != 200:
            return PeerResponse(self.status, {}, b'[["NOTICE","refused"]]')
        if method == "POST" and path.startswith("/post/relay/"):
            payload = json.loads(body)
            frame = json.loads(payload["message"])
            conn = payload["connectionKey"]
            if frame[0] == "EVENT":
                self.events.append(frame[1])
                return PeerResponse(200, {}, json.dumps(["OK", frame[1]["id"], True, ""]).encode())
            if frame[0] == "REQ":
                self.subs.setdefault(conn, {})[frame[1]] = [Filter.from_json(f) for f in frame[2:]]
                self.eosed.discard((conn, frame[1]))
                return PeerResponse(
                    200, {}, json.dumps(["NOTICE", f"Subscription {frame[1]} created successfully"]).encode()
                )
            if frame[0] == "CLOSE":
                self.subs.get(conn, {}).pop(frame[1], None)
                return PeerResponse(200, {}, b'["NOTICE","Subscription closed"]')
            return PeerResponse(200, {}, json.dumps(["NOTICE", "unknown"]).encode())
        if method == "GET" and path.startswith("/get/relay/"):
            conn = path.rsplit("/", 1)[1]
            frames = []
            for sub_id, filters in self.subs.get(conn, {}).items():
                seen = self.delivered.setdefault((conn, sub_id), set())
                for ev in sorted(self.events, key=lambda e: -e["created_at"]):
                    if ev["id"] not in seen and any(f.matches(Event.from_json(ev)) for f in filters):
                        seen.add(ev["id"])
                        frames.append(["EVENT", sub_id, ev])
                if (conn, sub_id) not in self.eosed:
                    self.eosed.add((conn, sub_id))
                    frames.append(["EOSE", sub_id])
            return PeerResponse(200, {}, json.dumps(frames).encode())
        return PeerResponse(404, {}, b"{}")


class FakeTransport:
    def __init__(self, workers: dict[str, FakeWorker]) -> None:
        self.workers = workers

    async def request(self, peer_key, method, path, *, headers, body, timeout):
        await asyncio.sleep(0)
        worker = self.workers.get(peer_key)
        if worker is None or worker.down:
            raise PeerError("Connection timeout", unreachable=True)
        return worker.handle(method, path, body)

    async def stream(self, peer_key, method, path, *, headers, body, timeout):
        response = await self.request(peer_key, method, path, headers=headers, body=body, timeout=timeout)

        async def chunks():
            yield response.body

        return PeerStream(response.status, response.headers, chunks())


class RecordingHealth:
    def __init__(self) -> None:
        self.failed: list[str] = []
        self.ok: list[str] = []

    async def peer_failed(self, peer_key, reason):
        self.failed.append(peer_key)

    async def peer_ok(self, peer_key, latency_ms):
        self.ok.append(peer_key)
