"""A relay stays readable after its worker is gone: the worker mirrors to the gateway's blind peer, the
replica sync materializes its view in the database, and clients are answered from it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import pytest
import websockets
from coincurve import PrivateKey

from hypertuna.nostr import Event, Filter, apply_query, sign_event
from tests.e2e.harness import ROOT

OPERATOR = ("e2e-ops", "operator-secret-for-e2e")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from tests.e2e.harness import Stack, node_available

    if not node_available():
        pytest.fail("end-to-end tests need Node 20 and `npm ci` in bridge/")
    stack = Stack(
        tmp_path_factory.mktemp("replica-stack"), env={"HYPERTUNA_OPERATOR_KEYS": f"{OPERATOR[0]}:{OPERATOR[1]}"}
    ).start()
    try:
        yield stack
    finally:
        stack.stop()


def operator_get(stack, path: str) -> dict:
    return stack.operator_get(path, OPERATOR)


def sync(stack, relay_key: str) -> bool:
    """One ``replicas_sync`` run; False while mirroring is still starting (no replica row yet, or the blind
    peer has not learned the view core), which production retries on the beat."""
    result = subprocess.run(
        [sys.executable, "manage.py", "replicas_sync", "--relay", relay_key],
        cwd=ROOT,
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    transient = ("no replica for", "replica-not-found", "core-unavailable")
    if result.returncode != 0 and any(t in result.stderr for t in transient):
        return False
    assert result.returncode == 0, result.stderr[-2000:]
    return True


async def _recv(ws, timeout=20.0):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


def test_replica_keeps_every_event_after_the_worker_stops(stack):
    worker = stack.start_worker("mirrored", "--blind-peer", "gateway")
    ready = worker.markers["HYPERTUNA_WORKER_READY"]
    relay_key, url = ready["relayKey"], f"{stack.ws_url}/{ready['relayKey']}"
    keys = [PrivateKey() for _ in range(3)]
    published: list[Event] = []
    for i in range(30):
        published.append(
            sign_event(
                keys[i % 3].secret,
                kind=1 if i % 5 else 7,
                content=f"event {i}",
                tags=[["t", f"topic{i % 4}"]],
                created_at=1_700_000_000 + i,
            )
        )
    published.append(sign_event(keys[0].secret, kind=0, content='{"name":"a"}', tags=[], created_at=1_700_000_100))
    published.append(sign_event(keys[0].secret, kind=0, content='{"name":"b"}', tags=[], created_at=1_700_000_200))

    async def publish():
        async with websockets.connect(url) as ws:
            for event in published:
                await ws.send(json.dumps(["EVENT", event.to_dict()]))
                reply = await _recv(ws)
                assert reply[:3] == ["OK", event.id, True], reply

    asyncio.run(publish())

    # The worker mirrors its cores and the sync materializes the view; wait until everything is there.
    deadline = time.monotonic() + 90
    while True:
        if not sync(stack, relay_key):
            assert time.monotonic() < deadline, f"no mirror metadata arrived\n{stack.log_tail()}"
            time.sleep(1)
            continue
        replicas = {r["relayKey"]: r for r in operator_get(stack, "/api/blind-peer/replicas")["replicas"]}
        row = replicas.get(relay_key)
        if row and row["state"] == "ready" and row["lagEntries"] == 0 and row["materializedLength"] > 0:
            break
        assert time.monotonic() < deadline, f"replica never caught up: {row}\n{stack.log_tail()}"
        time.sleep(1)

    worker.stop()

    filters_cases = [
        [{}],
        [{"kinds": [1], "limit": 5}],
        [{"authors": [keys[1].public_key_xonly.format().hex()]}],
        [{"#t": ["topic2"]}, {"kinds": [0]}],
        [{"until": 1_700_000_010, "limit": 3}],
    ]
    expected_visible = [e for e in published if not (e.kind == 0 and e.content == '{"name":"a"}')]

    async def read_back():
        async with websockets.connect(url) as ws:
            for n, raw_filters in enumerate(filters_cases):
                sub = f"s{n}"
                await ws.send(json.dumps(["REQ", sub, *raw_filters]))
                got = []
                while True:
                    frame = await _recv(ws)
                    if frame == ["EOSE", sub]:
                        break
                    assert frame[0] == "EVENT" and frame[1] == sub, frame
                    got.append(frame[2]["id"])
                filters = [Filter.from_json(f) for f in raw_filters]
                assert got == [e.id for e in apply_query(expected_visible, filters)], raw_filters
            # Writes are refused while the workers are away (no escrow lease configured here).
            attempt = sign_event(keys[2].secret, kind=1, content="while offline", tags=[])
            await ws.send(json.dumps(["EVENT", attempt.to_dict()]))
            frames = [await _recv(ws), await _recv(ws)]
            assert frames[-1][:3] == ["OK", attempt.id, False] and frames[-1][3].startswith("blocked:")

    asyncio.run(read_back())
    summary = operator_get(stack, "/api/blind-peer")
    assert summary["replicas"] and summary["mirrors"]
