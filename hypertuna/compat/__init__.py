"""Wire compatibility with Hypertuna workers: canonical JSON, HMAC signatures, relay token codec.

Django-free on purpose: the same code is used by the API, the WebSocket middleware and the tests, and a
test asserts that importing this package does not import Django.
"""

from hypertuna.compat.canonical import canonical_json, js_number
from hypertuna.compat.relaykeys import normalize_relay_key, path_to_relay_key, relay_key_to_path
from hypertuna.compat.signing import hmac_hex, verify_hmac
from hypertuna.compat.tokens import TokenError, decode_token, encode_token, token_digest

__all__ = [
    "TokenError",
    "canonical_json",
    "decode_token",
    "encode_token",
    "hmac_hex",
    "js_number",
    "normalize_relay_key",
    "path_to_relay_key",
    "relay_key_to_path",
    "token_digest",
    "verify_hmac",
]
