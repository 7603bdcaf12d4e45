"""Loads the escrow's long-term keys once per process from a file encrypted under a key-encryption key.

The key-encryption key (KEK) comes from ``HYPERTUNA_ESCROW_KEK`` (64 hex characters) or
``HYPERTUNA_ESCROW_KEK_FILE`` (a file holding the same). Production must supply one of them from a secret
store, never from the same disk as the key file. Without either, a development KEK is generated next to the
key file with mode 0600 and system check ``escrow.W001`` warns: that protects against nothing but keeps the
embedded default runnable.

The key file is created on first load when it does not exist (the public key id is logged, nothing else).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from django.conf import settings

from escrow import crypto

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_loaded: crypto.EscrowKeys | None = None


class KeystoreError(RuntimeError):
    """The escrow cannot load its keys (the message names the file, never key material)."""


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def development_kek_path() -> Path:
    return Path(settings.HYPERTUNA_ESCROW_KEY_FILE).with_name("escrow-dev-kek.hex")


def kek_is_development() -> bool:
    return not settings.HYPERTUNA_ESCROW_KEK and not settings.HYPERTUNA_ESCROW_KEK_FILE


def _parse_kek(value: str, source: str) -> bytes:
    value = value.strip()
    try:
        kek = bytes.fromhex(value)
    except ValueError:
        raise KeystoreError(f"{source} must hold 64 hex characters (a 32-byte key).") from None
    if len(kek) != crypto.KEY_BYTES:
        raise KeystoreError(f"{source} must hold 64 hex characters (a 32-byte key).")
    return kek


def _load_kek() -> bytes:
    if settings.HYPERTUNA_ESCROW_KEK:
        return _parse_kek(settings.HYPERTUNA_ESCROW_KEK, "HYPERTUNA_ESCROW_KEK")
    if settings.HYPERTUNA_ESCROW_KEK_FILE:
        path = Path(settings.HYPERTUNA_ESCROW_KEK_FILE)
        try:
            return _parse_kek(path.read_text(encoding="ascii"), f"HYPERTUNA_ESCROW_KEK_FILE ({path})")
        except OSError as exc:
            raise KeystoreError(f"Cannot read HYPERTUNA_ESCROW_KEK_FILE ({path}): {exc.strerror}") from None
    path = development_kek_path()
    if not path.exists():
        _write_private(path, crypto.random_bytes(crypto.KEY_BYTES).hex().encode("ascii"))
        logger.warning("escrow: generated a development key-encryption key", extra={"path": str(path)})
    return _parse_kek(path.read_text(encoding="ascii"), f"development KEK ({path})")


def _load() -> crypto.EscrowKeys:
    kek = _load_kek()
    path = Path(settings.HYPERTUNA_ESCROW_KEY_FILE)
    if not path.exists():
        box_seed, sign_seed = crypto.new_escrow_seeds()
        _write_private(path, crypto.encrypt_keystore(kek, box_seed, sign_seed))
        keys = crypto.EscrowKeys(box_seed, sign_seed)
        logger.warning("escrow: created a new escrow key file", extra={"path": str(path), "key_id": keys.key_id})
        return keys
    try:
        return crypto.decrypt_keystore(kek, path.read_bytes())
    except crypto.CryptoError as exc:
        raise KeystoreError(f"Escrow key file {path}: {exc}") from None


def escrow_keys() -> crypto.EscrowKeys:
    """The process's escrow keys, loaded (or created) on first use and then kept in memory."""
    global _loaded
    if _loaded is None:
        with _lock:
            if _loaded is None:
                _loaded = _load()
    return _loaded


def forget_loaded_keys() -> None:
    """Drop the in-memory keys (the next call reloads from disk). Used when the key file changes."""
    global _loaded
    with _lock:
        _loaded = None
