"""A worker's connection closing, as this node's bridge reports it, reaches the relay's sockets at once: requests in flight to it fail, the
session answers from another peer or the replica without waiting out a timeout, and a socket served by
the replica returns to the worker when it comes back."""

from __future__ import annotations

import asyncio
import json

import pytest

from relays.forwarding import PeerError, PeerResponse
from relays.inflight import InFlight
from relays.runtime import Runtime
from relays.session import SessionConfig
from tests.relays.fakes import FakeWorker
from tests.relays.test_session import Client, event, make_session, until

# Requests hang for the whole test unless aborted: a dead peer the bridge keeps redialling.
PATIENT = SessionConfig(poll_interval=0.05, request_timeout=60, poll_timeout=60, max_queued_frames=8)


class HangingWorker(FakeWorker):
    """Accepts requests and never answers them (the bridge redialling a peer that went away)."""

    hanging: bool = False


class HangingTransport:
    def __init__(self, workers):
        self.workers = workers

    async def request(self, peer_key, method, path, *, headers, body, timeout):
        worker = self.workers[peer_key]
        if worker.hanging:
            await asyncio.sleep(3600)
        await asyncio.sleep(0)
        return worker.handle(method, path, body)


class ReplicaStub:
    """The replica: answers every REQ with one stored event and its EOSE."""

    def __init__(self, stored: dict) -> None:
        self.stored = stored
        self.reqs: list[str] = []

    async def handle(self, message, raw):
        frame = json.loads(raw)
        if frame[0] == "REQ":
            self.reqs.append(frame[1])
            return [json.dumps(["EVENT", frame[1], self.stored]), json.dumps(["EOSE", frame[1]])]
        return [json.dumps(["OK", frame[1]["id"], False, "blocked: read-only"])]

    async def poll(self):
        return []


def hanging_session(worker, client, fallback):
    session = make_session({"p1": worker}, client, config=PATIENT, fallback=fallback)
    session.transport = HangingTransport({"p1": worker})
    return session


async def on_the_replica(worker, stored):
    """A started session whose worker went away, with subscription ``s`` answered by the replica."""
    client, replica = Client(), ReplicaStub(stored)
    session = hanging_session(worker, client, replica)
    session.start()
    session.peer_changed("p1", up=False)
    session.enqueue(json.dumps(["REQ", "s", {"kinds": [1]}]))
    await client.wait_for(lambda f: ["EOSE", "s"] in f)
    return session, client, replica


async def test_a_request_in_flight_to_a_peer_reported_gone_is_answered_by_the_replica_at_once():
    stored = event("kept by the replica")
    worker, client, replica = HangingWorker(), Client(), ReplicaStub(stored)
    session = hanging_session(worker, client, replica)
    session.start()
    worker.hanging = True
    session.enqueue(json.dumps(["REQ", "s", {"kinds": [1]}]))
    await until(lambda: worker.requests or True)
    await asyncio.sleep(0.05)
    assert client.frames == []  # the request hangs: nothing would arrive before the 60 s timeout
    session.peer_changed("p1", up=False)
    await client.wait_for(lambda f: ["EOSE", "s"] in f, timeout=2)
    assert client.frames == [["EVENT", "s", stored], ["EOSE", "s"]]
    await session.stop()


async def test_a_socket_on_the_replica_returns_to_the_worker_and_reopens_its_subscriptions():
    stored = event("stored", created_at=1_700_000_000)
    worker = HangingWorker(events=[stored])
    session, client, replica = await on_the_replica(worker, stored)
    assert replica.reqs == ["s"] and not worker.subs
    session.peer_changed("p1", up=True)
    await until(lambda: any("s" in subs for subs in worker.subs.values()))
    live = event("live from the worker", created_at=1_700_000_100)
    worker.events.append(live)
    await client.wait_for(lambda f: ["EVENT", "s", live] in f)
    # What the replica already delivered is not sent again, and there is still one EOSE.
    assert [f for f in client.frames if f[0] == "EVENT" and f[2]["id"] == stored["id"]] == [["EVENT", "s", stored]]
    assert client.frames.count(["EOSE", "s"]) == 1
    await session.stop()


async def test_changes_of_peers_the_session_does_not_use_are_ignored():
    worker, client, replica = HangingWorker(), Client(), ReplicaStub(event("x"))
    session = hanging_session(worker, client, replica)
    session.start()
    session.peer_changed("someone-else", up=False)
    session.enqueue(json.dumps(["EVENT", event("hello")]))
    await client.wait_for(lambda f: f and f[0][0] == "OK")
    assert client.frames[0][2] is True
    await session.stop()


