"""Nostr clients reach worker-hosted relays through the real gateway: bridge (Node, Hyperswarm on a
loopback testnet), uvicorn, the bridge event consumer and reference workers as separate processes."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta

import pytest
import websockets
from coincurve import PrivateKey

from hypertuna.nostr import sign_event


def _event(key: PrivateKey, content: str, kind: int = 1) -> dict:
    return sign_event(key.secret, kind=kind, content=content, tags=[["t", "e2e"]]).to_dict()


async def _recv(ws, timeout: float = 15.0):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def _recv_until(ws, predicate, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        frame = await _recv(ws, max(0.1, deadline - time.monotonic()))
        seen.append(frame)
        if predicate(frame):
            return frame, seen
    raise AssertionError(f"no matching frame; got {seen}")


@pytest.fixture(scope="module")
def open_relay(stack):
    worker = stack.start_worker("open")
    ready = worker.markers["HYPERTUNA_WORKER_READY"]
    return f"{stack.ws_url}/{ready['gatewayPath']}"


@pytest.fixture(scope="module")
def protected_relay(stack):
    worker = stack.start_worker("guarded", "--requires-auth", "--issue-token")
    token = worker.wait_marker("HYPERTUNA_WORKER_TOKEN")
    return f"{stack.ws_url}/{token['gatewayPath']}", token


def test_nostr_sdk_client_publishes_and_reads_back(open_relay):
    from nostr_sdk import Client, EventBuilder, Filter, Keys, Kind, RelayUrl, ReqTarget

    async def scenario():
        keys = Keys.generate()
        client = Client()
        url = RelayUrl.parse(open_relay)
        await client.add_relay(url)
        await client.connect()
        event = EventBuilder(Kind(1), "hello through the gateway").finalize(keys)
        output = await client.send_event(event)
        assert output.success == [url], output.failed
        found = await client.fetch_events(
            ReqTarget.single(url, [Filter().author(keys.public_key()).kind(Kind(1))]), timedelta(seconds=15)
        )
        assert [e.id().to_hex() for e in found] == [event.id().to_hex()]
        await client.shutdown()

    asyncio.run(scenario())


def test_event_ok_req_eose_and_live_events_between_two_clients(open_relay):
    async def scenario():
        author = PrivateKey()
        async with websockets.connect(open_relay) as reader, websockets.connect(open_relay) as writer:
            stored = _event(author, "stored first")
            await writer.send(json.dumps(["EVENT", stored]))
            assert await _recv(writer) == ["OK", stored["id"], True, ""]
            await reader.send(json.dumps(["REQ", "sub", {"authors": [stored["pubkey"]]}]))
            frame, _ = await _recv_until(reader, lambda f: f[0] == "EOSE")
            assert frame == ["EOSE", "sub"]
            # (the stored event came before EOSE)
            live = _event(author, "live one")
            await writer.send(json.dumps(["EVENT", live]))
            assert await _recv(writer) == ["OK", live["id"], True, ""]
            frame, seen = await _recv_until(reader, lambda f: f[0] == "EVENT" and f[2]["id"] == live["id"])
            assert frame[1] == "sub"
            assert not [f for f in seen if f[0] == "EOSE"], "a second EOSE"

    asyncio.run(scenario())


def test_protected_relay_with_worker_issued_token(protected_relay):
    url, token = protected_relay

    async def scenario():
        async with websockets.connect(f"{url}?token=x.y") as ws:
            notice = await _recv(ws)
            assert notice[0] == "NOTICE" and "token-invalid" in notice[1]
            with pytest.raises(websockets.ConnectionClosed) as info:
                await _recv(ws)
            assert info.value.rcvd.code == 4403
        async with websockets.connect(f"{url}?token={token['token']}") as ws:
            await ws.send(json.dumps(["REQ", "s", {"limit": 1}]))
            assert (await _recv_until(ws, lambda f: f[0] == "EOSE"))[0] == ["EOSE", "s"]

    asyncio.run(scenario())


def test_bad_input_never_breaks_the_session(stack, open_relay):
    async def scenario():
        async with websockets.connect(f"{stack.ws_url}/{'ab' * 32}") as ws:
            assert (await _recv(ws))[0] == "NOTICE"
            with pytest.raises(websockets.ConnectionClosed) as info:
                await _recv(ws)
            assert info.value.rcvd.code == 4404
        async with websockets.connect(open_relay, max_size=None) as ws:
            for bad in ("nonsense", "[]", '["EVENT", 1]', '["REQ"]', "x" * 200_000, "[" * 10000):
                await ws.send(bad)
                frame = await _recv(ws)
                assert frame[0] in ("NOTICE", "OK", "CLOSED"), frame
            good = _event(PrivateKey(), "after the garbage")
            await ws.send(json.dumps(["EVENT", good]))
            assert await _recv(ws) == ["OK", good["id"], True, ""]

    asyncio.run(scenario())


def test_slow_client_that_never_reads_does_not_hurt_others(open_relay):
    async def scenario():
        slow = await websockets.connect(open_relay, max_queue=1)
        for i in range(200):
            await slow.send(json.dumps(["REQ", f"s{i}", {"limit": 50}]))
        async with websockets.connect(open_relay) as ws:
            good = _event(PrivateKey(), "still served")
            await ws.send(json.dumps(["EVENT", good]))
            assert await _recv(ws) == ["OK", good["id"], True, ""]
        await slow.close()

    asyncio.run(scenario())


def test_worker_stop_gives_notice_and_close(stack):
    worker = stack.start_worker("fragile")
    url = f"{stack.ws_url}/{worker.markers['HYPERTUNA_WORKER_READY']['gatewayPath']}"

    async def scenario():
        async with websockets.connect(url) as ws:
            await ws.send(json.dumps(["REQ", "s", {"limit": 1}]))
            await _recv_until(ws, lambda f: f[0] == "EOSE")
            worker.stop()
            frame, _ = await _recv_until(ws, lambda f: f[0] == "NOTICE", timeout=40)
            assert frame[1].startswith("Error:")
            with pytest.raises(websockets.ConnectionClosed) as info:
                await _recv_until(ws, lambda f: False, timeout=40)
            assert info.value.rcvd.code == 1013

    asyncio.run(scenario())


def test_drive_files_stream_from_the_worker(stack, tmp_path):
    import hashlib
    import os
    import urllib.request

    files = tmp_path / "files"
    files.mkdir()
    payload = os.urandom(700_000)
    (files / "photo.png").write_bytes(payload)
    worker = stack.start_worker("files", "--drive-import", str(files))
    ready = worker.markers["HYPERTUNA_WORKER_READY"]
    digest = hashlib.sha256(payload).hexdigest()
    with urllib.request.urlopen(f"{stack.base_url}/drive/{ready['gatewayPath']}/{digest}.png", timeout=30) as resp:
        assert resp.status == 200
        assert resp.read() == payload
    missing = urllib.request.Request(f"{stack.base_url}/drive/{ready['gatewayPath']}/{'0' * 64}")
    try:
        urllib.request.urlopen(missing, timeout=30)
        raise AssertionError("expected 404")
    except urllib.error.HTTPError as exc:
        assert exc.code == 404


def test_failover_to_a_second_worker_of_the_same_relay(stack):
    first = stack.start_worker("shared", "--allow-join")
    ready = first.markers["HYPERTUNA_WORKER_READY"]
    second = stack.start_worker("shared-b", "--join", ready["relayKey"], "--join-peer", ready["swarmPublicKey"])
    second.wait_marker("HYPERTUNA_WORKER_JOINED")
    url = f"{stack.ws_url}/{ready['relayKey']}"
    author = PrivateKey()

    async def scenario():
        async with websockets.connect(url) as reader, websockets.connect(url) as writer:
            before = _event(author, "before failover")
            await writer.send(json.dumps(["EVENT", before]))
            assert await _recv(writer) == ["OK", before["id"], True, ""]
            await reader.send(json.dumps(["REQ", "sub", {"authors": [before["pubkey"]]}]))
            await _recv_until(reader, lambda f: f[0] == "EOSE")
            first.stop()
            # Both sockets stay open: the sessions move to the second worker of the relay.
            after = _event(author, "after failover")
            deadline = time.monotonic() + 60
            while True:
                await writer.send(json.dumps(["EVENT", after]))
                frame = await _recv(writer, 60)
                if frame[:3] == ["OK", after["id"], True]:
                    break
                assert time.monotonic() < deadline, frame
                await asyncio.sleep(1)
            frame, seen = await _recv_until(reader, lambda f: f[0] == "EVENT" and f[2]["id"] == after["id"], 60)
            assert frame[1] == "sub"
            assert [f for f in seen if f[0] == "EVENT" and f[2]["id"] == before["id"]] == []

    asyncio.run(scenario())
