"""Channel-group memberships lapse unless refreshed: a consumer cancelled mid-disconnect (its ``group_discard``
lost) leaves no member behind after ``group_expiry``, while the runtime keeps open sockets' memberships fresh,
so they are still reached. On the Redis layer (a private ``redis-server``) and on the in-memory layer."""

from __future__ import annotations

import asyncio
import shutil

import pytest
from asgiref.sync import sync_to_async
from channels.layers import InMemoryChannelLayer
from channels.testing import WebsocketCommunicator

from hypertuna.asgi import application
from hypertuna.channel_layer import GatewayChannelLayer
from relays.consumers import RelayConsumer
from relays.runtime import Runtime, runtime
from tests.conftest import hex_key
from tests.hypertuna.test_redis_outage import PrivateRedis
from tests.relays.fakes import FakeTransport
from tests.relays.test_consumer import register

EXPIRY = 2
GROUP = "relay-expiry-test"


@pytest.fixture(params=["redis", "memory"])
def layer(request):
    if request.param == "memory":
        yield InMemoryChannelLayer(group_expiry=EXPIRY)
        return
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = PrivateRedis()
    server.start()
    try:
        yield GatewayChannelLayer(hosts=[{"address": server.url}], prefix="expiry", group_expiry=EXPIRY)
    finally:
        server.stop()


async def members(layer) -> int:
    if isinstance(layer, InMemoryChannelLayer):
        return len(layer.groups.get(GROUP, {}))
    return int(await layer.connection(layer.consistent_hash(GROUP)).zcard(layer._group_key(GROUP)))


async def test_lost_discards_lapse_and_refreshed_members_are_still_reached(layer):
    rt = Runtime()

    async def consumer(channel: str, joined: asyncio.Event) -> None:
        await layer.group_add(GROUP, channel)
        rt.joined(layer, GROUP, channel)
        joined.set()
        await asyncio.sleep(3600)

    live = [await layer.new_channel() for _ in range(3)]
    lost = [await layer.new_channel() for _ in range(2)]
    started = {channel: asyncio.Event() for channel in live + lost}
    tasks = {channel: asyncio.create_task(consumer(channel, started[channel])) for channel in live + lost}
    await asyncio.gather(*(event.wait() for event in started.values()))
    # Cancelled mid-disconnect: neither ``left`` nor ``group_discard`` ever runs for these two.
    for channel in lost:
        tasks[channel].cancel()
    await asyncio.gather(*(tasks[c] for c in lost), return_exceptions=True)
    assert await members(layer) == 5

    loop = asyncio.get_running_loop()
    deadline = loop.time() + EXPIRY + 1.5
    while loop.time() < deadline:
        await rt.refresh_groups()
        await asyncio.sleep(EXPIRY / 4)
    await layer.group_send(GROUP, {"type": "relay.event", "n": 1})
    assert await members(layer) == 3
    for channel in live:
        assert (await asyncio.wait_for(layer.receive(channel), 2))["n"] == 1
    assert set(rt.memberships) == set(live)
    for task in tasks.values():
        task.cancel()
    await asyncio.gather(*tasks.values(), return_exceptions=True)
    if hasattr(layer, "flush"):
        await layer.flush()


@pytest.mark.django_db(transaction=True)
async def test_a_socket_registers_its_membership_on_connect_and_drops_it_on_disconnect(monkeypatch):
    monkeypatch.setattr(RelayConsumer, "transport_factory", staticmethod(lambda: FakeTransport({})))
    monkeypatch.setattr(Runtime, "ensure_started", lambda self: None)
    key = hex_key()
    await sync_to_async(register)(key, ["9" * 64], requires_auth=False)
    communicator = WebsocketCommunicator(application, f"/{key}")
    connected, _ = await communicator.connect()
    assert connected
    memberships = runtime().memberships
    assert len(memberships) == 1
    (_, group, task) = next(iter(memberships.values()))
    assert group.startswith("relay") and task is not None and not task.done()
    await communicator.disconnect()
    assert memberships == {}