async def test_inflight_abort_fails_only_that_peers_requests_and_outer_cancellation_still_cancels():
    inflight = InFlight()
    a = asyncio.ensure_future(inflight.run("a", asyncio.sleep(3600)))
    b = asyncio.ensure_future(inflight.run("b", asyncio.sleep(3600)))
    await asyncio.sleep(0)
    assert inflight.abort("a") == 1
    with pytest.raises(PeerError) as gone:
        await a
    assert gone.value.unreachable
    assert not b.done()
    b.cancel()
    with pytest.raises(asyncio.CancelledError):
        await b
    assert inflight.abort("a") == 0 and inflight.abort("b") == 0


class RecordingSession:
    def __init__(self) -> None:
        self.changes: list[tuple[str, bool]] = []

    def peer_changed(self, peer: str, *, up: bool) -> None:
        self.changes.append((peer, up))


def test_the_runtime_tells_every_local_session_what_its_bridge_saw_except_benign_closes():
    rt = Runtime()
    a, b = RecordingSession(), RecordingSession()
    rt.sessions = {"a": a, "b": b}
    rt.peer_changed("peer.disconnected", {"peerKey": "p1", "reason": "stream-close"})
    rt.peer_changed("peer.disconnected", {"peerKey": "p1", "reason": "duplicate-replacement"})
    rt.peer_changed("peer.disconnected", {"peerKey": "p1", "reason": "manual-destroy"})
    rt.peer_changed("peer.connected", {"peerKey": "p1"})
    rt.peer_changed("peer.connected", {})
    assert a.changes == b.changes == [("p1", False), ("p1", True)]


class ReopeningWorker(HangingWorker):
    """A restarted worker: connected, but answering ``Relay not found`` until its relay is loaded."""

    loading: bool = False

    def handle(self, method, path, body):
        if self.loading:
            self.requests.append((method, path))
            notice = json.dumps([["NOTICE", f"Error: Relay not found: {'a' * 64}"]]).encode()
            return PeerResponse(200 if method == "POST" else 404, {}, notice)
        return super().handle(method, path, body)


async def test_a_worker_still_reopening_its_relay_is_not_shown_and_is_asked_again_until_it_serves():
    stored = event("stored", created_at=1_700_000_000)
    worker = ReopeningWorker(events=[stored])
    session, client, _ = await on_the_replica(worker, stored)
    worker.loading = True
    session.peer_changed("p1", up=True)
    await until(lambda: len(worker.requests) >= 2)  # asked, and asked again
    attempt = event("while it reopens")
    session.enqueue(json.dumps(["EVENT", attempt]))
    await client.wait_for(lambda f: any(x[0] == "OK" for x in f))
    assert ["OK", attempt["id"], False, "blocked: read-only"] in client.frames
    assert not [f for f in client.frames if f[0] == "NOTICE"], "the worker's not-found answer reached the client"
    worker.loading = False
    await until(lambda: any("s" in subs for subs in worker.subs.values()))
    live = event("served again", created_at=1_700_000_100)
    worker.events.append(live)
    await client.wait_for(lambda f: ["EVENT", "s", live] in f)
    await session.stop()


async def test_a_socket_opened_while_every_worker_was_away_finds_the_worker_once_the_registry_lists_it():
    stored = event("stored", created_at=1_700_000_000)
    worker, client, replica = HangingWorker(events=[stored]), Client(), ReplicaStub(stored)
    listed: list[str] = []

    async def registry():
        return list(listed)

    session = make_session({"p1": worker}, client, peers=[], config=PATIENT, fallback=replica, refresh_peers=registry)
    session.transport = HangingTransport({"p1": worker})
    session.start()
    session.enqueue(json.dumps(["REQ", "s", {"kinds": [1]}]))
    await client.wait_for(lambda f: ["EOSE", "s"] in f)
    assert replica.reqs == ["s"]
    listed.append("p1")  # the worker is back and healthy in the registry
    await until(lambda: any("s" in subs for subs in worker.subs.values()))
    live = event("live", created_at=1_700_000_100)
    worker.events.append(live)
    await client.wait_for(lambda f: ["EVENT", "s", live] in f)
    await session.stop()


async def test_on_the_replica_count_and_unknown_verbs_get_an_answer_and_the_socket_stays():
    worker = HangingWorker()
    session, client, _ = await on_the_replica(worker, event("stored"))
    session.enqueue(json.dumps(["COUNT", "c1", {"kinds": [1]}]))
    session.enqueue(json.dumps(["SOMETHING" + "X" * 100_000, 1]))
    await client.wait_for(lambda f: len([x for x in f if x[0] in ("CLOSED", "NOTICE")]) >= 2)
    closed = [f for f in client.frames if f[0] == "CLOSED"]
    notices = [f for f in client.frames if f[0] == "NOTICE"]
    assert closed == [["CLOSED", "c1", "unsupported: COUNT is not served while the relay's workers are offline"]]
    assert notices[0][1].startswith("unsupported: ") and len(notices[0][1]) < 300
    assert client.closed is None
    await session.stop()
