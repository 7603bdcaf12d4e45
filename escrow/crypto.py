"""Every cryptographic operation of the escrow, and the only module that imports PyNaCl.

Constructions (see ``escrow/WIRE.md`` for the byte layouts other implementations must reproduce):

- **Signed messages** are Ed25519 detached signatures over a *domain-separated, length-prefixed* byte
  string: ``domain || 0x00 || (u32be(len(field)) || field)*``. A field list cannot be re-parsed as a
  different field list, and a signature made for one message type never verifies as another.
- **Deposits** seal the writer secret with a libsodium sealed box to the escrow's X25519 public key. A
  sealed box authenticates nobody and carries no associated data, so the plaintext repeats the relay key
  and writer public key (checked on open) and the worker's outer signature covers a hash of the
  ciphertext. The opened secret must also *derive* the writer public key: the escrow refuses to hold a
  value that cannot sign as the writer (the earlier design escrowed a public key by mistake).
- **Lease release** re-seals the writer secret to a one-time session X25519 key chosen by the gateway
  (response wrapping), binds lease id, relay key, fence and expiry inside the plaintext, and signs the
  envelope with the escrow's Ed25519 key.
- **Keys at rest** are stored in a SecretBox (XSalsa20-Poly1305, random 24-byte nonce) under a 32-byte
  key-encryption key that never lives next to the file in production.

Secret values leave this module as ``bytearray`` where the caller can wipe them. PyNaCl only accepts and
returns immutable ``bytes``, so transient copies exist that Python cannot overwrite; ``wipe`` is best effort
(see the runbook, "Memory hygiene").
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
from collections.abc import Iterable
from dataclasses import dataclass

import nacl.exceptions
import nacl.public
import nacl.secret
import nacl.signing
import nacl.utils

KEY_BYTES = 32
SIGNATURE_BYTES = 64
WRITER_SECRET_BYTES = 64  # libsodium Ed25519 secret key: 32-byte seed || 32-byte public key
SEALED_OVERHEAD = 48  # ephemeral public key (32) + Poly1305 tag (16)

DOMAIN_DEPOSIT = b"hypertuna/escrow/deposit/v1"
DOMAIN_HEARTBEAT = b"hypertuna/escrow/heartbeat/v1"
DOMAIN_REVOKE = b"hypertuna/escrow/revoke/v1"
DOMAIN_WRITER_PACKAGE = b"hypertuna/escrow/writer-package/v1"
DOMAIN_LEASE_SECRET = b"hypertuna/escrow/lease-secret/v1"
DOMAIN_LEASE = b"hypertuna/escrow/lease/v1"
DOMAIN_POLICY = b"hypertuna/escrow/policy/v1"
DOMAIN_CHECKPOINT = b"hypertuna/escrow/audit-checkpoint/v1"
DOMAIN_KEYSTORE = b"hypertuna/escrow/keystore/v1"


class CryptoError(ValueError):
    """A verification or decryption failure. The message never contains key material."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# --- Encodings ------------------------------------------------------------------------------------


def b64encode(data: bytes | bytearray) -> str:
    return base64.b64encode(bytes(data)).decode("ascii")


def b64decode(value: object, *, field: str, length: int | None = None, max_length: int = 4096) -> bytes:
    """Strict standard base64 (with padding). Rejects anything else instead of guessing."""
    if not isinstance(value, str) or len(value) > max_length * 2:
        raise CryptoError("invalid-encoding", f"{field} must be a base64 string.")
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise CryptoError("invalid-encoding", f"{field} is not valid base64.") from None
    if length is not None and len(raw) != length:
        raise CryptoError("invalid-encoding", f"{field} must decode to {length} bytes.")
    if len(raw) > max_length:
        raise CryptoError("invalid-encoding", f"{field} is too long.")
    return raw


def hex32(value: object, *, field: str) -> bytes:
    """A 32-byte key as 64 lowercase hex characters."""
    if not isinstance(value, str) or len(value) != 64 or value != value.lower():
        raise CryptoError("invalid-encoding", f"{field} must be 64 lowercase hex characters.")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise CryptoError("invalid-encoding", f"{field} must be 64 lowercase hex characters.") from None


def sha256_hex(data: bytes | bytearray) -> str:
    return hashlib.sha256(bytes(data)).hexdigest()


