"""Relay keys as workers spell them, and the gateway paths that map to them.

A relay key is either a 64-hex Autobase key or a public identifier ``npub…:name``. Clients reach a relay
at ``/<npub…>/<name>`` (the colon form with a slash) or at ``/<64-hex key>``.
"""

from __future__ import annotations

import re

HEX64 = re.compile(r"^[0-9a-f]{64}$")
_NPUB = r"npub1[0-9a-z]{3,90}"
_NAME = r"[A-Za-z0-9][A-Za-z0-9._~-]{0,99}"
PUBLIC_IDENTIFIER = re.compile(rf"^{_NPUB}:{_NAME}$")
PUBLIC_PATH = re.compile(rf"^{_NPUB}/{_NAME}$")


def normalize_relay_key(value: object) -> str | None:
    """The canonical relay key for ``value``, or None when it is neither form.

    Hex keys are lower-cased (workers always send lowercase; accepting either avoids two rows for one
    relay). Public identifiers keep their case in the name part, as workers do.
    """
    if not isinstance(value, str):
        return None
    candidate = value.strip()
    lowered = candidate.lower()
    if HEX64.match(lowered):
        return lowered
    if PUBLIC_IDENTIFIER.match(candidate):
        return candidate
    return None


def is_hex_key(value: object) -> bool:
    return isinstance(value, str) and HEX64.match(value) is not None


def path_to_relay_key(path: str) -> str | None:
    """Map a WebSocket/HTTP path (``npub…/name``, ``npub…:name`` or a hex key) to a relay key."""
    trimmed = path.strip("/")
    if PUBLIC_PATH.match(trimmed):
        return trimmed.replace("/", ":", 1)
    return normalize_relay_key(trimmed)


def relay_key_to_path(relay_key: str) -> str:
    """The gateway path clients use for ``relay_key`` (``npub…/name`` or the hex key)."""
    return relay_key.replace(":", "/", 1) if ":" in relay_key else relay_key
