"""The WebSocket endpoint through Channels' real ASGI stack (middleware, router, consumer, channel
layer), with workers replaced by in-memory fakes."""

from __future__ import annotations

import json

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from coincurve import PrivateKey

from hypertuna.asgi import application
from hypertuna.compat import hmac_hex
from hypertuna.nostr import sign_event
from hypertuna.webserver import SEND_MANY
from relays import services, usage
from relays.consumers import RelayConsumer
from relays.runtime import Runtime
from tests.conftest import SECRET, hex_key, make_registration
from tests.relays.fakes import FakeTransport, FakeWorker

pytestmark = pytest.mark.django_db(transaction=True)
KEY = PrivateKey()
P1 = "1" * 64


@pytest.fixture
def workers(monkeypatch, settings):
    settings.HYPERTUNA_POLL_INTERVAL_MS = 50
    pool: dict[str, FakeWorker] = {}
    monkeypatch.setattr(RelayConsumer, "transport_factory", staticmethod(lambda: FakeTransport(pool)))
    monkeypatch.setattr(Runtime, "ensure_started", lambda self: None)
    return pool


def register(relay_key, peers, requires_auth=True, **metadata):
    reg = make_registration(relay_key, peers=peers, metadata={"requiresAuth": requires_auth, **metadata})
    services.register_relay(registration=reg, signature=hmac_hex(SECRET, reg))
    services.refresh_relay_cache(relay_key)


def event(content, created_at=1_700_000_000):
    return sign_event(KEY.secret, kind=1, content=content, tags=[], created_at=created_at).to_dict()


async def connect(path):
    communicator = WebsocketCommunicator(application, path)
    connected, _ = await communicator.connect()
    assert connected
    return communicator


async def receive_json(communicator, timeout=2):
    return json.loads(await communicator.receive_from(timeout=timeout))


async def test_unknown_relay_is_closed_with_4404():
    communicator = await connect(f"/{hex_key()}")
    assert (await receive_json(communicator))[0] == "NOTICE"
    assert (await communicator.receive_output(timeout=2)) == {"type": "websocket.close", "code": 4404}


async def test_garbage_path_is_closed_with_4404():
    communicator = await connect("/not/a/relay/path")
    notice = await receive_json(communicator)
    assert notice == ["NOTICE", "Error: Invalid relay key"]
    assert (await communicator.receive_output(timeout=2))["code"] == 4404


async def test_protected_relay_needs_a_token(workers):
    key = hex_key()
    workers[P1] = FakeWorker()
    await database_sync_to_async(register)(key, [P1])
    communicator = await connect(f"/{key}")
    notice = await receive_json(communicator)
    assert notice[0] == "NOTICE" and notice[1].startswith("auth-required:")
    assert (await communicator.receive_output(timeout=2))["code"] == 4403
    bad = await connect(f"/{key}?token=abc.def")
    assert "token-invalid" in (await receive_json(bad))[1]
    assert (await bad.receive_output(timeout=2))["code"] == 4403


async def test_token_for_another_relay_is_refused(workers):
    key, other = hex_key(), hex_key()
    workers[P1] = FakeWorker()
    await database_sync_to_async(register)(key, [P1])
    await database_sync_to_async(register)(other, [P1])
    issued = await database_sync_to_async(services.issue_token)(relay_key=other, relay_auth_token="x")
    communicator = await connect(f"/{key}?token={issued.token}")
    assert "relay-mismatch" in (await receive_json(communicator))[1]


async def test_publish_and_query_through_npub_path(workers):
    key = "npub1venxvenxvenxvenxvenxvenxvenxvenxvenxvenxvenxvenxvenqv37udf:demo"
    workers[P1] = FakeWorker()
    await database_sync_to_async(register)(key, [P1])
    issued = await database_sync_to_async(services.issue_token)(relay_key=key, relay_auth_token="auth")
    communicator = await connect(
        f"/npub1venxvenxvenxvenxvenxvenxvenxvenxvenxvenxvenxvenxvenqv37udf/demo?token={issued.token}"
    )
    ev = event("hello gateway")
    await communicator.send_to(json.dumps(["EVENT", ev]))
    assert await receive_json(communicator) == ["OK", ev["id"], True, ""]
    await communicator.send_to(json.dumps(["REQ", "sub", {"kinds": [1]}]))
    got = [await receive_json(communicator), await receive_json(communicator)]
    assert got[0][0] == "EVENT" and got[0][2]["id"] == ev["id"] and got[1] == ["EOSE", "sub"]
    await communicator.disconnect()


async def test_an_answer_is_one_send_where_the_server_offers_send_many(workers):
    key = hex_key()
    workers[P1] = FakeWorker()
    await database_sync_to_async(register)(key, [P1], requires_auth=False)
    communicator = WebsocketCommunicator(application, f"/{key}")
    communicator.scope["extensions"] = {SEND_MANY: {}}  # the application has not read its scope yet
    assert (await communicator.connect())[0]
    events = [event(f"note {i}", created_at=1_700_000_000 + i) for i in range(3)]
    for ev in events:
        await communicator.send_to(json.dumps(["EVENT", ev]))
        assert await receive_json(communicator) == ["OK", ev["id"], True, ""]  # one frame: a plain send
    await communicator.send_to(json.dumps(["REQ", "sub", {"kinds": [1]}]))
    answer = await communicator.receive_output(timeout=2)
    assert answer["type"] == SEND_MANY
    frames = [json.loads(text) for text in answer["texts"]]
    assert [f[2]["id"] for f in frames[:-1]] == [ev["id"] for ev in reversed(events)]
    assert frames[-1] == ["EOSE", "sub"]
    assert await communicator.receive_nothing(timeout=0.2)
    await communicator.disconnect()