def key_id(public_key: bytes) -> str:
    """Short stable identifier of a public key (first 8 bytes of its SHA-256, hex)."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def constant_time_equal(a: bytes | bytearray, b: bytes | bytearray) -> bool:
    return hmac.compare_digest(bytes(a), bytes(b))


def message(domain: bytes, fields: Iterable[str | bytes]) -> bytes:
    """The canonical signed byte string: ``domain || 0x00 || (u32be(len) || field)*`` (UTF-8 for str)."""
    parts = [domain, b"\x00"]
    for value in fields:
        raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        parts.append(struct.pack(">I", len(raw)))
        parts.append(raw)
    return b"".join(parts)


def _split_fields(data: bytes, domain: bytes, count: int) -> list[bytes]:
    prefix = domain + b"\x00"
    if not data.startswith(prefix):
        raise CryptoError("package-malformed", "Sealed package has the wrong domain.")
    offset = len(prefix)
    fields: list[bytes] = []
    for _ in range(count):
        if offset + 4 > len(data):
            raise CryptoError("package-malformed", "Sealed package is truncated.")
        (length,) = struct.unpack_from(">I", data, offset)
        offset += 4
        if offset + length > len(data):
            raise CryptoError("package-malformed", "Sealed package is truncated.")
        fields.append(data[offset : offset + length])
        offset += length
    if offset != len(data):
        raise CryptoError("package-malformed", "Sealed package has trailing bytes.")
    return fields


def wipe(buffer: bytearray | None) -> None:
    """Overwrite a mutable secret in place (best effort: copies made by libraries are out of reach)."""
    if buffer is not None:
        for index in range(len(buffer)):
            buffer[index] = 0


# --- Ed25519 ---------------------------------------------------------------------------------------


def verify_signature(public_key: bytes, signed: bytes, signature: bytes) -> None:
    if len(public_key) != KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        raise CryptoError("invalid-signature", "Signature or key has the wrong length.")
    try:
        nacl.signing.VerifyKey(public_key).verify(signed, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, nacl.exceptions.TypeError):
        raise CryptoError("invalid-signature", "Signature does not verify.") from None


@dataclass(frozen=True)
class Keypair:
    """An Ed25519 keypair for tests and the worker client. ``secret`` is the 64-byte libsodium form."""

    public: bytes
    secret: bytearray

    def __repr__(self) -> str:
        return f"Keypair(public={self.public.hex()[:16]}…)"

    def sign(self, signed: bytes) -> bytes:
        return sign_with_secret(self.secret, signed)


def generate_signing_keypair() -> Keypair:
    key = nacl.signing.SigningKey.generate()
    return Keypair(public=bytes(key.verify_key), secret=bytearray(bytes(key) + bytes(key.verify_key)))


def signing_keypair_from_seed(seed: bytes) -> Keypair:
    key = nacl.signing.SigningKey(seed)
    return Keypair(public=bytes(key.verify_key), secret=bytearray(bytes(key) + bytes(key.verify_key)))


def sign_with_secret(secret: bytes | bytearray, signed: bytes) -> bytes:
    """Sign with a 64-byte Ed25519 secret (seed || public) or a 32-byte seed."""
    seed = bytes(secret[:KEY_BYTES])
    return nacl.signing.SigningKey(seed).sign(signed).signature


def writer_public_key_of(secret: bytes | bytearray) -> bytes:
    """The public key a 64-byte writer secret signs as, checked against its embedded half."""
    if len(secret) != WRITER_SECRET_BYTES:
        raise CryptoError("writer-secret-invalid", "Writer secret must be 64 bytes (seed || public key).")
    derived = bytes(nacl.signing.SigningKey(bytes(secret[:KEY_BYTES])).verify_key)
    if not constant_time_equal(derived, bytes(secret[KEY_BYTES:])):
        raise CryptoError("writer-secret-invalid", "Writer secret halves do not belong together.")
    return derived


# --- X25519 sealed boxes ----------------------------------------------------------------------------


@dataclass
class SessionKeypair:
    """A one-time X25519 keypair: the gateway makes one per unlock request and drops it after opening."""

    public: bytes
    _private: nacl.public.PrivateKey | None

    def __repr__(self) -> str:
        return f"SessionKeypair(public={self.public.hex()[:16]}…)"

    def discard(self) -> None:
        self._private = None


def generate_session_keypair() -> SessionKeypair:
    private = nacl.public.PrivateKey.generate()
    return SessionKeypair(public=bytes(private.public_key), _private=private)


def seal(recipient_public: bytes, plaintext: bytes | bytearray) -> bytes:
    if len(recipient_public) != KEY_BYTES:
        raise CryptoError("invalid-key", "Recipient public key must be 32 bytes.")
    return nacl.public.SealedBox(nacl.public.PublicKey(recipient_public)).encrypt(bytes(plaintext))


def _unseal(private: nacl.public.PrivateKey, ciphertext: bytes) -> bytearray:
    try:
        return bytearray(nacl.public.SealedBox(private).decrypt(ciphertext))
    except (nacl.exceptions.CryptoError, nacl.exceptions.ValueError, nacl.exceptions.TypeError):
        raise CryptoError("unseal-failed", "Sealed box does not open with this key.") from None


def writer_package_plaintext(relay_key: str, writer_public: bytes, writer_secret: bytes | bytearray) -> bytearray:
    """What a worker seals to the escrow: the header is repeated inside because a sealed box has no AD."""
    return bytearray(message(DOMAIN_WRITER_PACKAGE, [relay_key, writer_public, bytes(writer_secret)]))


def seal_writer_package(
    escrow_public: bytes, relay_key: str, writer_public: bytes, writer_secret: bytes | bytearray
) -> bytes:
    plaintext = writer_package_plaintext(relay_key, writer_public, writer_secret)
    try:
        return seal(escrow_public, plaintext)
    finally:
        wipe(plaintext)


def lease_secret_plaintext(
    *, lease_id: str, relay_key: str, fence: int, expires_at: int, writer_public: bytes, writer_secret: bytearray
) -> bytearray:
    return bytearray(
        message(
            DOMAIN_LEASE_SECRET,
            [lease_id, relay_key, str(fence), str(expires_at), writer_public, bytes(writer_secret)],
        )
    )


def lease_envelope_message(
    *,
    lease_id: str,
    relay_key: str,
    fence: int,
    expires_at: int,
    writer_public: bytes,
    sealed: bytes,
    session_public: bytes,
) -> bytes:
    return message(
        DOMAIN_LEASE,
        [
            lease_id,
            relay_key,
            str(fence),
            str(expires_at),
            writer_public.hex(),
            sha256_hex(sealed),
            session_public.hex(),
        ],
    )


@dataclass
class OpenedLease:
    """The writer secret released under a lease, held by the gateway vault. Wipe ``writer_secret``."""

    lease_id: str
    relay_key: str
    fence: int
    expires_at: int
    writer_public: bytes
    writer_secret: bytearray

    def __repr__(self) -> str:  # never print the secret
        return f"OpenedLease(lease_id={self.lease_id!r}, relay_key={self.relay_key!r}, fence={self.fence})"


def open_lease(
    session: SessionKeypair,
    *,
    sealed: bytes,
    signature: bytes,
    escrow_verify_key: bytes,
    lease_id: str,
    relay_key: str,
    fence: int,
    expires_at: int,
    writer_public: bytes,
) -> OpenedLease:
    """Gateway side: verify the escrow's envelope signature, open once, check the bound header.

    The session private key is discarded whether or not opening succeeds: a response wrapped for this
    session can be opened exactly once.
    """
    try:
        verify_signature(
            escrow_verify_key,
            lease_envelope_message(
                lease_id=lease_id,
                relay_key=relay_key,
                fence=fence,
                expires_at=expires_at,
                writer_public=writer_public,
                sealed=sealed,
                session_public=session.public,
            ),
            signature,
        )
        if session._private is None:
            raise CryptoError("session-key-used", "This session key was already used or discarded.")
        plaintext = _unseal(session._private, sealed)
    finally:
        session.discard()
    try:
        fields = _split_fields(bytes(plaintext), DOMAIN_LEASE_SECRET, 6)
        inner = (fields[0].decode(), fields[1].decode(), fields[2].decode(), fields[3].decode(), fields[4])
        if inner != (lease_id, relay_key, str(fence), str(expires_at), writer_public):
            raise CryptoError("lease-header-mismatch", "Sealed lease does not match the lease it came with.")
        secret = bytearray(fields[5])
        fields[5] = b""
        if not constant_time_equal(writer_public_key_of(secret), writer_public):
            wipe(secret)
            raise CryptoError("writer-secret-invalid", "Released secret does not sign as the writer key.")
        return OpenedLease(lease_id, relay_key, fence, expires_at, writer_public, secret)
    except UnicodeDecodeError:
        raise CryptoError("package-malformed", "Sealed lease header is not UTF-8.") from None
    finally:
        wipe(plaintext)


# --- The escrow's own keys ---------------------------------------------------------------------------


class EscrowKeys:
    """The escrow's long-term X25519 (sealing) and Ed25519 (signing) keys, loaded once per process.

    Nothing here is printable: ``repr`` shows key ids only.
    """

    def __init__(self, box_seed: bytes, sign_seed: bytes) -> None:
        self._box = nacl.public.PrivateKey(box_seed)
        self._sign = nacl.signing.SigningKey(sign_seed)
        self.public_key = bytes(self._box.public_key)
        self.verify_key = bytes(self._sign.verify_key)
        self.key_id = key_id(self.public_key)
        self.signing_key_id = key_id(self.verify_key)

    def __repr__(self) -> str:
        return f"EscrowKeys(key_id={self.key_id}, signing_key_id={self.signing_key_id})"

    def sign(self, signed: bytes) -> bytes:
        return self._sign.sign(signed).signature

    def open_writer_package(self, sealed: bytes, *, relay_key: str, writer_public: bytes) -> bytearray:
        """Open a deposit and return the writer secret, after checking every bound field.

        Raises ``CryptoError`` when the box does not open, the inner relay key or writer key differ from
        the deposit's (cut-and-paste between relays), or the secret does not derive the writer key.
        """
        plaintext = _unseal(self._box, sealed)
        try:
            fields = _split_fields(bytes(plaintext), DOMAIN_WRITER_PACKAGE, 3)
            if fields[0] != relay_key.encode("utf-8"):
                raise CryptoError("package-relay-mismatch", "Sealed package was made for another relay.")
            if not constant_time_equal(fields[1], writer_public):
                raise CryptoError("package-writer-mismatch", "Sealed package names another writer key.")
            secret = bytearray(fields[2])
            fields[2] = b""
            try:
                derived = writer_public_key_of(secret)
            except CryptoError:
                wipe(secret)
                raise
            if not constant_time_equal(derived, writer_public):
                wipe(secret)
                raise CryptoError("writer-secret-invalid", "Sealed secret does not sign as the writer key.")
            return secret
        finally:
            wipe(plaintext)

    def check_writer_package(self, sealed: bytes, *, relay_key: str, writer_public: bytes) -> None:
        wipe(self.open_writer_package(sealed, relay_key=relay_key, writer_public=writer_public))

    def release_to_session(
        self,
        sealed_deposit: bytes,
        *,
        relay_key: str,
        writer_public: bytes,
        session_public: bytes,
        lease_id: str,
        fence: int,
        expires_at: int,
    ) -> tuple[bytes, bytes]:
        """Re-seal a deposited writer secret to a gateway session key. Returns (sealed, signature)."""
        secret = self.open_writer_package(sealed_deposit, relay_key=relay_key, writer_public=writer_public)
        plaintext = lease_secret_plaintext(
            lease_id=lease_id,
            relay_key=relay_key,
            fence=fence,
            expires_at=expires_at,
            writer_public=writer_public,
            writer_secret=secret,
        )
        try:
            sealed = seal(session_public, plaintext)
        finally:
            wipe(secret)
            wipe(plaintext)
        signature = self.sign(
            lease_envelope_message(
                lease_id=lease_id,
                relay_key=relay_key,
                fence=fence,
                expires_at=expires_at,
                writer_public=writer_public,
                sealed=sealed,
                session_public=session_public,
            )
        )
        return sealed, signature


def new_escrow_seeds() -> tuple[bytes, bytes]:
    return nacl.utils.random(KEY_BYTES), nacl.utils.random(KEY_BYTES)


def encrypt_keystore(kek: bytes, box_seed: bytes, sign_seed: bytes) -> bytes:
    """SecretBox(KEK) over ``domain || box_seed || sign_seed``; the domain catches a wrong file type."""
    if len(kek) != KEY_BYTES:
        raise CryptoError("invalid-kek", "Key-encryption key must be 32 bytes.")
    return bytes(nacl.secret.SecretBox(kek).encrypt(DOMAIN_KEYSTORE + box_seed + sign_seed))


def decrypt_keystore(kek: bytes, blob: bytes) -> EscrowKeys:
    if len(kek) != KEY_BYTES:
        raise CryptoError("invalid-kek", "Key-encryption key must be 32 bytes.")
    try:
        plain = bytearray(nacl.secret.SecretBox(kek).decrypt(blob))
    except (nacl.exceptions.CryptoError, nacl.exceptions.ValueError, nacl.exceptions.TypeError):
        raise CryptoError("keystore-locked", "Escrow key file does not open with this key-encryption key.") from None
    try:
        if bytes(plain[: len(DOMAIN_KEYSTORE)]) != DOMAIN_KEYSTORE or len(plain) != len(DOMAIN_KEYSTORE) + 64:
            raise CryptoError("keystore-malformed", "Escrow key file has an unexpected layout.")
        body = bytes(plain[len(DOMAIN_KEYSTORE) :])
        return EscrowKeys(body[:KEY_BYTES], body[KEY_BYTES:])
    finally:
        wipe(plain)


def random_bytes(count: int) -> bytes:
    return nacl.utils.random(count)
