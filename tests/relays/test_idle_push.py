"""An idle socket whose worker pushes costs no polls; a worker that never pushes is polled as before."""

from __future__ import annotations

import asyncio
import json

from relays.runtime import Runtime
from tests.relays.fakes import FakeWorker
from tests.relays.test_session import FAST, Client, event, make_session, until

INTERVALS = 30  # idle intervals (FAST polls every 10 ms) watched for polls


def polls(worker: FakeWorker) -> int:
    return sum(1 for method, _ in worker.requests if method == "GET")


async def subscribed(workers: dict[str, FakeWorker], **kwargs):
    client = Client()
    session = make_session(workers, client, **kwargs)
    session.start()
    session.enqueue(json.dumps(["REQ", "s", {"kinds": [1]}]))
    await client.wait_for(lambda frames: ["EOSE", "s"] in frames)
    return client, session


async def idle_polls(worker: FakeWorker) -> int:
    before = polls(worker)
    await asyncio.sleep(FAST.poll_interval * INTERVALS)
    return polls(worker) - before


async def test_no_idle_poll_once_the_peer_pushed_for_the_connection():
    w1 = FakeWorker()
    client, session = await subscribed({"w1": w1}, peers=["w1"])
    try:
        live = event("pushed", 1_700_000_100)
        await session.deliver([json.dumps(["EVENT", "s", live])], peer="w1")
        assert ["EVENT", "s", live] in client.frames
        await asyncio.sleep(FAST.poll_interval * 2)  # a poll already under way may finish
        assert await idle_polls(w1) == 0
        assert session.pushing()
    finally:
        await session.stop()


async def test_no_idle_poll_for_a_peer_that_advertises_push():
    w1 = FakeWorker()
    client, session = await subscribed({"w1": w1}, peers=["w1"])
    try:
        session.pushes = lambda peer: peer == "w1"
        session.enqueue(json.dumps(["REQ", "t", {"kinds": [2]}]))
        await until(lambda: session.stats.forwarded == 2)
        await asyncio.sleep(FAST.poll_interval * 2)
        assert await idle_polls(w1) == 0
        # The REQ to a pushing peer started no fast polls: its EOSE comes by push.
        assert session._schedule.awaiting == frozenset()
    finally:
        await session.stop()


async def test_a_poll_only_peer_is_still_polled_every_interval():
    w1 = FakeWorker()
    client, session = await subscribed({"w1": w1}, peers=["w1"])
    try:
        session.pushes = lambda peer: False
        # A push without a known sender (or from another peer) proves nothing about the current peer.
        await session.deliver([json.dumps(["NOTICE", "x"])], peer="w2")
        assert not session.pushing()
        assert await idle_polls(w1) >= INTERVALS // 3
    finally:
        await session.stop()


async def test_failover_to_a_peer_that_never_pushed_resumes_polling():
    w1, w2 = FakeWorker(), FakeWorker()
    client, session = await subscribed({"w1": w1, "w2": w2}, peers=["w1", "w2"])
    try:
        await session.deliver([json.dumps(["NOTICE", "hello"])], peer="w1")
        await asyncio.sleep(FAST.poll_interval * 2)
        assert await idle_polls(w2) == 0 and polls(w1) > 0
        w1.down = True
        session.peer_changed("w1", up=False)
        await until(lambda: session.current_peer == "w2")
        assert not session.pushing()
        assert await idle_polls(w2) >= INTERVALS // 3
    finally:
        await session.stop()


async def test_runtime_learns_push_from_the_handshake_and_names_the_pushing_peer():
    rt = Runtime()
    push = {"capabilities": ["http", "websocket", "wsframe-push"]}
    rt.peer_changed("peer.connected", {"peerKey": "w1", "handshake": push})
    rt.peer_changed("peer.connected", {"peerKey": "w2", "handshake": {"capabilities": ["http", "websocket"]}})
    assert rt.pushes("w1") and not rt.pushes("w2")
    rt.peer_changed("peer.disconnected", {"peerKey": "w1", "reason": "connection-reset"})
    assert "w1" not in rt.push_peers

    w1 = FakeWorker()
    client, session = await subscribed({"w1": w1}, peers=["w1"])
    try:
        rt.add(session)
        live = event("pushed", 1_700_000_200)
        frame = {"type": "nostr-frames", "connectionKey": session.connection_key, "frames": [["EVENT", "s", live]]}
        rt.deliver({"peerKey": "w1", "frame": frame})
        await client.wait_for(lambda frames: ["EVENT", "s", live] in frames)
        assert session.pushing()
    finally:
        rt.remove(session)
        await session.stop()
