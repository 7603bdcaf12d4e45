"""Token expiry on live sockets through the real gateway processes (uvicorn, bridge, a reference worker): a
socket whose token expires gets ``["TOKEN","EXPIRED",…]`` and a 4403 close; one whose token was refreshed
through ``POST /api/relay-tokens/refresh`` before expiry stays open until the refresh expires.

The stack lowers the shortest token lifetime to one second (``HYPERTUNA_TOKEN_MIN_TTL``) so that this takes
seconds; the waits below bound how long a broken gateway takes to fail.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import websockets

from hypertuna.compat import decode_token
from tests.e2e.harness import Stack, node_available


@pytest.fixture(scope="module")
def expiry_stack(tmp_path_factory):
    if not node_available():
        pytest.fail("end-to-end tests need Node 20 and `npm ci` in bridge/ (make test installs both)")
    stack = Stack(tmp_path_factory.mktemp("token-expiry"), env={"HYPERTUNA_TOKEN_MIN_TTL": "1"}).start()
    try:
        yield stack
    finally:
        stack.stop()


async def recv(ws, timeout: float = 15.0):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def served(ws, sub: str) -> None:
    await ws.send(json.dumps(["REQ", sub, {"limit": 1}]))
    while (frame := await recv(ws))[0] != "EOSE":
        assert frame[0] == "EVENT", frame
    assert frame == ["EOSE", sub]


async def expired(ws, expires_at: int) -> None:
    """The next frame is TOKEN EXPIRED, no earlier than the expiry, then the 4403 close."""
    frame = await recv(ws, max(1.0, expires_at / 1000 - time.time() + 10))
    assert frame == ["TOKEN", "EXPIRED", {"reason": "expired", "expiresAt": expires_at}]
    assert time.time() * 1000 >= expires_at - 50  # the server clock, on this same machine
    with pytest.raises(websockets.ConnectionClosed) as info:
        await recv(ws, 5)
    assert info.value.rcvd.code == 4403


def test_live_socket_is_closed_at_expiry_unless_refreshed(expiry_stack):
    worker = expiry_stack.start_worker("expiring", "--requires-auth", "--issue-token")
    issued = worker.wait_marker("HYPERTUNA_WORKER_TOKEN")
    url = f"{expiry_stack.ws_url}/{issued['gatewayPath']}"
    claims = decode_token(issued["token"], expiry_stack.secret)
    payload = {key: claims[key] for key in ("relayKey", "relayAuthToken", "pubkey", "scope")}
    lapsing = expiry_stack.token_api("issue", {**payload, "ttlSeconds": 2})
    kept = expiry_stack.token_api("issue", {**payload, "ttlSeconds": 2})

    async def scenario():
        async with websockets.connect(f"{url}?token={lapsing['token']}") as first:
            async with websockets.connect(f"{url}?token={kept['token']}") as second:
                await served(first, "a")
                await served(second, "b")
                refreshed = expiry_stack.token_api(
                    "refresh", {"relayKey": payload["relayKey"], "token": kept["token"], "ttlSeconds": 4}
                )
                await expired(first, lapsing["expiresAt"])
                await asyncio.sleep(max(0.0, kept["expiresAt"] / 1000 - time.time() + 0.3))
                await served(second, "after the first expiry")
                await expired(second, refreshed["expiresAt"])

    asyncio.run(scenario())
