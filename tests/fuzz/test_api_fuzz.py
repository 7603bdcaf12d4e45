"""Fuzzing of every DRF operation in the gateway's OpenAPI schema: no request may answer a 500, and every
error is a JSON ``{"error": …, "message": …}`` body.

Requests carry valid credentials where the operation takes them, so fuzzed bodies get past the
signature check into validation: worker bodies are HMAC-signed over canonical JSON with the registration
secret (``{"registration"|"payload": …, "signature": …}``, or the ``x-signature`` header), operator
requests carry a ``reqsign`` header. Alongside generated JSON, hostile shapes are mixed in: nesting deeper
than the decoder's recursion limit, NUL bytes in bodies and paths, numbers too large for a double or a
datetime, wrong types, bodies that are not UTF-8.

A 503 with a JSON body is a deliberate answer here (no bridge and no escrow run in this test; the lease
endpoints keep the JavaScript gateway's ``{"status": "disabled", …}`` shape), not a crash; any other 5xx
fails. Hypothesis derandomizes under ``CI`` (see tests/conftest.py).
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any
from urllib.parse import quote

import pytest
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hypertuna import reqsign
from hypertuna.compat import hmac_hex
from hypertuna.compat.relaykeys import hex_to_npub
from tests.conftest import SECRET

pytestmark = pytest.mark.django_db

OPERATOR_KID, OPERATOR_SECRET = "fuzz", "fuzz-operator-secret"
HEX = "ab" * 32
NPUB = hex_to_npub("cd" * 32)

HOSTILE_RAW = [
    b"[" * 5000 + b"]" * 5000,
    b'{"a":' * 900 + b"1" + b"}" * 900,
    b'{"registration": {"relayKey": "\\u0000"}, "signature": "00"}',
    b'{"payload": {"relayKey": "' + HEX.encode() + b'", "ttlSeconds": ' + b"9" * 6000 + b'}, "signature": "0"}',
    b'{"payload": {"ttlSeconds": 1e400}, "signature": "0"}',
    b'{"a": NaN}',
    b"\xff\xfe\x00",
    b"[]",
    b'"just a string"',
    b"null",
    b"{",
]
STRANGE_TEXT = st.sampled_from(
    ["\x00", "a\x00b", "../admin", "//host/x", "a?token=b#c", "%00", "é", "\ud7ff", "x" * 300, "", " "]
)
HUGE_NUMBERS = st.sampled_from([10**20, -(10**20), 2**63, 1e300, -1e300, 253402300800, 1.5, -1, 0])
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    STRANGE_TEXT,
    HUGE_NUMBERS,
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
KEYS = st.one_of(
    st.just(HEX), st.just(f"{NPUB}:relay"), st.just(f"{NPUB[:-1]}q:relay"), STRANGE_TEXT, st.text(max_size=70)
)
PATHS = st.one_of(st.just(f"{NPUB}/relay"), st.just(f"{NPUB[:-1]}q/relay"), STRANGE_TEXT, st.text(max_size=40))


@st.composite
def registration(draw: Any) -> dict[str, Any]:
    metadata = {
        "gatewayPath": draw(st.one_of(PATHS, JSON)),
        "pathAliases": draw(st.one_of(st.lists(PATHS, max_size=3), JSON)),
        "ownerPubkey": draw(st.one_of(st.just("cd" * 32), st.just(NPUB), JSON)),
        "requiresAuth": draw(JSON),
    }
    return {
        "relayKey": draw(KEYS),
        "nonce": draw(st.one_of(st.just(secrets.token_hex(8)), JSON)),
        "issuedAt": draw(st.one_of(st.just(int(time.time() * 1000)), HUGE_NUMBERS, JSON)),
        "peers": draw(st.one_of(st.just(["ef" * 32]), JSON)),
        "metadata": draw(st.one_of(st.just(metadata), JSON)),
        "relayCores": draw(st.one_of(st.none(), JSON)),
    }


@st.composite
def payload(draw: Any) -> dict[str, Any]:
    fields = draw(
        st.dictionaries(
            st.sampled_from(
                [
                    "token",
                    "pubkey",
                    "scope",
                    "reason",
                    "sequence",
                    "ttlSeconds",
                    "relayAuthToken",
                    "cores",
                    "issuedAt",
                    "coreKey",
                ]
            ),
            st.one_of(HUGE_NUMBERS, JSON),
            max_size=4,
        )
    )
    return {"relayKey": draw(KEYS), **fields}


def _schema(client: Client) -> list[tuple[str, str, dict[str, Any]]]:
    schema = json.loads(client.get("/api/schema/", {"format": "json"}).content)
    return [
        (method.upper(), path, operation)
        for path, operations in sorted(schema["paths"].items())
        for method, operation in sorted(operations.items())
    ]


@pytest.fixture
def operations(settings: Any) -> list[tuple[str, str, dict[str, Any]]]:
    settings.HYPERTUNA_OPERATOR_KEYS = [f"{OPERATOR_KID}:{OPERATOR_SECRET}"]
    settings.HYPERTUNA_BRIDGE_SOCKET = "/nonexistent/hypertuna-fuzz-bridge.sock"
    found = _schema(Client())
    assert len(found) >= 10, found  # the schema really was read
    return found


def _request(method: str, template: str, operation: dict[str, Any], data: Any) -> tuple[str, bytes, dict[str, str]]:
    """URL, body and headers of one fuzzed call of ``operation``."""
    param, body_choice, raw_choice, signed_value = data
    path = template
    for parameter in operation.get("parameters", []):
        if parameter["in"] == "path":
            path = path.replace("{" + parameter["name"] + "}", quote(str(param), safe=""))
    headers: dict[str, str] = {}
    if "{" in template:
        # Worker path operations sign {"relayKey": …} (and the action) in x-signature.
        key = str(param)
        signed_object = (
            {"action": "resync-complete", "relayKey": key} if path.endswith("/resync-complete") else {"relayKey": key}
        )
        headers["x-signature"] = hmac_hex(SECRET, signed_object)
    if raw_choice is not None:
        body = raw_choice
    elif path == "/api/relays":
        body = json.dumps({"registration": signed_value, "signature": hmac_hex(SECRET, signed_value)}).encode()
    elif path.startswith("/api/relay-tokens/") or path == "/api/blind-peer/metadata":
        body = json.dumps({"payload": body_choice, "signature": hmac_hex(SECRET, body_choice)}).encode()
    else:
        body = json.dumps(body_choice).encode() if operation.get("requestBody") else b""
    security = [next(iter(s), None) for s in operation.get("security", [])]
    if "signedRequest" in security:
        bare, _, query = path.partition("?")
        headers[reqsign.HEADER] = reqsign.sign(
            method, bare, query=query, body=body, kid=OPERATOR_KID, secret=OPERATOR_SECRET
        )
    return path, body, headers


def _check(method: str, path: str, response: Any) -> None:
    where = f"{method} {path!r} -> {response.status_code}: {response.content[:300]!r}"
    assert response.status_code != 500 and (response.status_code < 500 or response.status_code == 503), where
    if response.status_code >= 400:
        assert response["content-type"].startswith("application/json"), where
        body = json.loads(response.content)
        assert isinstance(body, dict), where
        if response.status_code < 500:
            assert isinstance(body.get("error"), str) and body.get("message"), where


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    index=st.integers(min_value=0, max_value=10_000),
    param=st.one_of(KEYS, st.integers()),
    body=st.one_of(payload(), JSON),
    raw=st.one_of(st.none(), st.none(), st.sampled_from(HOSTILE_RAW)),
    signed_value=st.one_of(registration(), JSON),
)
def test_no_operation_answers_a_500_or_a_non_json_error(operations, index, param, body, raw, signed_value):
    method, template, operation = operations[index % len(operations)]
    path, content, headers = _request(method, template, operation, (param, body, raw, signed_value))
    client = Client(raise_request_exception=False)
    response = client.generic(method, path, content, content_type="application/json", headers=headers)
    _check(method, path, response)


@pytest.mark.parametrize("raw", HOSTILE_RAW, ids=range(len(HOSTILE_RAW)))
def test_every_operation_with_a_body_survives_each_hostile_shape(operations, raw):
    client = Client(raise_request_exception=False)
    for method, template, operation in operations:
        if not operation.get("requestBody"):
            continue
        path, content, headers = _request(method, template, operation, (HEX, {}, raw, {}))
        response = client.generic(method, path, content, content_type="application/json", headers=headers)
        _check(method, path, response)
