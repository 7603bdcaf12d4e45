from __future__ import annotations

import json

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from hypertuna.compat import hmac_hex
from relays import proxy, services
from relays.forwarding import PeerError, PeerStream
from relays.models import Peer
from tests.conftest import SECRET, hex_key, make_registration

pytestmark = pytest.mark.django_db(transaction=True)
DEAD, ALIVE = "0" * 64, "a" * 64  # peers are tried healthiest first, then by key


class FileWorkers:
    def __init__(self):
        self.calls = []

    async def stream(self, peer_key, method, path, *, headers, body, timeout):
        self.calls.append((peer_key, method, path, headers, body))
        if peer_key == DEAD:
            raise PeerError("Connection timeout", unreachable=True)
        if path.startswith("/drive/"):

            async def chunks():
                for i in range(4):
                    yield bytes([65 + i]) * 1000

            return PeerStream(200, {"content-type": "image/png", "connection": "keep-alive", "etag": "x"}, chunks())

        async def reply():
            yield json.dumps({"path": path, "body": json.loads(body)}).encode()

        return PeerStream(201, {"content-type": "application/json"}, reply())


@pytest.fixture
def workers(monkeypatch):
    fake = FileWorkers()
    monkeypatch.setattr(proxy, "transport", lambda: fake)
    return fake


def register(relay_key, peers):
    reg = make_registration(relay_key, peers=peers)
    services.register_relay(registration=reg, signature=hmac_hex(SECRET, reg))
    services.refresh_relay_cache(relay_key)


async def test_drive_file_streams_from_the_first_peer_that_answers(workers):
    await sync_to_async(register)(
        "npub1wamhwamhwamhwamhwamhwamhwamhwamhwamhwamhwamhwamhwamshyj388:files", [DEAD, ALIVE]
    )
    response = await AsyncClient().get(
        "/drive/npub1wamhwamhwamhwamhwamhwamhwamhwamhwamhwamhwamhwamhwamshyj388/files/abc.png",
        HTTP_COOKIE="session=secret",
    )
    assert response.status_code == 200
    content = b"".join([chunk async for chunk in response.streaming_content])
    assert content == b"A" * 1000 + b"B" * 1000 + b"C" * 1000 + b"D" * 1000
    assert response["content-type"] == "image/png" and response["etag"] == "x"
    assert "connection" not in response
    assert [c[0] for c in workers.calls] == [DEAD, ALIVE]
    assert workers.calls[1][2] == "/drive/npub1wamhwamhwamhwamhwamhwamhwamhwamhwamhwamhwamhwamhwamshyj388:files/abc.png"
    assert "cookie" not in workers.calls[1][3]
    dead = await sync_to_async(Peer.objects.get)(peer_key=DEAD)
    assert dead.unreachable_since is not None


async def test_unknown_relay_and_no_peers(workers):
    assert (await AsyncClient().get(f"/drive/{hex_key()}/x.png")).status_code == 404
    key = hex_key()
    await sync_to_async(register)(key, [])
    response = await AsyncClient().get(f"/drive/{key}/x.png")
    assert response.status_code == 503 and response.json()["error"] == "no-peers"


async def test_all_peers_unreachable_is_502(workers):
    key = hex_key()
    await sync_to_async(register)(key, [DEAD])
    response = await AsyncClient().get(f"/drive/{key}/x.png")
    assert response.status_code == 502 and response.json()["error"] == "peers-unreachable"


async def test_join_forwards_json_and_relays_the_worker_answer(workers):
    key = hex_key()
    await sync_to_async(register)(key, [ALIVE])
    response = await AsyncClient().post(f"/post/join/{key}", {"pubkey": "p"}, content_type="application/json")
    assert response.status_code == 201
    assert response.json() == {"path": f"/post/join/{key}", "body": {"pubkey": "p"}}
    bad = await AsyncClient().post(f"/post/join/{key}", "{nope", content_type="application/json")
    assert bad.status_code == 400 and bad.json()["error"] == "invalid-json"
    auth = await AsyncClient().post(f"/callback/finalize-auth/{key}", {}, content_type="application/json")
    assert auth.json()["path"] == f"/callback/finalize-auth/{key}"


async def test_pfp_needs_a_relay_hint(workers):
    response = await AsyncClient().get("/pfp/avatar.png")
    assert response.status_code == 400 and response.json()["error"] == "relay-required"


async def test_wrong_method_is_405(workers):
    assert (await AsyncClient().delete(f"/drive/{hex_key()}/x")).status_code == 405
