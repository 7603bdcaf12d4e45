"""Signed HTTP requests for operators and services (Django-free).

Header: ``X-Hypertuna-Signature: kid=<key id>,t=<unix seconds>,n=<nonce>,v1=<hex HMAC-SHA256>``

The MAC covers a domain-separated string binding method, path, query, a hash of the raw body, the time,
the nonce and the key id, so a signature cannot be moved to another endpoint, body or key, and a replay
is caught by the verifier's nonce cache within the freshness window.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode

HEADER = "X-Hypertuna-Signature"
DOMAIN = "hypertuna-req-v1"
_PART = re.compile(r"^(kid|t|n|v1)=([A-Za-z0-9_.:-]{1,128})$")


@dataclass(frozen=True)
class SignatureHeader:
    kid: str
    timestamp: int
    nonce: str
    signatures: tuple[str, ...]


class SignatureError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def canonical_query(query: str) -> str:
    return urlencode(sorted(parse_qsl(query, keep_blank_values=True)))


def signing_string(method: str, path: str, query: str, body: bytes, timestamp: int, nonce: str, kid: str) -> bytes:
    return "\n".join(
        [
            DOMAIN,
            method.upper(),
            path,
            canonical_query(query),
            hashlib.sha256(body).hexdigest(),
            str(timestamp),
            nonce,
            kid,
        ]
    ).encode("utf-8")


def sign(
    method: str,
    path: str,
    *,
    query: str = "",
    body: bytes = b"",
    kid: str,
    secret: str,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> str:
    """The header value for a request (used by clients, the CLI and tests)."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    nonce = nonce or secrets.token_urlsafe(16)
    mac = hmac.new(secret.encode(), signing_string(method, path, query, body, timestamp, nonce, kid), hashlib.sha256)
    return f"kid={kid},t={timestamp},n={nonce},v1={mac.hexdigest()}"


def parse_header(value: str) -> SignatureHeader:
    fields: dict[str, list[str]] = {}
    for part in value.split(","):
        match = _PART.match(part.strip())
        if not match:
            raise SignatureError("invalid-signature-header", f"Malformed {HEADER} header.")
        fields.setdefault(match.group(1), []).append(match.group(2))
    try:
        (kid,), (t,), (nonce,) = fields["kid"], fields["t"], fields["n"]
        signatures = tuple(fields["v1"])
        timestamp = int(t)
    except (KeyError, ValueError):
        raise SignatureError("invalid-signature-header", f"{HEADER} needs kid, t, n and v1.") from None
    return SignatureHeader(kid=kid, timestamp=timestamp, nonce=nonce, signatures=signatures)


def verify(
    header: SignatureHeader,
    *,
    method: str,
    path: str,
    query: str,
    body: bytes,
    secrets_for_kid: list[str],
    window: int,
    now: float | None = None,
) -> None:
    """Check freshness and MAC (any of the key's current secrets, for rotation). The caller checks the nonce."""
    now = time.time() if now is None else now
    if abs(now - header.timestamp) > window:
        raise SignatureError("signature-expired", f"Signature time is more than {window} s from the server clock.")
    if not secrets_for_kid:
        raise SignatureError("unknown-key", "Unknown signing key id.")
    message = signing_string(method, path, query, body, header.timestamp, header.nonce, header.kid)
    for secret in secrets_for_kid:
        expected = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
        if any(hmac.compare_digest(expected, candidate.lower()) for candidate in header.signatures):
            return
    raise SignatureError("invalid-signature", "Request signature does not verify.")
