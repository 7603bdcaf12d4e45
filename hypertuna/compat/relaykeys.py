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
# Every character a relay path may hold (URL-unreserved, plus ":" "/" "@" "+"): no controls, no NUL,
# no "?", "#", "%" or whitespace.
PATH_CHARS = re.compile(r"^[A-Za-z0-9._~:/@+-]+$")


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


_BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_BECH32_GEN = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


def _polymod(values: list[int]) -> int:
    chk = 1
    for value in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ value
        for i, gen in enumerate(_BECH32_GEN):
            chk ^= gen if (top >> i) & 1 else 0
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def npub_to_hex(npub: object) -> str | None:
    """The 32-byte public key (64 hex) an ``npub1…`` (NIP-19, bech32) encodes, or None when it is not one:
    wrong prefix, characters, length, padding or checksum."""
    if not isinstance(npub, str) or not npub.startswith("npub1") or len(npub) != 63:
        return None
    try:
        data = [_BECH32.index(c) for c in npub[5:]]
    except ValueError:
        return None
    if _polymod(_hrp_expand("npub") + data) != 1:
        return None
    acc, bits, out = 0, 0, bytearray()
    for value in data[:-6]:
        acc = acc << 5 | value
        bits += 5
        if bits >= 8:
            bits -= 8
            out.append(acc >> bits & 0xFF)
    if len(out) != 32 or bits >= 5 or acc & ((1 << bits) - 1):
        return None
    return out.hex()


def hex_to_npub(pubkey_hex: str) -> str:
    """The ``npub1…`` spelling of a 64-hex public key."""
    data: list[int] = []
    acc, bits = 0, 0
    for byte in bytes.fromhex(pubkey_hex):
        acc = acc << 8 | byte
        bits += 8
        while bits >= 5:
            bits -= 5
            data.append(acc >> bits & 31)
    if bits:
        data.append(acc << (5 - bits) & 31)
    checksum = _polymod([*_hrp_expand("npub"), *data, 0, 0, 0, 0, 0, 0]) ^ 1
    data += [checksum >> 5 * (5 - i) & 31 for i in range(6)]
    return "npub1" + "".join(_BECH32[d] for d in data)


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


def client_path(path: str) -> str | None:
    """The relay path a client's URL names: one leading ``/`` and at most one trailing ``/`` dropped (NDK
    appends one to every relay URL), or None when the rest is empty or has an empty (``//``), ``.`` or
    ``..`` segment. The path arrives percent-decoded, so ``%2F`` counts as ``/`` and ``%2e%2e`` as ``..``."""
    trimmed = path.removeprefix("/")
    trimmed = trimmed.removesuffix("/")
    if not trimmed or any(segment in ("", ".", "..") for segment in trimmed.split("/")):
        return None
    return trimmed


def printable_path(relay_key: str, gateway_path: str = "") -> str:
    """The path to print in a relay URL so that every major client accepts it.

    NDK refuses any relay URL containing ``/npub1`` (it takes such URLs for filter relays), so a relay
    with a hex key is printed under that key; otherwise under its claimed ``gatewayPath`` when that holds
    no npub, else its ``npub…/name`` path (the only one it has)."""
    if HEX64.match(relay_key):
        return relay_key
    if gateway_path and "npub1" not in gateway_path:
        return gateway_path
    return relay_key_to_path(relay_key)


def relay_url(ws_base: str, relay_key: str, *, gateway_path: str = "", token: str | None = None) -> str:
    """``ws(s)://host/<printable path>[?token=…]``: the relay URL to hand to Nostr clients."""
    url = f"{ws_base.rstrip('/')}/{printable_path(relay_key, gateway_path)}"
    return f"{url}?token={token}" if token else url


# --- Gateway paths a registration claims -------------------------------------------------------------

_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._~:@+-]{0,99}$")
MAX_SEGMENTS = 4
# First segments the gateway serves itself: a relay path must not look like one of its routes.
RESERVED_SEGMENTS = frozenset(
    {"admin", "api", "callback", "drive", "escrow", "health", "metrics", "pfp", "post", "ready", "static"}
)


class PathRefused(ValueError):
    """A gateway path that is not acceptable; ``code`` is the wire error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def canonical_path(value: str) -> str:
    """One spelling per path: the colon form of a public identifier becomes ``npub…/name`` and a hex key is
    lower-cased; surrounding slashes are dropped. No validation (see ``parse_gateway_path``)."""
    trimmed = value.strip("/")
    if PUBLIC_IDENTIFIER.match(trimmed):
        return trimmed.replace(":", "/", 1)
    if HEX64.match(trimmed.lower()):
        return trimmed.lower()
    return trimmed


def parse_gateway_path(value: object) -> str:
    """Validate a ``gatewayPath`` or path alias as a worker sends it and return its canonical form.

    One leading slash is tolerated (workers strip it themselves); otherwise the path is 1-4 segments of
    URL-unreserved characters, each starting with a letter or digit, so no ``.``/``..`` segment, no empty
    segment (``//host``), no query, fragment, percent-escape or control character. An ``npub1…`` first
    segment must be a valid NIP-19 public key (bech32 checksum).
    """
    if not isinstance(value, str) or not value or len(value) > 200:
        raise PathRefused("invalid-gateway-path", "gatewayPath must be a non-empty string of at most 200 characters.")
    raw = value[1:] if value.startswith("/") and not value.startswith("//") else value
    raw = raw[:-1] if raw.endswith("/") and not raw.endswith("//") else raw
    if PUBLIC_IDENTIFIER.match(raw):
        raw = raw.replace(":", "/", 1)
    segments = raw.split("/")
    if len(segments) > MAX_SEGMENTS or not all(_SEGMENT.match(s) for s in segments):
        raise PathRefused(
            "invalid-gateway-path",
            f"gatewayPath {value[:80]!r} is not a relay path: 1-{MAX_SEGMENTS} segments of [A-Za-z0-9._~:@+-], "
            "each starting with a letter or digit (no '..', '//', '?', '#', '%').",
        )
    if segments[0].lower() in RESERVED_SEGMENTS:
        raise PathRefused("invalid-gateway-path", f"gatewayPath must not start with the gateway route {segments[0]!r}.")
    if segments[0].startswith("npub1") and npub_to_hex(segments[0]) is None:
        raise PathRefused("invalid-gateway-path", "The npub in gatewayPath is not a valid NIP-19 key (bad checksum).")
    return canonical_path(raw)


def path_owner(path: str) -> str | None:
    """The public key (hex) a canonical ``npub…/…`` path names as its owner; None for other paths."""
    first = path.split("/", 1)[0]
    return npub_to_hex(first) if first.startswith("npub1") else None


def names_a_relay_key(path: str) -> bool:
    """Whether a canonical path is itself a relay key's path (a hex key or ``npub…/name``)."""
    return HEX64.match(path) is not None or PUBLIC_PATH.match(path) is not None
