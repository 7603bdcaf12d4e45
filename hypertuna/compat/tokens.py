"""Relay access token codec: ``base64url(canonical JSON payload) + "." + hex HMAC``.

The HMAC is checked over the exact decoded bytes of the first part (not over a re-serialisation), in
constant time, before the payload is parsed; any structural problem yields the same ``token-invalid``
code so that a forger learns nothing about which check failed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from typing import Any

from hypertuna.compat.canonical import canonical_json

_B64URL = re.compile(r"^[A-Za-z0-9_-]+$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
MAX_TOKEN_LENGTH = 4096


class TokenError(ValueError):
    """A token that cannot be trusted; ``code`` is the wire error code."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def _b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    if not _B64URL.match(text) or len(text) % 4 == 1:
        raise TokenError("token-invalid")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise TokenError("token-invalid") from None


def encode_token(payload: dict[str, Any], secret: str) -> str:
    serialized = canonical_json(payload).encode("utf-8")
    signature = hmac.new(secret.encode("utf-8"), serialized, hashlib.sha256).hexdigest()
    return f"{_b64url_encode(serialized)}.{signature}"


def decode_token(token: object, secret: str) -> dict[str, Any]:
    """Return the payload of an authentic token or raise ``TokenError("token-invalid")``.

    Authentic means only that the HMAC matches: expiry, relay and revocation are the caller's checks.
    """
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH or token.count(".") != 1:
        raise TokenError("token-invalid")
    body, signature = token.split(".")
    if not _HEX64.match(signature):
        raise TokenError("token-invalid")
    serialized = _b64url_decode(body)
    expected = hmac.new(secret.encode("utf-8"), serialized, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature):
        raise TokenError("token-invalid")
    try:
        payload = json.loads(serialized.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise TokenError("token-invalid") from None
    if not isinstance(payload, dict):
        raise TokenError("token-invalid")
    return payload


def token_digest(token: str) -> str:
    """SHA-256 hex of a token: what the database stores, so a leaked table yields no usable token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()
