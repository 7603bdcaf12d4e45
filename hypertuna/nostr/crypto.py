"""BIP-340 Schnorr signatures over secp256k1 (NIP-01), wrapped around ``coincurve``.

The only module of the project that imports ``coincurve``, so the choice of secp256k1 library stays in
one place (PyNaCl, used by the escrow, has no secp256k1). ``coincurve`` binds libsecp256k1, the library
Bitcoin Core uses, and verification follows BIP-340 exactly (checked against the BIP's test vectors).

Verification never raises on malformed input: a public key that is not a valid x coordinate, a
signature of the wrong length or a message of any length simply does not verify.
"""

from __future__ import annotations

import functools
import os

import coincurve

SECRET_KEY_BYTES = 32
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64


def schnorr_verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """True iff ``signature`` is a valid BIP-340 signature of ``message`` by x-only ``public_key``."""
    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    key = _xonly_key(public_key)
    return key is not None and bool(key.verify(signature, message))


@functools.lru_cache(maxsize=4096)
def _xonly_key(public_key: bytes) -> coincurve.PublicKeyXOnly | None:
    """The parsed key (lifting x to the curve is a square root; a client signs many events with one key)."""
    try:
        return coincurve.PublicKeyXOnly(public_key)
    except ValueError:
        # Not the x coordinate of a curve point (or not below the field size): BIP-340 says fail.
        return None


def generate_secret_key() -> bytes:
    """A fresh random secp256k1 secret key (32 bytes from the OS CSPRNG, valid scalar)."""
    while True:
        candidate = os.urandom(SECRET_KEY_BYTES)
        try:
            coincurve.PrivateKey(candidate)
        except ValueError:
            # Zero or not below the curve order: probability ~2**-128, draw again.
            continue
        return candidate


def public_key_for(secret_key: bytes) -> bytes:
    """The 32-byte x-only (BIP-340) public key of ``secret_key``. Raises ``ValueError`` if invalid."""
    if len(secret_key) != SECRET_KEY_BYTES:
        raise ValueError("secret key must be 32 bytes")
    return bytes(coincurve.PrivateKey(secret_key).public_key_xonly.format())


def schnorr_sign(secret_key: bytes, message32: bytes, *, aux_randomness: bytes | None = None) -> bytes:
    """BIP-340 sign a 32-byte message. ``aux_randomness`` (32 bytes) defaults to fresh OS randomness.

    Raises ``ValueError`` for an invalid key, a message that is not 32 bytes or bad aux randomness.
    The secret key is never included in an exception message.
    """
    if len(secret_key) != SECRET_KEY_BYTES:
        raise ValueError("secret key must be 32 bytes")
    if len(message32) != 32:
        raise ValueError("message must be 32 bytes")
    aux = os.urandom(32) if aux_randomness is None else aux_randomness
    return bytes(coincurve.PrivateKey(secret_key).sign_schnorr(message32, aux))
