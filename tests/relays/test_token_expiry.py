"""A token that expires while its socket is open: the socket gets ``["TOKEN","EXPIRED",…]`` and a 4403 close at
the token's expiry, unless the token was refreshed before it; then the socket carries on under the refresh."""

from __future__ import annotations

import asyncio
import json

import pytest
from channels.db import database_sync_to_async

from relays import consumers, services, tokens, usage
from relays.consumers import RelayConsumer
from tests.relays import test_consumer
from tests.relays.fakes import FakeWorker
from tests.relays.test_consumer import P1, connect, event, receive_json, register

workers = test_consumer.workers

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _short_tokens(settings):
    settings.HYPERTUNA_TOKEN_MIN_TTL = 1


async def relay_with_token(key, ttl, pool):
    pool[P1] = FakeWorker()
    await database_sync_to_async(register)(key, [P1])
    return await database_sync_to_async(services.issue_token)(relay_key=key, relay_auth_token="a", ttl_seconds=ttl)


async def socket_with_refresh(key, pool, ttl):
    """A socket opened with a 1 s token, and a refresh of that token (for ``ttl`` s) made while it is open."""
    first = await relay_with_token(key, 1, pool)
    communicator = await connect(f"/{key}?token={first.token}")
    second = await database_sync_to_async(services.refresh_token)(relay_key=key, token=first.token, ttl_seconds=ttl)
    return communicator, first, second


async def assert_served(communicator, content):
    ev = event(content)
    await communicator.send_to(json.dumps(["EVENT", ev]))
    assert (await receive_json(communicator))[:3] == ["OK", ev["id"], True]


async def assert_expired(communicator, expires_at, timeout=4):
    assert await receive_json(communicator, timeout) == [
        "TOKEN",
        "EXPIRED",
        {"reason": "expired", "expiresAt": expires_at},
    ]
    assert (await communicator.receive_output(timeout=2)) == {"type": "websocket.close", "code": 4403}


async def test_expired_token_gets_token_expired_and_4403_and_no_answer_after(workers):
    key = "ab" * 32
    issued = await relay_with_token(key, 1, workers)
    communicator = await connect(f"/{key}?token={issued.token}")
    await assert_served(communicator, "before expiry")
    await assert_expired(communicator, issued.expires_at)
    await communicator.send_to(json.dumps(["REQ", "late", {"kinds": [1]}]))
    assert await communicator.receive_nothing(timeout=0.5)
    assert [method for method, _ in workers[P1].requests].count("POST") == 1  # the EVENT before expiry


async def test_frame_after_expiry_is_refused_even_before_the_timer_fires(workers, monkeypatch):
    async def late_timer(self):
        await asyncio.sleep(60)

    monkeypatch.setattr(RelayConsumer, "_watch_token", late_timer)
    key = "cd" * 32
    issued = await relay_with_token(key, 1, workers)
    communicator = await connect(f"/{key}?token={issued.token}")
    await asyncio.sleep(1.1)
    await communicator.send_to(json.dumps(["REQ", "late", {"kinds": [1]}]))
    await assert_expired(communicator, issued.expires_at, timeout=2)
    assert not [r for r in workers[P1].requests if r[0] == "POST"]
    await communicator.disconnect()


async def test_refresh_before_expiry_keeps_the_socket_until_the_new_expiry(workers):
    communicator, first, second = await socket_with_refresh("ef" * 32, workers, 2)
    await asyncio.sleep(1.2)
    await assert_served(communicator, "after the first expiry")
    rows = await database_sync_to_async(lambda: dict(tokens.RelayToken.objects.values_list("sequence", "pk")))()
    # The live connection moved to the refresh, so a revocation of it counts this socket.
    assert usage.live_connections([rows[second.sequence]]) == 1
    assert usage.live_connections([rows[first.sequence]]) == 0
    await assert_expired(communicator, second.expires_at)


async def test_socket_answers_to_its_refresh_and_is_closed_by_its_revocation(workers):
    key = "0a" * 32
    communicator, first, second = await socket_with_refresh(key, workers, 30)
    await asyncio.sleep(1.2)
    await assert_served(communicator, "carried on")
    # The superseded token no longer speaks for the socket.
    await database_sync_to_async(services.revoke_tokens)(relay_key=key, token=first.token, reason="old one")
    assert await communicator.receive_nothing(timeout=0.3)
    result = await database_sync_to_async(services.revoke_tokens)(relay_key=key, token=second.token, reason="stolen")
    assert result.disconnected == 1
    assert await receive_json(communicator) == ["TOKEN", "REVOKED", {"reason": "stolen", "sequence": 0}]
    assert (await communicator.receive_output(timeout=2))["code"] == 4403


async def test_refresh_revoked_before_the_old_expiry_does_not_carry_the_socket(workers):
    key = "1b" * 32
    communicator, first, second = await socket_with_refresh(key, workers, 30)
    await database_sync_to_async(services.revoke_tokens)(relay_key=key, token=second.token, reason="stolen")
    await assert_expired(communicator, first.expires_at)


async def test_token_expired_at_connect_is_refused_at_the_handshake(workers):
    key = "2c" * 32
    issued = await relay_with_token(key, 1, workers)
    await asyncio.sleep(1.1)
    communicator = await connect(f"/{key}?token={issued.token}")
    assert await receive_json(communicator) == ["NOTICE", "restricted: access token rejected (token-expired)"]
    assert (await communicator.receive_output(timeout=2))["code"] == 4403


async def test_timer_is_cancelled_on_disconnect(workers, monkeypatch):
    checked = []
    monkeypatch.setattr(consumers, "carry_on", lambda token: checked.append(token))
    key = "3d" * 32
    issued = await relay_with_token(key, 1, workers)
    communicator = await connect(f"/{key}?token={issued.token}")
    await assert_served(communicator, "hello")
    await communicator.disconnect()
    watching = [t for t in asyncio.all_tasks() if "_watch_token" in repr(t.get_coro())]
    assert watching == []
    await asyncio.sleep(1.2)
    assert checked == []
