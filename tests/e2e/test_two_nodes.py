"""Two gateway nodes behind no proxy, sharing the database, Redis and one Celery (worker + beat on node A),
each with its own bridge on one loopback DHT testnet; node A's bridge runs the blind peer (the replica
node), node B's runs none (``HYPERTUNA_BRIDGE_BLIND_PEER=off``). One reference worker with a protected
relay is reached from both nodes: REQ on both, an EVENT published on node A reaches a live subscriber on
node B once, the worker mirrors into node A's blind peer only, the replica (synced once, by the one
Celery) answers on both nodes once the worker is gone, and revoking the token through node B's API closes
the sockets on both nodes with 4403. One token's frame budget holds across both nodes: frames spent on node A
count on node B from B's first frame.

Redis: the run's own ``REDIS_URL`` when set, else a private ``redis-server`` (the in-memory channel layer
cannot cross processes)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.request

import pytest
import websockets
from coincurve import PrivateKey

from hypertuna.compat import decode_token
from hypertuna.nostr import sign_event
from tests.e2e.harness import Stack, node_available
from tests.e2e.test_burst import redis_url  # noqa: F401, F811  (the run's Redis, or a private redis-server)

OPERATOR = ("e2e-ops", "operator-secret-for-e2e")
# Frames per token and minute on every node: well above what the scenario's sockets send, so only the budget
# phase, with a token of its own, reaches it.
FRAME_BUDGET = 300


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory, redis_url):  # noqa: F811
    if not node_available():
        pytest.fail("end-to-end tests need Node 20 and `npm ci` in bridge/ (make test installs both)")
    stack = Stack(
        tmp_path_factory.mktemp("two-nodes"),
        celery=True,
        env={
            "REDIS_URL": redis_url,
            "DJANGO_SETTINGS_MODULE": "tests.e2e.fast_beat_settings",  # beat syncs replicas every second
            "HYPERTUNA_OPERATOR_KEYS": f"{OPERATOR[0]}:{OPERATOR[1]}",
            "HYPERTUNA_RATELIMIT_TOKEN_PER_MINUTE": str(FRAME_BUDGET),
        },
    )
    try:
        stack.start_testnet()
        stack.start()
        node_b = stack.add_node("node-b", {"HYPERTUNA_BRIDGE_BLIND_PEER": "off"})
        yield stack, node_b
    finally:
        stack.stop()


async def recv(ws, timeout: float = 15.0):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def req(ws, sub: str, filters: dict) -> list[str]:
    """Event ids a REQ returns up to its EOSE (the subscription stays open)."""
    await ws.send(json.dumps(["REQ", sub, filters]))
    ids = []
    while (frame := await recv(ws, 20))[:2] != ["EOSE", sub]:
        assert frame[0] in ("EVENT", "NOTICE"), frame
        if frame[0] == "EVENT":
            ids.append(frame[2]["id"])
    return ids


async def served_within(url: str, seconds: float) -> None:
    """Wait until a REQ on ``url`` is answered (a socket closed 1013 meanwhile is tried again)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            async with websockets.connect(url) as ws:
                await req(ws, "probe", {"limit": 1})
                return
        except websockets.ConnectionClosed as exc:
            assert time.monotonic() < deadline and exc.rcvd is not None and exc.rcvd.code == 1013, exc
            await asyncio.sleep(0.5)


def wait_for_replica(stack: Stack, base_url: str, relay_key: str, events: int) -> dict:
    """The replica row, read through ``base_url``, once it materialized ``events`` events with no lag."""
    deadline = time.monotonic() + 60
    while True:
        answer = stack.operator_get("/api/blind-peer/replicas", OPERATOR)
        row = {r["relayKey"]: r for r in answer["replicas"]}.get(relay_key)
        if row and row["state"] == "ready" and row["lagEntries"] == 0 and row["materializedLength"] >= events:
            return row
        assert time.monotonic() < deadline, f"replica never caught up: {row}\n{stack.log_tail()}"
        time.sleep(0.5)


