"""Identifiers of the replicas app: core keys (64 lowercase hex, whatever form a worker or the bridge sent),
stored tag values, and millisecond timestamps. Django-free."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime

_Z32_ALPHABET = "ybndrfg8ejkmcpqxot1uwisza345h769"
_Z32 = re.compile(r"^[ybndrfg8ejkmcpqxot1uwisza345h769]{52}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
#: Longest tag value (UTF-8 bytes) stored as is; longer ones are stored hashed (a B-tree entry must stay
#: well under Postgres' 2704-byte limit, nostr-rs-relay #196).
MAX_PLAIN_TAG_BYTES = 512


def _z32_decode(text: str) -> bytes:
    bits = 0
    value = 0
    out = bytearray()
    for char in text:
        value = (value << 5) | _Z32_ALPHABET.index(char)
        bits += 5
        if bits >= 8:
            bits -= 8
            out.append((value >> bits) & 0xFF)
    return bytes(out)


def normalize_core_key(value: object) -> str | None:
    """A core key as 64 lowercase hex: accepts hex (any case) or a z-base-32 hypercore id (52 chars)."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if _HEX64.match(text.lower()):
        return text.lower()
    if _Z32.match(text):
        raw = _z32_decode(text)
        if len(raw) >= 32:
            return raw[:32].hex()
    return None


def tag_key(value: str) -> str:
    """How a tag (or ``d``) value is stored and looked up: as is, unless it is long, holds NUL (Postgres
    text cannot) or starts with ``\\x01``; then ``"\\x01" + sha256 hex``. No plain value starts with
    ``\\x01``, so a plain value never collides with a hashed one."""
    if "\x00" in value or value.startswith("\x01") or len(value.encode("utf-8")) > MAX_PLAIN_TAG_BYTES:
        return "\x01" + hashlib.sha256(value.encode("utf-8")).hexdigest()
    return value


def to_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def from_ms(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1000, tz=UTC)