async def test_open_relay_without_token_and_no_peers_closes_1013(workers):
    key = hex_key()
    await database_sync_to_async(register)(key, [], requires_auth=False)
    communicator = await connect(f"/{key}")
    assert await receive_json(communicator) == ["NOTICE", "Error: No peers available"]
    assert (await communicator.receive_output(timeout=2))["code"] == 1013


async def test_oversized_and_binary_frames_get_notices(workers, settings):
    settings.HYPERTUNA_MAX_FRAME_BYTES = 2048
    key = hex_key()
    workers[P1] = FakeWorker()
    await database_sync_to_async(register)(key, [P1], requires_auth=False)
    communicator = await connect(f"/{key}")
    await communicator.send_to(text_data="x" * 5000)
    assert (await receive_json(communicator))[1].startswith("invalid: message too large")
    await communicator.send_to(bytes_data=b"\x00\x01")
    assert (await receive_json(communicator))[1].startswith("invalid: binary frames")
    await communicator.send_to(text_data="[")
    assert (await receive_json(communicator))[0] == "NOTICE"
    ev = event("still alive")
    await communicator.send_to(json.dumps(["EVENT", ev]))
    assert (await receive_json(communicator))[:3] == ["OK", ev["id"], True]
    await communicator.disconnect()


async def test_revocation_closes_live_sockets_with_4403(workers):
    key = hex_key()
    workers[P1] = FakeWorker()
    await database_sync_to_async(register)(key, [P1])
    keep = await database_sync_to_async(services.issue_token)(relay_key=key, relay_auth_token="a")
    lose = await database_sync_to_async(services.issue_token)(relay_key=key, relay_auth_token="b")
    kept = await connect(f"/{key}?token={keep.token}")
    lost = await connect(f"/{key}?token={lose.token}")
    result = await database_sync_to_async(services.revoke_tokens)(relay_key=key, token=lose.token, reason="stolen")
    assert result.revoked == 1 and result.disconnected == 1
    assert await receive_json(lost) == ["TOKEN", "REVOKED", {"reason": "stolen", "sequence": 0}]
    assert (await lost.receive_output(timeout=2))["code"] == 4403
    assert await kept.receive_nothing(timeout=0.3)
    ev = event("kept works")
    await kept.send_to(json.dumps(["EVENT", ev]))
    assert (await receive_json(kept))[:3] == ["OK", ev["id"], True]
    await kept.disconnect()
    again = await connect(f"/{key}?token={lose.token}")
    assert "token-revoked" in (await receive_json(again))[1]


async def test_usage_is_accounted_per_token(workers):
    key = hex_key()
    workers[P1] = FakeWorker()
    await database_sync_to_async(register)(key, [P1])
    issued = await database_sync_to_async(services.issue_token)(relay_key=key, relay_auth_token="a")
    communicator = await connect(f"/{key}?token={issued.token}")
    ev = event("count me")
    await communicator.send_to(json.dumps(["EVENT", ev]))
    await receive_json(communicator)
    await communicator.disconnect()
    await database_sync_to_async(usage.flush)()
    from relays.models import RelayToken

    row = await database_sync_to_async(RelayToken.objects.get)(sequence=issued.sequence, relay__relay_key=key)
    assert row.connections == 1 and row.frames == 1 and row.bytes_in > 100 and row.bytes_out > 10


async def test_connection_rate_limit_per_ip(workers, settings):
    settings.HYPERTUNA_RATELIMIT_IP_PER_MINUTE = 2
    key = hex_key()
    for _ in range(2):
        c = await connect(f"/{key}")
        assert (await c.receive_output(timeout=2))["type"] == "websocket.send"
    limited = await connect(f"/{key}")
    assert (await receive_json(limited))[1].startswith("rate-limited:")
    assert (await limited.receive_output(timeout=2))["code"] == 4429


async def test_frame_rate_limit_per_token(workers, settings):
    settings.HYPERTUNA_RATELIMIT_TOKEN_PER_MINUTE = 3
    key = hex_key()
    workers[P1] = FakeWorker()
    await database_sync_to_async(register)(key, [P1])
    issued = await database_sync_to_async(services.issue_token)(relay_key=key, relay_auth_token="a")
    first = await connect(f"/{key}?token={issued.token}")
    second = await connect(f"/{key}?token={issued.token}")
    for i in range(2):
        ev = event(f"n{i}")
        await first.send_to(json.dumps(["EVENT", ev]))
        assert (await receive_json(first))[:3] == ["OK", ev["id"], True]
    ev = event("third, on another socket with the same token")
    await second.send_to(json.dumps(["EVENT", ev]))
    assert (await receive_json(second))[:3] == ["OK", ev["id"], True]
    await second.send_to(json.dumps(["EVENT", event("over budget")]))
    notice = await receive_json(second)
    assert notice[0] == "NOTICE" and notice[1].startswith("rate-limited:")
    await first.disconnect()
    await second.disconnect()


async def test_token_revoked_between_middleware_and_connect_is_refused(workers, monkeypatch):
    key = hex_key()
    workers[P1] = FakeWorker()
    await database_sync_to_async(register)(key, [P1])
    issued = await database_sync_to_async(services.issue_token)(relay_key=key, relay_auth_token="a")
    from relays import middleware

    original = middleware.authenticate

    def authenticate_then_revoke(scope):
        auth = original(scope)
        services.revoke_tokens(relay_key=key, token=issued.token, reason="raced")
        return auth

    monkeypatch.setattr(middleware, "authenticate", authenticate_then_revoke)
    communicator = await connect(f"/{key}?token={issued.token}")
    assert "token-revoked" in (await receive_json(communicator))[1]
    assert (await communicator.receive_output(timeout=2))["code"] == 4403
