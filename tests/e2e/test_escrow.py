"""Writes while every worker is offline, under an escrow lease, through real processes: the escrow (mTLS,
own database), the gateway (uvicorn + coordinator), the bridge (blind peer + leased Autobase writer) and a
reference worker that deposited its gateway writer by itself (mTLS, signed, sealed), heartbeated, and then
went away; when it comes back, the escrow makes it rotate to a new gateway writer."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import time

import pytest
import websockets
from coincurve import PrivateKey

from hypertuna.nostr import sign_event
from tests.e2e.harness import ROOT, Stack, node_available


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    if not node_available():
        pytest.fail("end-to-end tests need Node 20 and `npm ci` in bridge/")
    env = {"HYPERTUNA_ESCROW_HEARTBEAT_SILENCE": "5"}
    stack = Stack(tmp_path_factory.mktemp("escrow-stack"), escrow=True, env=env).start()
    try:
        yield stack
    finally:
        stack.stop()


async def _recv(ws, timeout=60.0):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


def _sync_until_ready(stack, relay_key):
    deadline = time.monotonic() + 90
    while True:
        result = subprocess.run(
            [sys.executable, "manage.py", "replicas_sync", "--relay", relay_key],
            cwd=ROOT,
            env=stack.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        # Mirroring starts asynchronously: first the replica row appears (the worker's metadata), then the
        # blind peer learns the view core. Until then a sync run fails with a transient reason; production
        # retries on the beat, the test until its deadline.
        transient = ("no replica for", "replica-not-found", "core-unavailable")
        assert result.returncode == 0 or any(t in result.stderr for t in transient), result.stderr[-2000:]
        probe = result.returncode == 0 and subprocess.run(
            [
                sys.executable,
                "-c",
                "import django,sys;django.setup();from replicas.selectors import replica_status as s;"
                f"r=s({relay_key!r});sys.exit(0 if r and r['state']=='ready' and r['lagEntries']==0 else 1)",
            ],
            cwd=ROOT,
            env={**stack.env, "DJANGO_SETTINGS_MODULE": "hypertuna.settings"},
            timeout=60,
        )
        if probe and probe.returncode == 0:
            return
        assert time.monotonic() < deadline, stack.log_tail()
        time.sleep(1)


def _escrow_flags(stack, signing):
    """The worker's own escrow client: the development worker certificate and its signing key file."""
    return (
        "--escrow-url",
        stack.env["HYPERTUNA_ESCROW_URL"],
        "--escrow-ca",
        str(stack.pki / "ca.pem"),
        "--escrow-cert",
        str(stack.pki / "worker.pem"),
        "--escrow-key",
        str(stack.pki / "worker-key.pem"),
        "--escrow-signing-key",
        str(signing),
        "--escrow-heartbeat-ms",
        "1000",
    )


def test_gateway_writes_under_a_lease_while_the_worker_is_offline(stack, tmp_path):
    writer_file = tmp_path / "gateway-writer.json"
    storage = tmp_path / "worker-storage"
    signing = tmp_path / "worker-signing.hex"
    # The worker deposits its gateway writer's secret with the escrow itself (sealed to the escrow's key,
    # signed with a worker key it generates into `signing`) and then heartbeats every second.
    worker = stack.start_worker(
        "escrowed",
        "--blind-peer",
        "gateway",
        "--gateway-writer-out",
        str(writer_file),
        *_escrow_flags(stack, signing),
        storage=storage,
    )
    ready = worker.markers["HYPERTUNA_WORKER_READY"]
    relay_key, url = ready["relayKey"], f"{stack.ws_url}/{ready['relayKey']}"

    deposited = worker.wait_marker("HYPERTUNA_WORKER_ESCROW", timeout=60)
    pair = json.loads(writer_file.read_text())
    assert deposited["relayKey"] == relay_key and deposited["writerPublicKey"] == pair["publicKey"]
    assert deposited["depositId"] and deposited["policyVersion"] >= 1
    assert "secretKey" not in json.dumps(deposited) and pair["secretKey"] not in worker.log_path.read_text()
    assert stat.S_IMODE(os.stat(signing).st_mode) == 0o600

    author = PrivateKey()
    before = sign_event(author.secret, kind=1, content="written by the worker", tags=[])

    async def publish_online():
        async with websockets.connect(url) as ws:
            await ws.send(json.dumps(["EVENT", before.to_dict()]))
            assert (await _recv(ws))[:3] == ["OK", before.id, True]

    asyncio.run(publish_online())
    _sync_until_ready(stack, relay_key)  # mirror evidence for the escrow's policy
    worker.stop()
    time.sleep(6)  # longer than the escrow's heartbeat-silence rule

    offline = sign_event(author.secret, kind=1, content="written by the gateway under a lease", tags=[])

    async def publish_offline():
        # The escrow's evidence (last heartbeat, mirror freshness) is judged when the EVENT arrives; on a
        # loaded machine the first attempt may still be too close to the worker's last heartbeat, and a
        # client would simply try again, as this does for a bounded time.
        deadline = time.monotonic() + 60
        async with websockets.connect(url) as ws:
            while True:
                await ws.send(json.dumps(["EVENT", offline.to_dict()]))
                frames = []
                while not frames or frames[-1][0] != "OK":
                    frames.append(await _recv(ws, 120))
                if frames[-1] == ["OK", offline.id, True, ""]:
                    return
                assert frames[-1][3].startswith("blocked:"), (frames, stack.log_tail(60))
                assert time.monotonic() < deadline, (frames, stack.log_tail(60))
                await asyncio.sleep(2)

    asyncio.run(publish_offline())

    # The worker comes back on the same storage and finds the gateway's write in its own relay.
    returned = stack.start_worker(
        "escrowed",
        "--blind-peer",
        "gateway",
        "--gateway-writer-out",
        str(writer_file),
        *_escrow_flags(stack, signing),
        storage=storage,
    )
    assert returned.markers["HYPERTUNA_WORKER_READY"]["relayKey"] == relay_key

    async def read_back():
        deadline = time.monotonic() + 90
        while True:
            async with websockets.connect(url) as ws:
                await ws.send(json.dumps(["REQ", "s", {"ids": [offline.id, before.id]}]))
                ids = set()
                while True:
                    frame = await _recv(ws)
                    if frame[0] == "EOSE":
                        break
                    if frame[0] == "EVENT":
                        ids.add(frame[2]["id"])
            if ids == {offline.id, before.id}:
                return
            assert time.monotonic() < deadline, (ids, stack.log_tail(60))
            await asyncio.sleep(2)

    asyncio.run(read_back())

    # Its old gateway writer was released under the lease, so the escrow refuses it: the worker adds a
    # fresh gateway writer and deposits that one, superseding the first deposit.
    rotated = returned.wait_marker("HYPERTUNA_WORKER_ESCROW", timeout=60)
    assert rotated["relayKey"] == relay_key and rotated["workerKey"] == deposited["workerKey"]
    assert rotated["writerPublicKey"] != deposited["writerPublicKey"]
    assert rotated["depositId"] != deposited["depositId"]
    assert rotated["writerPublicKey"] == json.loads(writer_file.read_text())["publicKey"]
