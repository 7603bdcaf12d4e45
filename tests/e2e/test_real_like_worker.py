"""A worker that behaves like the published Hyperpipe worker (the reference worker in ``--real-worker-mode``):
it describes its cores in its signed registration (``relayCores``), mirrors with a blind-peering key other
than its swarm key (``blindPeeringPublicKey``), never calls ``/api/blind-peer/metadata`` and never pushes.
The gateway must still type its cores, create its replica, admit its mirror without killing it, and serve
NIP-01 clients through it."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import websockets
from coincurve import PrivateKey

from hypertuna.nostr import sign_event
from replicas.keys import normalize_core_key
from tests.e2e.test_replicas import OPERATOR, sync


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from tests.e2e.harness import Stack, node_available

    if not node_available():
        pytest.fail("end-to-end tests need Node 20 and `npm ci` in bridge/")
    stack = Stack(
        tmp_path_factory.mktemp("real-like-stack"), env={"HYPERTUNA_OPERATOR_KEYS": f"{OPERATOR[0]}:{OPERATOR[1]}"}
    ).start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def worker(stack):
    return stack.start_worker("reallike", "--real-worker-mode", "--blind-peer", "gateway")


def _replica_row(stack, relay_key: str) -> dict | None:
    rows = stack.operator_get("/api/blind-peer/replicas?cores=true", OPERATOR)["replicas"]
    return next((r for r in rows if r["relayKey"] == relay_key), None)


def test_relay_cores_from_the_registration_create_the_replica(stack, worker):
    ready = worker.markers["HYPERTUNA_WORKER_READY"]
    relay_key, view_key = ready["relayKey"], ready["relay"]["viewKey"]
    assert (
        ready["blindPeeringPublicKey"] and normalize_core_key(ready["blindPeeringPublicKey"]) != ready["swarmPublicKey"]
    )
    deadline = time.monotonic() + 60
    row = _replica_row(stack, relay_key)
    while row is None or row["viewCoreKey"] != view_key:
        assert time.monotonic() < deadline, f"no replica from relayCores: {row}\n{stack.log_tail()}"
        time.sleep(1)
        row = _replica_row(stack, relay_key)
    types = {c["coreKey"]: c["type"] for c in row["cores"]}
    assert types.get(view_key) == "autobase-view", row["cores"]


def test_mirror_is_admitted_by_the_announced_key_and_the_worker_stays_alive(stack, worker):
    ready = worker.markers["HYPERTUNA_WORKER_READY"]
    relay_key = ready["relayKey"]
    blind_key = normalize_core_key(ready["blindPeeringPublicKey"])
    deadline = time.monotonic() + 90
    while True:
        assert worker.process.poll() is None, f"the worker died\n{stack.log_tail()}"
        if sync(stack, relay_key):
            row = _replica_row(stack, relay_key)
            owners = {c.get("ownerPeerKey") for c in row["cores"]} if row else set()
            if row and row["state"] == "ready" and row["lagEntries"] == 0 and blind_key in owners:
                break
        assert time.monotonic() < deadline, f"mirror never admitted / replica never ready\n{stack.log_tail()}"
        time.sleep(1)
    # The worker saw its cores accepted, and no metadata post ever came: the gateway knows the cores
    # from the registration alone.
    status_file = stack.tmp / "worker-reallike" / "status.json"
    while not any(c["accepted"] for c in json.loads(status_file.read_text())["mirror"]["cores"]):
        assert time.monotonic() < deadline, f"the worker never saw its cores accepted\n{stack.log_tail()}"
        time.sleep(0.2)
    assert json.loads(status_file.read_text())["mirror"]["lastMetadata"] is None
    assert worker.process.poll() is None


def test_clients_publish_and_read_through_a_poll_only_worker(stack, worker):
    ready = worker.markers["HYPERTUNA_WORKER_READY"]
    url = f"{stack.ws_url}/{ready['gatewayPath']}"
    key = PrivateKey()
    events = [sign_event(key.secret, kind=1, content=f"real-like {i}", tags=[]) for i in range(3)]

    async def run() -> list[list]:
        async with websockets.connect(url) as ws:
            for event in events:
                await ws.send(json.dumps(["EVENT", event.to_dict()]))
                reply = json.loads(await asyncio.wait_for(ws.recv(), 20))
                assert reply[:3] == ["OK", event.id, True], reply
            await ws.send(json.dumps(["REQ", "mine", {"authors": [events[0].pubkey]}]))
            frames = []
            while True:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 20))
                frames.append(frame)
                if frame == ["EOSE", "mine"]:
                    return frames

    frames = asyncio.run(run())
    # A NIP-01 client sees its events and one EOSE, not the worker's subscription notice.
    assert [f[0] for f in frames] == ["EVENT"] * len(events) + ["EOSE"], frames
    assert [f[2]["id"] for f in frames[:-1]] == [e.id for e in sorted(events, key=lambda e: (-e.created_at, e.id))]
    assert worker.process.poll() is None
