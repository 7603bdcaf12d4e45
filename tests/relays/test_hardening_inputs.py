"""Hostile input that used to answer an HTML 500 (or HTML 400) without any credentials: deep JSON, NUL
bytes in paths, non-finite numbers, oversized bodies. Each answer is a JSON error with a reason."""

from __future__ import annotations

import json

import pytest
from channels.testing import WebsocketCommunicator
from django.test import AsyncClient, Client

from hypertuna.asgi import application
from hypertuna.compat.relaykeys import hex_to_npub
from hypertuna.parsers import MAX_DEPTH, JSONRejected, parse_json
from relays import selectors
from tests.conftest import hex_key, make_registration, signed, signed_payload

pytestmark = pytest.mark.django_db

RELAY = hex_to_npub("7e" * 32) + ":files"
DEEP = "[" * 5000 + "]" * 5000
# Deep enough for the standard decoder to accept, too deep for what walks the value afterwards.
ALMOST = '{"registration":' + "[" * 900 + "]" * 900 + ',"signature":"00"}'
DRF_POSTS = [
    "/api/relays",
    "/api/relay-tokens/issue",
    "/api/relay-tokens/refresh",
    "/api/relay-tokens/revoke",
    "/api/blind-peer/metadata",
]


def _json_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content[:300]
    assert response["content-type"].startswith("application/json"), response.content[:300]
    body = response.json()
    assert body["error"] == code and body["message"], body
    return body


@pytest.mark.parametrize("url", DRF_POSTS)
@pytest.mark.parametrize("body", [DEEP, ALMOST], ids=["recursion", "under-recursion-limit"])
def test_deeply_nested_json_is_invalid_json_not_a_500(url, body):
    response = Client(raise_request_exception=False).post(url, body, content_type="application/json")
    _json_error(response, 400, "invalid-json")


@pytest.mark.parametrize(
    "raw",
    ['{"a": 1e400}', '{"a": -1e999}', '{"a": NaN}', '{"a": Infinity}', '{"a": "x\\u0000y"}', '{"\\u0000": 1}'],
)
def test_non_finite_numbers_and_nul_strings_are_refused(api, raw):
    response = api.post("/api/relays", raw, content_type="application/json")
    _json_error(response, 400, "invalid-json")


def test_signed_registration_with_a_nul_byte_is_refused_before_storage(api):
    """PostgreSQL JSONB cannot store U+0000: a signed body holding one must not reach the database."""
    registration = make_registration(hex_key(), metadata={"name": "a\x00b"})
    response = api.post("/api/relays", signed(registration), format="json")
    _json_error(response, 400, "invalid-json")


def test_signed_token_payload_with_a_huge_integer_is_refused(api):
    raw = json.dumps(signed_payload({"relayKey": hex_key(), "ttlSeconds": 1})).replace(
        '"ttlSeconds": 1', '"ttlSeconds": ' + "9" * 5000
    )
    response = api.post("/api/relay-tokens/issue", raw, content_type="application/json")
    _json_error(response, 400, "invalid-json")


def test_parse_json_bounds():
    nested = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert parse_json(nested) is not None
    with pytest.raises(JSONRejected, match="deeper"):
        parse_json("[" + nested + "]")
    with pytest.raises(JSONRejected, match="deeper"):
        parse_json("[" * 3000)  # the decoder's own recursion limit
    with pytest.raises(JSONRejected):
        parse_json(b"\xff\xfe")
    assert parse_json(b'{"a": [1.5, "b"]}') == {"a": [1.5, "b"]}


@pytest.mark.parametrize("url", DRF_POSTS)
def test_oversized_body_answers_json_413(url, settings):
    body = json.dumps({"registration": {"pad": "x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 10)}})
    response = Client(raise_request_exception=False).post(url, body, content_type="application/json")
    body = _json_error(response, 413, "body-too-large")
    assert body["limit"] == settings.DATA_UPLOAD_MAX_MEMORY_SIZE


@pytest.mark.django_db(transaction=True)
async def test_oversized_join_body_answers_json_413(settings):
    await _register(RELAY)
    body = "x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 10)
    response = await AsyncClient().post("/post/join/" + RELAY.replace(":", "/"), body, content_type="application/json")
    _json_error(response, 413, "body-too-large")


@pytest.mark.django_db(transaction=True)
async def test_deep_join_body_is_invalid_json():
    await _register(RELAY)
    response = await AsyncClient().post("/post/join/" + RELAY.replace(":", "/"), DEEP, content_type="application/json")
    _json_error(response, 400, "invalid-json")


async def _register(relay_key: str) -> None:
    from asgiref.sync import sync_to_async

    from hypertuna.compat import hmac_hex
    from relays import services
    from tests.conftest import SECRET

    def register() -> None:
        reg = make_registration(relay_key)
        services.register_relay(registration=reg, signature=hmac_hex(SECRET, reg))
        services.refresh_relay_cache(relay_key)

    await sync_to_async(register)()


@pytest.mark.parametrize("path", ["\x00", "npub1abc/\x00", "a\x00b", "a b", "a?token=x", "%00", "a#b"])
def test_paths_outside_the_path_alphabet_never_reach_the_database(path, django_assert_num_queries):
    with django_assert_num_queries(0):
        assert selectors.resolve_path(path) is None


@pytest.mark.parametrize(
    ("method", "url"),
    [("get", "/drive/%00/x"), ("get", "/drive/a%00b/x"), ("post", "/post/join/%00"), ("get", "/pfp/x?relay=%00")],
)
def test_nul_bytes_in_proxy_paths_answer_json_404(method, url, django_assert_num_queries):
    client = Client(raise_request_exception=False)
    with django_assert_num_queries(0):
        response = getattr(client, method)(url)
    _json_error(response, 404, "relay-not-registered")


@pytest.mark.django_db(transaction=True)
async def test_nul_byte_websocket_path_is_closed_with_4404():
    communicator = WebsocketCommunicator(application, "/npub1abc/\x00")
    connected, _ = await communicator.connect()
    assert connected
    notice = json.loads(await communicator.receive_from(timeout=2))
    assert notice == ["NOTICE", "Error: Invalid relay key"]
    assert (await communicator.receive_output(timeout=2)) == {"type": "websocket.close", "code": 4404}