def test_two_nodes_serve_one_worker_fan_out_share_the_replica_and_revoke_everywhere(two_nodes):
    stack, node_b = two_nodes
    author = PrivateKey()
    pubkey = author.public_key_xonly.format().hex()
    worker = stack.start_worker(
        "shared", "--requires-auth", "--issue-token", "--token-pubkey", pubkey, "--blind-peer", "gateway"
    )
    issued = worker.wait_marker("HYPERTUNA_WORKER_TOKEN")
    relay_key, path, token = issued["relayKey"], issued["gatewayPath"], issued["token"]
    url_a, url_b = f"{stack.ws_url}/{path}?token={token}", f"{node_b.ws_url}/{path}?token={token}"
    first = sign_event(author.secret, kind=1, content="published on node A", tags=[]).to_dict()

    # The worker dials node A's key (its bootstrap file names it); node B dials the worker through the DHT,
    # which finds a freshly announced worker within a few seconds.
    asyncio.run(served_within(url_b, 30))

    second_copies: list = []

    async def online() -> None:
        async with websockets.connect(url_a) as ws_a, websockets.connect(url_b) as ws_b:
            # REQ works on both nodes (each through its own bridge to the same worker).
            assert await req(ws_a, "a", {"limit": 5}) == []
            await ws_a.send(json.dumps(["CLOSE", "a"]))
            assert await req(ws_b, "live", {"kinds": [1]}) == []
            # An EVENT accepted through node A reaches node B's live subscriber once (channel-layer
            # fan-out; the worker's own copy, arriving by poll, is dropped by id).
            await ws_a.send(json.dumps(["EVENT", first]))
            reply = await recv(ws_a)
            assert reply[:3] == ["OK", first["id"], True], reply
            frame = await recv(ws_b, 10)
            assert frame == ["EVENT", "live", first], frame
            with contextlib.suppress(asyncio.TimeoutError):
                second_copies.append(await recv(ws_b, 2.5))  # ten node-B polls of the worker

    asyncio.run(online())

    # One frame budget per token across nodes: a token of its own spends all but five frames on node A; node
    # B, whose first frame of that token reads the shared count, lets exactly five more through.
    claims = decode_token(token, stack.secret)
    spender = stack.token_api("issue", {key: claims[key] for key in ("relayKey", "relayAuthToken", "pubkey", "scope")})[
        "token"
    ]

    async def one_budget() -> list[str]:
        if time.time() % 60 > 40:  # the budget is per minute: start the phase well inside one
            await asyncio.sleep(61 - time.time() % 60)
        async with websockets.connect(f"{stack.ws_url}/{path}?token={spender}") as ws_a:
            for _ in range(FRAME_BUDGET - 5):
                await ws_a.send("not json")  # each answered by the gateway itself with an "invalid:" NOTICE
            for _ in range(FRAME_BUDGET - 5):
                frame = await recv(ws_a)
                assert frame[0] == "NOTICE" and frame[1].startswith("invalid:"), frame
            await asyncio.sleep(2.5)  # node A adds its count to the shared one (every second)
            async with websockets.connect(f"{node_b.ws_url}/{path}?token={spender}") as ws_b:
                for _ in range(10):
                    await ws_b.send("not json")
                return [(await recv(ws_b))[1].split(":")[0] for _ in range(10)]

    assert asyncio.run(one_budget()) == ["invalid"] * 5 + ["rate-limited"] * 5

    # The worker mirrors into node A's blind peer only (node B's bridge runs none); node B's API answers
    # workers with node A's blind peer, and both read the one replica row in the shared database.
    with urllib.request.urlopen(f"{node_b.base_url}/api/blind-peer", timeout=10) as answer:
        advertised = json.loads(answer.read())
    with urllib.request.urlopen(f"{stack.base_url}/api/blind-peer", timeout=10) as answer:
        assert json.loads(answer.read())["publicKey"] == advertised["publicKey"]
    assert advertised["enabled"] is True
    wait_for_replica(stack, node_b.base_url, relay_key, 1)
    worker.stop()

    async def offline() -> None:
        async with websockets.connect(url_a) as ws_a, websockets.connect(url_b) as ws_b:
            # Both nodes answer from the replica, each with the event exactly once (one sync, no doubles).
            assert await req(ws_a, "r", {"kinds": [1]}) == [first["id"]]
            assert await req(ws_b, "r", {"kinds": [1]}) == [first["id"]]
            # Revoking through node B's API closes the sockets on both nodes.
            revoked = stack.token_api("revoke", {"relayKey": relay_key, "reason": "e2e"}, base_url=node_b.base_url)
            assert revoked["revoked"] >= 1
            for ws in (ws_a, ws_b):
                frames = []
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    while True:
                        frames.append(await recv(ws, 10))
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403, frames
                assert frames and frames[-1][:2] == ["TOKEN", "REVOKED"], frames

    asyncio.run(offline())

    # One Celery for the deployment: node B runs none, and node B's bridge holds no mirror to sync from.
    assert not any("celery" in proc.name for proc in node_b.procs)
    celery_log = next(p for p in stack.procs if p.name == "celery").log_path.read_text(errors="replace")
    assert "replicas.tasks.sync_replica" in celery_log
    # Node B's subscriber got the event once: neither the worker's copy nor the replica's is sent again.
    assert not second_copies, second_copies
