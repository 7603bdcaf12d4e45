"""A worker that goes silent without closing its connection (SIGKILL: its UDP transport sends no goodbye, so
the bridge's connection to it stays open) is found out by the first request it leaves unanswered: the bridge
sends it a health check after ``HYPERTUNA_BRIDGE_OVERDUE_PROBE_MS``, disconnects it when that goes unanswered,
and the open client socket's REQ is answered from the relay's replica. The periodic health sweep is off and
the gateway's peer request timeout is 30 s here, so nothing else could answer within the bound."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time

import pytest
import websockets
from coincurve import PrivateKey

from hypertuna.nostr import sign_event
from tests.e2e.harness import Stack, node_available
from tests.e2e.test_escrow import _sync_until_ready

# Overdue probe (1 s) + its timeout (2 s) + the replica answer, with room for a loaded CI machine; the other
# ways to notice (sweep off, 30 s request timeout) are far outside it.
ANSWER_BOUND_S = 12.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    if not node_available():
        pytest.fail("end-to-end tests need Node 20 and `npm ci` in bridge/")
    env = {"HYPERTUNA_BRIDGE_HEALTH_INTERVAL_MS": "0", "HYPERTUNA_PEER_REQUEST_TIMEOUT": "30"}
    stack = Stack(tmp_path_factory.mktemp("silent-worker"), env=env).start()
    try:
        yield stack
    finally:
        stack.stop()


async def _answer(ws, sub: str, event_id: str, timeout: float) -> list[str] | None:
    """The ids of one REQ's answer, or None when it did not end (EOSE) within ``timeout``."""
    await ws.send(json.dumps(["REQ", sub, {"ids": [event_id]}]))
    ids: list[str] = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            frame = json.loads(await asyncio.wait_for(ws.recv(), left))
        except TimeoutError:
            break
        if frame[:2] == ["EVENT", sub]:
            ids.append(frame[2]["id"])
        elif frame[:2] in (["EOSE", sub], ["CLOSED", sub]):
            await ws.send(json.dumps(["CLOSE", sub]))
            return ids
    return None


def test_a_silent_worker_is_found_out_by_its_first_overdue_request(stack):
    worker = stack.start_worker("silent", "--blind-peer", "gateway")
    relay_key = worker.markers["HYPERTUNA_WORKER_READY"]["relayKey"]
    url = f"{stack.ws_url}/{relay_key}"
    event = sign_event(PrivateKey().secret, kind=1, content="kept by the replica").to_dict()

    async def publish() -> None:
        async with websockets.connect(url) as ws:
            await ws.send(json.dumps(["EVENT", event]))
            assert json.loads(await asyncio.wait_for(ws.recv(), 30)) == ["OK", event["id"], True, ""]

    asyncio.run(publish())
    _sync_until_ready(stack, relay_key)

    async def scenario() -> float:
        async with websockets.connect(url) as ws:
            assert await _answer(ws, "warm", event["id"], 30) == [event["id"]]  # from the worker
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.process.pid, signal.SIGKILL)
            started = time.monotonic()
            attempt = 0
            while time.monotonic() - started < ANSWER_BOUND_S:
                attempt += 1
                left = ANSWER_BOUND_S - (time.monotonic() - started)
                if await _answer(ws, f"after-{attempt}", event["id"], left) == [event["id"]]:
                    return time.monotonic() - started
                await asyncio.sleep(0.2)
            raise AssertionError(f"no answer within {ANSWER_BOUND_S} s of the kill:\n{stack.log_tail()}")

    took = asyncio.run(scenario())
    assert took < ANSWER_BOUND_S
    # Found out by the overdue probe, not by anything else.
    bridge = next(proc for proc in stack.procs if proc.name == "bridge")
    assert "did not answer a health check" in bridge.log_path.read_text()
