"""Signed-event factories for the nostr tests: real BIP-340 signatures from deterministic keys."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import coincurve

from hypertuna.nostr import Event, compute_id


def secret_key(seed: str) -> bytes:
    """A valid secp256k1 secret derived from ``seed`` (sha256 is below the curve order w.o.p.)."""
    return hashlib.sha256(seed.encode()).digest()


def pubkey_hex(seed: str) -> str:
    return coincurve.PrivateKey(secret_key(seed)).public_key_xonly.format().hex()


def make_event(
    seed: str = "alice",
    *,
    kind: int = 1,
    content: str = "hello",
    tags: Sequence[Sequence[str]] = (),
    created_at: int = 1_700_000_000,
) -> Event:
    """Sign with coincurve directly (not through the code under test) so the tests check it.

    The BIP-340 auxiliary randomness is fixed, so equal arguments give identical events.
    """
    key = coincurve.PrivateKey(secret_key(seed))
    pubkey = key.public_key_xonly.format().hex()
    tag_tuple = tuple(tuple(tag) for tag in tags)
    event_id = compute_id(pubkey, created_at, kind, tag_tuple, content)
    sig = key.sign_schnorr(bytes.fromhex(event_id), bytes(32)).hex()
    return Event(id=event_id, pubkey=pubkey, created_at=created_at, kind=kind, tags=tag_tuple, content=content, sig=sig)


def event_dict(**overrides: Any) -> dict[str, Any]:
    """A valid signed event as a JSON-ready dict, with fields replaced by ``overrides`` (unsigned)."""
    data = make_event().to_dict()
    data.update(overrides)
    return data
