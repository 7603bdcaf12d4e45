"""Golden vectors for the worker wire format (escrow/WIRE.md). Other implementations test against the same file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from escrow import crypto, wire

VECTORS = json.loads((Path(__file__).parent / "wire-vectors-v1.json").read_text())


def test_deposit_signed_bytes_and_signature():
    request = wire.parse_deposit(VECTORS["deposit"])
    assert request.signed_bytes().hex() == VECTORS["depositSignedHex"]
    crypto.verify_signature(bytes.fromhex(VECTORS["workerPublicKeyHex"]), request.signed_bytes(), request.signature)


def test_sealed_writer_package_opens_with_the_escrow_key_and_derives_the_writer():
    keys = crypto.EscrowKeys(bytes.fromhex(VECTORS["escrowBoxSeedHex"]), bytes(32))
    assert keys.public_key.hex() == VECTORS["escrowPublicKeyHex"] and keys.key_id == VECTORS["escrowKeyId"]
    writer_public = bytes.fromhex(VECTORS["writerPublicKeyHex"])
    secret = keys.open_writer_package(
        crypto.b64decode(VECTORS["deposit"]["sealedSecret"], field="s"),
        relay_key=VECTORS["relayKey"],
        writer_public=writer_public,
    )
    assert bytes(secret) == bytes.fromhex(VECTORS["writerSeedHex"]) + writer_public
    plaintext = crypto.writer_package_plaintext(VECTORS["relayKey"], writer_public, secret)
    assert bytes(plaintext).hex() == VECTORS["writerPackagePlaintextHex"]


@pytest.mark.parametrize("kind", ["heartbeat", "revoke"])
def test_statement_signed_bytes_and_signature(kind):
    statement = wire.parse_statement(kind, VECTORS[kind])
    assert statement.signed_bytes().hex() == VECTORS[f"{kind}SignedHex"]
    crypto.verify_signature(statement.worker_key, statement.signed_bytes(), statement.signature)


def test_framing_is_length_prefixed():
    assert crypto.message(b"d", ["ab", b"\x00"]) == b"d\x00" + b"\x00\x00\x00\x02ab" + b"\x00\x00\x00\x01\x00"
    # Moving a byte between fields changes the message (no ambiguity from concatenation).
    assert crypto.message(b"d", ["a", "bc"]) != crypto.message(b"d", ["ab", "c"])
