"""300 simultaneous WebSocket connects against the real uvicorn of the end-to-end stack, over the shared Redis
channel layer, then a mass disconnect: no connect fails, and no member is left in the relay's channel group
(read from Redis directly). ``bench/burst_bench.py`` is the 2,000-connect, in-process version.

Redis: the run's own ``REDIS_URL`` (its own database number) when set, else a private ``redis-server``."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
import urllib.request

import pytest
import redis
import websockets

from hypertuna.compat import hmac_hex
from tests.conftest import hex_key, make_registration
from tests.e2e.harness import Stack, node_available
from tests.hypertuna.test_redis_outage import PrivateRedis

CONNECTS = 300


@pytest.fixture(scope="module")
def redis_url():
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    if shutil.which("redis-server") is None:
        pytest.skip("needs REDIS_URL or redis-server")
    server = PrivateRedis()
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def burst_stack(tmp_path_factory, redis_url):
    if not node_available():
        pytest.fail("end-to-end tests need Node 20 and `npm ci` in bridge/ (make test installs both)")
    # No poll of the (absent) worker during the test: what is measured is the handshakes and the group.
    stack = Stack(
        tmp_path_factory.mktemp("burst-stack"),
        # Memberships refreshed every 2 s: the node's own membership of the relay's node group is left at the
        # first refresh after its last socket closed.
        env={"REDIS_URL": redis_url, "HYPERTUNA_POLL_INTERVAL_MS": "60000", "HYPERTUNA_CHANNEL_GROUP_EXPIRY": "8"},
    )
    try:
        yield stack.start()
    finally:
        stack.stop()


def register_open_relay(stack: Stack) -> str:
    key = hex_key()
    registration = make_registration(key, metadata={"name": "burst", "requiresAuth": False})
    body = json.dumps({"registration": registration, "signature": hmac_hex(stack.secret, registration)}).encode()
    request = urllib.request.Request(
        f"{stack.base_url}/api/relays", data=body, headers={"content-type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=15) as response:
        assert response.status in (200, 201)
    return key


def group_members(store: redis.Redis, prefix: str, *, nodes: bool = False) -> dict[bytes, int]:
    """Members of the sockets' groups, or (``nodes``) of the relays' node groups (one channel per node)."""
    found = {key: int(store.zcard(key)) for key in store.scan_iter(f"{prefix}:group:*".encode())}
    return {key: n for key, n in found.items() if (b":group:relay-nodes." in key) == nodes}


def test_300_simultaneous_connects_then_a_mass_disconnect_leave_no_group_member(burst_stack, redis_url):
    stack = burst_stack
    key = register_open_relay(stack)
    store = redis.Redis.from_url(redis_url)
    prefix = stack.env["HYPERTUNA_CHANNEL_PREFIX"]

    async def scenario() -> None:
        results = await asyncio.gather(
            *(websockets.connect(f"{stack.ws_url}/{key}", open_timeout=60) for _ in range(CONNECTS)),
            return_exceptions=True,
        )
        sockets = [r for r in results if not isinstance(r, BaseException)]
        errors = [repr(r) for r in results if isinstance(r, BaseException)]
        try:
            assert errors == [], f"{len(errors)} connects failed, e.g. {errors[:3]}"
            # Every socket is served (not closed after its handshake): each answers a ping.
            await asyncio.gather(*(ws.ping() for ws in sockets))
            members = group_members(store, prefix)
            assert list(members.values()) == [CONNECTS], members
            # The live fan-out's node group: this node once, however many of its sockets serve the relay.
            assert list(group_members(store, prefix, nodes=True).values()) == [1]
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)

    asyncio.run(scenario())
    deadline = time.monotonic() + 15
    while (members := {**group_members(store, prefix), **group_members(store, prefix, nodes=True)}) and any(
        members.values()
    ):
        assert time.monotonic() < deadline, f"stale group members after the mass disconnect: {members}"
        time.sleep(0.2)
