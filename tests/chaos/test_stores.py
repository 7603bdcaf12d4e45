"""Chaos: the gateway's shared stores go away and come back. One gateway node (bridge, uvicorn, event consumer)
and a reference worker run on a private Postgres cluster and a private ``redis-server``, which the tests stop
and start; the machine's shared servers are never touched."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import websockets

from tests.chaos.conftest import start_stack
from tests.chaos.helpers import (
    expect_notice_then_1013,
    issue_token,
    make_events,
    probe,
    publish,
    recv,
    register,
    wait_readable,
)

RECOVERY_S = 5.0  # the README's promise once the store is back


@pytest.fixture(scope="module")
def stack(tmp_path_factory, private_redis, private_postgres):
    _, database_url = private_postgres
    stack = start_stack(
        tmp_path_factory.mktemp("stores"), env={"DATABASE_URL": database_url, "REDIS_URL": private_redis.url}
    )
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def relay(stack):
    worker = stack.start_worker("stores")
    relay_key = worker.markers["HYPERTUNA_WORKER_READY"]["relayKey"]
    return relay_key, f"{stack.ws_url}/{relay_key}"


def _assert_json_503(answer) -> None:
    status, headers, body = answer
    assert status == 503, answer
    assert headers.get("Content-Type", "").startswith("application/json"), answer
    assert isinstance(body, dict) and body.get("error") == "service-unavailable", answer
    assert int(headers["Retry-After"]) > 0, answer


def _until_ok(call, timeout: float) -> tuple[float, tuple]:
    """Repeat ``call`` until it answers 2xx; returns the seconds it took and the answer."""
    started = time.monotonic()
    while True:
        answer = call()
        if 200 <= answer[0] < 300:
            return time.monotonic() - started, answer
        assert time.monotonic() - started < timeout, answer
        time.sleep(0.2)


async def _req_works(url: str) -> bool:
    """A fresh socket answers a REQ with EOSE (not the outage NOTICE and close 1013)."""
    try:
        async with websockets.connect(url) as ws:
            await ws.send(json.dumps(["REQ", "probe", {"kinds": [1], "limit": 1}]))
            while True:
                frame = await recv(ws, 15)
                if frame[0] == "NOTICE" and "try again later" in frame[1]:
                    return False
                if frame == ["EOSE", "probe"]:
                    return True
    except websockets.ConnectionClosed as closed:
        assert closed.rcvd is not None and closed.rcvd.code == 1013, closed
        return False


def _nothing_lost(stack, relay, before, after, *, token: str) -> None:
    """``after`` is OK'd now; it and ``before`` are readable exactly once; ``token`` (issued before the fault)
    still opens the relay; its registration row is still there, once."""
    relay_key, url = relay
    publish(url, after)
    wait_readable(url, before + after, timeout=30)
    assert asyncio.run(_req_works(f"{url}?token={token}"))
    assert (
        probe(stack, f"from relays.models import Relay\nresult = Relay.objects.filter(relay_key={relay_key!r}).count()")
        == 1
    )


def test_redis_down_and_back(stack, relay, private_redis):
    """Fault: the private redis-server is SIGKILLed (cache, channel layer, rate limits, broker all gone), then
    started again on the same port, empty.

    Degraded: registration (its nonce replay cache is in Redis) answers JSON 503 ``service-unavailable`` with
    Retry-After, token issue (database only) keeps working;
    an open socket gets a NOTICE "try again later" and close 1013; a new handshake is accepted only to get the
    same NOTICE and 1013. Nothing answers 500, no process exits.

    Recovery: within 5 s of Redis being back, registrations, token issue and new sockets work again.

    Nothing lost: every event OK'd before and after the outage is readable exactly once; a token issued before
    the outage still opens the relay; the relay's registration row is intact."""
    relay_key, url = relay
    before = make_events(5, "before redis outage")
    publish(url, before)
    status, _, token = issue_token(stack, relay_key)
    assert status == 200, token

    async def outage() -> None:
        async with websockets.connect(url) as held:
            await held.send(json.dumps(["REQ", "live", {"kinds": [1], "limit": 1}]))
            while (await recv(held))[0] != "EOSE":
                pass
            private_redis.kill()
            await expect_notice_then_1013(held)
        async with websockets.connect(url) as fresh:
            await expect_notice_then_1013(fresh)

    asyncio.run(outage())
    _assert_json_503(register(stack, relay_key))  # its nonce replay cache lives in Redis
    assert issue_token(stack, relay_key)[0] == 200  # needs only the database (rate limits are off here)
    assert all(proc.process.poll() is None for proc in stack.procs), stack.log_tail()

    private_redis.start()
    took, _ = _until_ok(lambda: register(stack, relay_key), RECOVERY_S)
    assert took <= RECOVERY_S
    assert issue_token(stack, relay_key)[0] == 200
    deadline = time.monotonic() + RECOVERY_S
    while not asyncio.run(_req_works(url)):
        assert time.monotonic() < deadline, stack.log_tail()
        time.sleep(0.2)

    _nothing_lost(stack, relay, before, make_events(5, "after redis outage"), token=token["token"])


def test_postgres_restarted(stack, relay, private_postgres):
    """Fault: the private Postgres cluster is stopped (fast shutdown, as ``pg_ctl restart -m fast``) and
    started again; every open database connection of the web and event processes breaks.

    Degraded: while it is down, APIs that need the database answer JSON 503 with Retry-After (never a 500
    page); no process exits.

    Recovery: within 5 s of Postgres accepting connections, registrations and token issue work again, since
    Django checks a persistent connection before reuse (``CONN_HEALTH_CHECKS``) and opens a new one.

    Nothing lost: events OK'd before and after are readable exactly once; the registration row and the token
    issued before the restart are intact (a new token continues its sequence)."""
    cluster, _ = private_postgres
    relay_key, url = relay
    before = make_events(3, "before postgres restart")
    publish(url, before)
    status, _, first = issue_token(stack, relay_key)
    assert status == 200, first

    cluster.stop()
    try:
        _assert_json_503(register(stack, relay_key))
        _assert_json_503(issue_token(stack, relay_key))
        assert all(proc.process.poll() is None for proc in stack.procs), stack.log_tail()
    finally:
        cluster.start()

    took, (_, _, second) = _until_ok(lambda: issue_token(stack, relay_key), RECOVERY_S)
    assert took <= RECOVERY_S
    assert second["sequence"] == first["sequence"] + 1, (first, second)
    assert register(stack, relay_key)[0] in (200, 201)
    _nothing_lost(stack, relay, before, make_events(3, "after postgres restart"), token=first["token"])
