"""Workers that only answer polls, through the real gateway processes: the reference worker started with
``--no-ws-push`` behaves like the published worker runtime (no ws-frame push, REQ results by poll only).

The gateway's idle poll is set to 30 s here: whatever reaches a client within the (generous) waits below
came through the fast polling after a REQ or the gateway's live fan-out, never through an idle poll. The
waits bound only how long a broken gateway takes to fail, not how fast a working one must be.
"""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets
from coincurve import PrivateKey

from hypertuna.nostr import sign_event
from tests.e2e.harness import Stack, node_available

IDLE_POLL_MS = 30_000
WAIT = 15.0  # half the idle poll: a frame seen within it did not wait for an idle poll


@pytest.fixture(scope="module")
def poll_stack(tmp_path_factory):
    if not node_available():
        pytest.fail("end-to-end tests need Node 20 and `npm ci` in bridge/ (make test installs both)")
    stack = Stack(
        tmp_path_factory.mktemp("polling"),
        env={"HYPERTUNA_POLL_INTERVAL_MS": str(IDLE_POLL_MS), "HYPERTUNA_MAX_FRAME_BYTES": "131072"},
    ).start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def poll_only_relay(poll_stack):
    worker = poll_stack.start_worker("pollonly", "--no-ws-push")
    return f"{poll_stack.ws_url}/{worker.markers['HYPERTUNA_WORKER_READY']['gatewayPath']}"


def _event(key: PrivateKey, content: str) -> dict:
    return sign_event(key.secret, kind=1, content=content, tags=[["t", "polling"]]).to_dict()


async def _recv(ws, timeout: float = WAIT):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def _until(ws, predicate, timeout: float = WAIT):
    seen = []
    while True:
        frame = await _recv(ws, timeout)
        seen.append(frame)
        if predicate(frame):
            return seen


def test_req_gets_stored_events_and_eose_without_an_idle_poll(poll_only_relay):
    async def scenario():
        author = PrivateKey()
        async with websockets.connect(poll_only_relay) as ws:
            stored = _event(author, "stored before the REQ")
            await ws.send(json.dumps(["EVENT", stored]))
            assert await _recv(ws) == ["OK", stored["id"], True, ""]
            for n in range(3):  # every REQ, not only the first of the socket
                await ws.send(json.dumps(["REQ", f"s{n}", {"authors": [stored["pubkey"]]}]))
                seen = await _until(ws, lambda f, n=n: f == ["EOSE", f"s{n}"])
                assert [f[0] for f in seen] == ["EVENT", "EOSE"], seen
                assert seen[0][2]["id"] == stored["id"]

    asyncio.run(scenario())


def test_event_published_through_the_gateway_reaches_another_socket_at_once(poll_only_relay):
    async def scenario():
        author = PrivateKey()
        async with websockets.connect(poll_only_relay) as reader, websockets.connect(poll_only_relay) as writer:
            pubkey = _event(author, "only for its pubkey")["pubkey"]
            await reader.send(json.dumps(["REQ", "live", {"authors": [pubkey]}]))
            assert await _until(reader, lambda f: f[0] == "EOSE") == [["EOSE", "live"]]
            for n in range(3):
                live = _event(author, f"live {n}")
                await writer.send(json.dumps(["EVENT", live]))
                assert await _recv(writer) == ["OK", live["id"], True, ""]
                frame = await _recv(reader)
                assert frame[:2] == ["EVENT", "live"] and frame[2]["id"] == live["id"]
        # The worker's own copies (queued for the reader's polls) are never delivered a second time:
        # checked in the unit tests, as the next idle poll is 30 s away here.

    asyncio.run(scenario())


def test_a_100_kb_event_is_accepted_and_read_back(poll_only_relay):
    async def scenario():
        author = PrivateKey()
        big = _event(author, "z" * 100_000)
        async with websockets.connect(poll_only_relay, max_size=None) as ws:
            await ws.send(json.dumps(["EVENT", big]))
            assert await _recv(ws) == ["OK", big["id"], True, ""]
            await ws.send(json.dumps(["REQ", "big", {"ids": [big["id"]]}]))
            seen = await _until(ws, lambda f: f[0] == "EOSE")
            assert [f[0] for f in seen] == ["EVENT", "EOSE"] and seen[0][2] == big

    asyncio.run(scenario())
