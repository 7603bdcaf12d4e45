"""HMAC-SHA256 signatures over canonical JSON, as workers compute them.

The key is the shared secret encoded as UTF-8; the message is the canonical JSON of the signed object
(or, when the signed value already is a string, that exact string). Signatures travel as lowercase hex.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any

from hypertuna.compat.canonical import canonical_json

_HEX_SIGNATURE = re.compile(r"^[0-9a-fA-F]{64}$")


def _message(value: Any) -> bytes:
    text = value if isinstance(value, str) else canonical_json(value)
    return text.encode("utf-8", "surrogatepass")


def hmac_hex(secret: str, value: Any) -> str:
    """Lowercase hex HMAC-SHA256 of ``value`` (a string as is, anything else as canonical JSON)."""
    return hmac.new(secret.encode("utf-8"), _message(value), hashlib.sha256).hexdigest()


def verify_hmac(secret: str, value: Any, signature: object) -> bool:
    """Constant-time check of ``signature`` against ``value``; malformed signatures are simply invalid."""
    if not isinstance(signature, str) or not _HEX_SIGNATURE.match(signature):
        return False
    return hmac.compare_digest(hmac_hex(secret, value), signature.lower())
