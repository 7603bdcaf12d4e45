"""Redis down and back, and a burst of connections, on a private ``redis-server`` this test starts, stops
and starts again (never the machine's shared one): the APIs answer JSON 503 with Retry-After, WebSockets get
a NOTICE and close 1013, everything works again once Redis is back, and 300 simultaneous connects all open
and leave no stale group member behind."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time

import pytest
import redis
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator

from hypertuna.asgi import application
from relays import services
from relays.consumers import RelayConsumer
from relays.models import Relay
from relays.runtime import Runtime
from relays.services import relay_group
from tests.conftest import hex_key, make_registration, signed
from tests.relays.fakes import FakeTransport, FakeWorker
from tests.relays.test_consumer import register

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed"),
]
PEER = "3" * 64


class PrivateRedis:
    def __init__(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("private redis-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def redis_backed(settings, monkeypatch):
    server = PrivateRedis()
    server.start()
    try:
        settings.CACHES = {
            "default": {
                "BACKEND": "django_redis.cache.RedisCache",
                "LOCATION": server.url,
                "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 2, "SOCKET_TIMEOUT": 2},
            }
        }
        settings.CHANNEL_LAYERS = {
            "default": {
                "BACKEND": "hypertuna.channel_layer.GatewayChannelLayer",
                "CONFIG": {"hosts": [{"address": server.url, "socket_timeout": None}], "prefix": "outage"},
            }
        }
        settings.HYPERTUNA_POLL_INTERVAL_MS = 50
        pool = {PEER: FakeWorker()}
        monkeypatch.setattr(RelayConsumer, "transport_factory", staticmethod(lambda: FakeTransport(pool)))
        monkeypatch.setattr(Runtime, "ensure_started", lambda self: None)
        yield server
    finally:
        server.stop()


def test_registration_answers_json_503_with_retry_after_and_recovers(redis_backed, api):
    key = hex_key()
    assert api.post("/api/relays", signed(make_registration(key, peers=[PEER])), format="json").status_code in (
        200,
        201,
    )
    redis_backed.stop()
    response = api.post("/api/relays", signed(make_registration(key, peers=[PEER])), format="json")
    assert response.status_code == 503
    assert response["Content-Type"].startswith("application/json")
    assert response.json()["error"] == "service-unavailable"
    assert int(response["Retry-After"]) > 0
    redis_backed.start()
    deadline = time.monotonic() + 5  # the recovery promise of the README
    status = None
    while time.monotonic() < deadline:
        status = api.post("/api/relays", signed(make_registration(key, peers=[PEER])), format="json").status_code
        if status in (200, 201):
            break
        time.sleep(0.2)
    assert status in (200, 201)


async def _open(key):
    issued = await database_sync_to_async(services.issue_token)(relay_key=key, relay_auth_token="auth")
    communicator = WebsocketCommunicator(application, f"/{key}?token={issued.token}")
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    return communicator


async def _notice_then_1013(communicator):
    notice = json.loads(await communicator.receive_from(timeout=10))
    assert notice[0] == "NOTICE" and "try again later" in notice[1]
    assert await communicator.receive_output(timeout=10) == {"type": "websocket.close", "code": 1013}


async def test_a_new_handshake_while_redis_is_down_gets_a_notice_and_1013(redis_backed):
    key = hex_key()
    await database_sync_to_async(register)(key, [PEER])
    issued = await database_sync_to_async(services.issue_token)(relay_key=key, relay_auth_token="auth")
    redis_backed.stop()
    communicator = WebsocketCommunicator(application, f"/{key}?token={issued.token}")
    connected, _ = await communicator.connect(timeout=10)
    assert connected  # accepted only to be told why it closes
    await _notice_then_1013(communicator)


async def test_an_open_socket_gets_a_notice_and_1013_when_redis_goes_and_new_ones_work_when_it_is_back(
    redis_backed,
):
    key = hex_key()
    await database_sync_to_async(register)(key, [PEER])
    communicator = await _open(key)
    await communicator.send_to(json.dumps(["REQ", "s", {"kinds": [1]}]))
    assert json.loads(await communicator.receive_from(timeout=5))[0] in ("NOTICE", "EOSE")
    redis_backed.stop()
    await _notice_then_1013(communicator)
    redis_backed.start()
    get_channel_layer()  # the same layer object: its pools must heal on their own
    deadline = time.monotonic() + 5
    while True:
        again = await _open(key)
        await again.send_to(json.dumps(["REQ", "t", {"kinds": [1]}]))
        first = json.loads(await again.receive_from(timeout=5))
        if first[0] != "NOTICE" or "try again later" not in first[1] or time.monotonic() > deadline:
            break
        await again.disconnect()
    assert first[0] in ("NOTICE", "EOSE") and "try again later" not in first[1]
    await again.disconnect()


BURST = 300


async def test_a_burst_of_connects_all_open_and_a_mass_disconnect_leaves_no_stale_group_member(redis_backed):
    key = hex_key()
    await database_sync_to_async(register)(key, [PEER])
    issued = await database_sync_to_async(services.issue_token)(relay_key=key, relay_auth_token="auth")
    relay_id = await database_sync_to_async(lambda: Relay.objects.get(relay_key=key).id)()
    clients = [WebsocketCommunicator(application, f"/{key}?token={issued.token}") for _ in range(BURST)]
    results = await asyncio.gather(*(c.connect(timeout=60) for c in clients))
    assert all(connected for connected, _ in results)
    # Every socket is a working session: none was told to come back later.
    await asyncio.gather(*(c.send_to(json.dumps(["REQ", "s", {"kinds": [1]}])) for c in clients))
    firsts = await asyncio.gather(*(c.receive_from(timeout=60) for c in clients))
    assert not [f for f in firsts if "try again later" in f]
    group_key = f"outage:group:{relay_group(relay_id)}".encode()
    store = redis.Redis.from_url(redis_backed.url)
    assert store.zcard(group_key) == BURST
    await asyncio.gather(*(c.disconnect() for c in clients))
    assert store.zcard(group_key) == 0
