from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hypertuna.compat import canonical_json, decode_token, encode_token, hmac_hex, js_number, verify_hmac
from hypertuna.compat.tokens import TokenError


def test_every_canonical_vector_is_byte_identical(js_vectors):
    for case in js_vectors["canonical_json"]:
        assert canonical_json(case["input"]) == case["canonical"]


def test_every_hmac_vector_matches(js_vectors):
    for case in js_vectors["canonical_json"]:
        assert hmac_hex(js_vectors["secret"], case["input"]) == case["hmac_sha256_hex"]
        assert verify_hmac(js_vectors["secret"], case["input"], case["hmac_sha256_hex"])


def test_every_token_vector_encodes_and_decodes(js_vectors):
    for case in js_vectors["tokens"]:
        assert canonical_json(case["payload"]) == case["serialized"]
        assert encode_token(case["payload"], js_vectors["secret"]) == case["token"]
        assert decode_token(case["token"], js_vectors["secret"]) == case["payload"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, "0"),
        (-0.0, "0"),
        (1.0, "1"),
        (1.5, "1.5"),
        (-12.25, "-12.25"),
        (1e21, "1e+21"),
        (1e20, "100000000000000000000"),
        (1e-7, "1e-7"),
        (1e-6, "0.000001"),
        (123456789012345678901, "123456789012345680000"),
        (2**53 + 1, "9007199254740992"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (5e-324, "5e-324"),
        (0.1 + 0.2, "0.30000000000000004"),
        (float("nan"), "null"),
        (float("inf"), "null"),
        (10**400, "null"),
        (123e-20, "1.23e-18"),
        (1.5e300, "1.5e+300"),
    ],
)
def test_numbers_render_as_javascript_does(value, expected):
    assert js_number(value) == expected


def test_keys_sort_by_utf16_code_units_not_code_points():
    # U+FF61 sorts after U+1F600 by code point but before it in UTF-16 (surrogate 0xD83D < 0xFF61).
    assert canonical_json({"\uff61": 1, "\U0001f600": 2}) == '{"\U0001f600":2,"\uff61":1}'


def test_array_index_keys_come_first_in_numeric_order():
    assert canonical_json({"b": 1, "10": 2, "9": 3, "01": 4, "4294967295": 5, "a": 6}) == (
        '{"9":3,"10":2,"01":4,"4294967295":5,"a":6,"b":1}'
    )


def test_lone_surrogates_are_escaped_and_controls_use_lowercase_hex():
    assert canonical_json("\ud800x\x1f") == '"\\ud800x\\u001f"'


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=25,
)


def _as_js(value):
    """JavaScript's view of a JSON value: every number is a double, -0 is 0."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value) + 0.0
    if isinstance(value, list):
        return [_as_js(v) for v in value]
    return {k: _as_js(v) for k, v in value.items()}


@given(json_values)
def test_canonical_json_parses_back_to_the_same_value(value):
    assert _as_js(json.loads(canonical_json(value))) == _as_js(value)


@given(st.dictionaries(st.text(max_size=6), st.integers(), max_size=8))
def test_canonical_json_is_independent_of_insertion_order(obj):
    reversed_obj = dict(reversed(list(obj.items())))
    assert canonical_json(obj) == canonical_json(reversed_obj)


def test_tampered_token_is_invalid():
    token = encode_token({"relayKey": "a" * 64, "expiresAt": 1}, "s3cret")
    body, sig = token.split(".")
    for bad in (
        body + "." + sig[:-1] + ("0" if sig[-1] != "0" else "1"),
        body[:-2] + "AA." + sig,
        token + ".x",
        "",
        body,
        body + "." + sig.upper(),
        "!!!." + sig,
    ):
        with pytest.raises(TokenError) as info:
            decode_token(bad, "s3cret")
        assert info.value.code == "token-invalid"
    with pytest.raises(TokenError):
        decode_token(token, "other-secret")


@given(st.text(max_size=200))
def test_decode_never_raises_anything_but_token_error(text):
    try:
        decode_token(text, "secret")
    except TokenError:
        pass


def test_verify_hmac_rejects_malformed_signatures():
    assert not verify_hmac("s", {"a": 1}, None)
    assert not verify_hmac("s", {"a": 1}, "zz" * 32)
    assert not verify_hmac("s", {"a": 1}, hmac_hex("s", {"a": 1})[:-1])


@pytest.mark.parametrize("module", ["hypertuna.compat", "hypertuna.nostr"])
def test_protocol_libraries_import_without_django(module):
    code = f"import sys, {module}; assert 'django' not in sys.modules, sorted(m for m in sys.modules if 'django' in m)"
    subprocess.run([sys.executable, "-c", code], check=True)
