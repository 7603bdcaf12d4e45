"""Relay URLs as Nostr client kits rewrite them: NDK appends ``/`` to every relay URL (after the query too),
so ``/<path>/`` and ``?token=<token>/`` reach the same relay with the same token. Nothing else is loosened:
``//``, ``.``/``..`` segments (also percent-encoded) and unknown relays are still closed with 4404, and a
value with two slashes or another token is still refused."""

from __future__ import annotations

import json

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from hypertuna.asgi import application
from hypertuna.compat.relaykeys import client_path, printable_path, relay_url
from relays import services
from relays.middleware import RelayLookup, find_relay
from tests.conftest import hex_key
from tests.relays.fakes import FakeWorker
from tests.relays.test_consumer import P1, register, workers  # noqa: F401  (fixture)

pytestmark = pytest.mark.django_db(transaction=True)
NPUB = "npub1venxvenxvenxvenxvenxvenxvenxvenxvenxvenxvenxvenxvenqv37udf"


async def _opened(path: str) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(application, path)
    assert (await communicator.connect())[0]
    return communicator


async def _serves(path: str) -> None:
    """The socket at ``path`` is served: a REQ gets its EOSE."""
    communicator = await _opened(path)
    await communicator.send_to(json.dumps(["REQ", "s", {"kinds": [1]}]))
    assert json.loads(await communicator.receive_from(timeout=2)) == ["EOSE", "s"]
    await communicator.disconnect()


async def _closed(path: str, code: int) -> str:
    communicator = await _opened(path)
    notice = json.loads(await communicator.receive_from(timeout=2))
    assert notice[0] == "NOTICE"
    assert (await communicator.receive_output(timeout=2)) == {"type": "websocket.close", "code": code}
    return str(notice[1])


async def _relay(key: str) -> str:
    await database_sync_to_async(register)(key, [P1])
    issued = await database_sync_to_async(services.issue_token)(relay_key=key, relay_auth_token="auth")
    return issued.token


async def test_ndk_form_of_a_hex_url_reaches_the_relay_with_its_token(workers):  # noqa: F811
    workers[P1] = FakeWorker()
    key = hex_key()
    token = await _relay(key)
    await _serves(f"/{key}?token={token}")
    await _serves(f"/{key}?token={token}/")
    await _serves(f"/{key}/?token={token}/")
    await _serves(f"/{key}%2F?token={token}")  # the path arrives decoded: %2F is "/"


async def test_trailing_slashes_on_an_npub_path(workers):  # noqa: F811
    workers[P1] = FakeWorker()
    token = await _relay(f"{NPUB}:demo")
    await _serves(f"/{NPUB}/demo/?token={token}/")
    await _serves(f"/{NPUB}:demo/?token={token}")


async def test_only_one_trailing_slash_of_a_token_is_dropped(workers):  # noqa: F811
    workers[P1] = FakeWorker()
    key, other = hex_key(), hex_key()
    token = await _relay(key)
    other_token = await _relay(other)
    assert "token-invalid" in await _closed(f"/{key}?token={token}//", 4403)
    assert "token-invalid" in await _closed(f"/{key}?token=/{token}", 4403)
    assert "token-invalid" in await _closed(f"/{key}?token={token[:-1]}/", 4403)
    assert "relay-mismatch" in await _closed(f"/{key}?token={other_token}/", 4403)


ADVERSARIAL = (
    "/{key}//",
    "/../{key}",
    "/{key}/..",
    "/./{key}",
    "/%2e%2e/{key}",
    "/%2E%2E%2F{key}",
    "/{key}%2F%2F",
    "/{npub}//demo",
    "/{npub}/./demo",
)


async def test_adversarial_paths_are_closed_4404(workers):  # noqa: F811
    workers[P1] = FakeWorker()
    key = hex_key()
    await database_sync_to_async(register)(key, [P1], requires_auth=False)
    await database_sync_to_async(register)(f"{NPUB}:demo", [P1], requires_auth=False)
    await _serves(f"/{key}/")
    await _serves(f"/{NPUB}/demo/")
    for template in ADVERSARIAL:
        path = template.format(key=key, npub=NPUB)
        assert await _closed(path, 4404) == "Error: Invalid relay key", path


async def test_unknown_relay_with_a_trailing_slash_is_still_4404(workers):  # noqa: F811
    notice = await _closed(f"/{hex_key()}/", 4404)
    assert notice == "Error: Relay not registered with gateway"
    assert await _closed(f"/{NPUB}/nothing/", 4404) == "Error: Invalid relay key"


def test_a_leading_double_slash_names_no_relay():
    # (A test communicator would read "//<key>" as a host; the web server passes it on as the path.)
    key = hex_key()
    register(key, [P1], requires_auth=False)
    assert find_relay(f"/{key}/").relay_key == key
    assert find_relay(f"//{key}") == RelayLookup()


def test_client_path_drops_one_slash_each_side():
    assert client_path("/abc/") == "abc"
    assert client_path("abc") == "abc"
    assert client_path(f"/{NPUB}/demo/") == f"{NPUB}/demo"
    for bad in ("", "/", "//", "//abc", "/abc//", "/a//b", "/../a", "/a/.", "/a/../b"):
        assert client_path(bad) is None, bad


def test_printed_url_avoids_npub_paths():
    key = hex_key()
    assert printable_path(key, f"{NPUB}/demo") == key
    assert relay_url("ws://127.0.0.1:8000/", key, token="t.0") == f"ws://127.0.0.1:8000/{key}?token=t.0"
    assert printable_path(f"{NPUB}:demo", "demo-relay") == "demo-relay"
    assert printable_path(f"{NPUB}:demo", f"{NPUB}/demo") == f"{NPUB}/demo"
    assert relay_url("wss://gw", f"{NPUB}:demo") == f"wss://gw/{NPUB}/demo"
