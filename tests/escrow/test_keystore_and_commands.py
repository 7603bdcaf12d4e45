"""Escrow keys at rest, the development PKI command and the escrow listener command's guard rails."""

from __future__ import annotations

import os
import secrets
import ssl
import stat

import pytest
from django.core.management import CommandError, call_command

from escrow import crypto, keystore, pki
from escrow.keystore import KeystoreError, escrow_keys, forget_loaded_keys


def test_key_file_is_encrypted_private_and_loaded_once(escrow_settings):
    keys = escrow_keys()
    path = escrow_settings.HYPERTUNA_ESCROW_KEY_FILE
    blob = path.read_bytes()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert bytes(keys._box) not in blob and bytes(keys._sign) not in blob
    assert escrow_keys() is keys  # loaded once per process
    forget_loaded_keys()
    reloaded = escrow_keys()
    assert reloaded is not keys and reloaded.public_key == keys.public_key
    assert "EscrowKeys(key_id=" in repr(reloaded) and bytes(reloaded._box).hex() not in repr(reloaded)


def test_wrong_key_encryption_key_refuses_to_load(escrow_settings):
    escrow_keys()
    forget_loaded_keys()
    escrow_settings.HYPERTUNA_ESCROW_KEK = secrets.token_hex(32)
    with pytest.raises(KeystoreError, match="does not open"):
        escrow_keys()


def test_malformed_kek_is_refused(escrow_settings):
    escrow_settings.HYPERTUNA_ESCROW_KEK = "not-hex"
    with pytest.raises(KeystoreError, match="64 hex"):
        escrow_keys()


def test_kek_from_file(escrow_settings, tmp_path):
    kek_file = tmp_path / "kek.hex"
    kek_file.write_text(secrets.token_hex(32))
    escrow_settings.HYPERTUNA_ESCROW_KEK = None
    escrow_settings.HYPERTUNA_ESCROW_KEK_FILE = str(kek_file)
    keys = escrow_keys()
    forget_loaded_keys()
    assert escrow_keys().public_key == keys.public_key
    assert not keystore.kek_is_development()


def test_development_kek_is_generated_and_flagged(escrow_settings):
    escrow_settings.HYPERTUNA_ESCROW_KEK = None
    escrow_keys()
    assert keystore.kek_is_development()
    dev = keystore.development_kek_path()
    assert stat.S_IMODE(os.stat(dev).st_mode) == 0o600


def test_system_check_warns_about_a_development_kek_on_the_escrow_role(escrow_settings):
    from escrow.checks import check_escrow_settings

    escrow_settings.ROLE = "escrow"
    escrow_settings.DEBUG = False
    escrow_settings.HYPERTUNA_ESCROW_KEK = None
    assert [m.id for m in check_escrow_settings()] == ["escrow.W001"]
    escrow_settings.ROLE = "gateway"
    escrow_settings.HYPERTUNA_ESCROW_URL = "https://escrow:8443"
    escrow_settings.HYPERTUNA_ESCROW_CA = None
    assert [m.id for m in check_escrow_settings()] == ["escrow.E001"]


def test_keystore_blob_is_domain_checked():
    kek = crypto.random_bytes(32)
    blob = crypto.encrypt_keystore(kek, crypto.random_bytes(32), crypto.random_bytes(32))
    tampered = bytearray(blob)
    tampered[-1] ^= 1
    with pytest.raises(crypto.CryptoError):
        crypto.decrypt_keystore(kek, bytes(tampered))


def test_escrow_certs_init_and_issue(tmp_path, capsys):
    call_command("escrow_certs", "init", dir=str(tmp_path))
    for name in ("ca.pem", "server.pem", "gateway.pem", "operator.pem", "worker.pem"):
        assert (tmp_path / name).is_file()
    assert stat.S_IMODE(os.stat(tmp_path / "ca-key.pem").st_mode) == 0o600
    with pytest.raises(CommandError, match="exists"):
        call_command("escrow_certs", "init", dir=str(tmp_path))
    call_command("escrow_certs", "issue", dir=str(tmp_path), role="worker", name="node-7")
    identity = pki.identity_from_pem((tmp_path / "worker-node-7.pem").read_text())
    assert identity is not None and identity.actor == "worker:node-7"
    assert pki.identity_from_pem((tmp_path / "server.pem").read_text()) is None
    # The issued certificates chain to the CA and the server certificate names the listener.
    context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    context.load_cert_chain(str(tmp_path / "gateway.pem"), str(tmp_path / "gateway-key.pem"))


def test_run_escrow_refuses_the_gateway_role(settings):
    settings.ROLE = "gateway"
    with pytest.raises(CommandError, match="HYPERTUNA_ROLE=escrow"):
        call_command("run_escrow")


def test_run_escrow_needs_certificates(settings, tmp_path):
    settings.ROLE = "escrow"
    settings.HYPERTUNA_ESCROW_PKI_DIR = tmp_path
    with pytest.raises(CommandError, match="escrow_certs init"):
        call_command("run_escrow")


def test_listener_context_invariants(tmp_path):
    from escrow.server import build_server, server_context_check

    certs_dir = tmp_path / "pki"
    ca = pki.create_ca(certs_dir)
    server = pki.issue(ca, certs_dir, stem="server", common_name="localhost", role=None, server_names=("127.0.0.1",))
    built = build_server(
        lambda *a: None,
        host="127.0.0.1",
        port=0,
        certfile=str(server.cert),
        keyfile=str(server.key),
        cafile=str(ca.cert),
    )
    context = built.config.ssl
    assert context.verify_mode == ssl.CERT_REQUIRED and context.minimum_version == ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_OPTIONAL
    with pytest.raises(RuntimeError):
        server_context_check(context)


def test_escrow_role_uses_its_own_database_and_urlconf(tmp_path):
    import json
    import subprocess
    import sys

    code = (
        "import django, json; django.setup(); from django.conf import settings as s; "
        "print(json.dumps([s.DATABASES['default']['NAME'], s.ROOT_URLCONF, s.DATABASES['default']['CONN_MAX_AGE']]))"
    )
    base = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "ESCROW_DATABASE_URL", "HYPERTUNA_ROLE")}
    base.update(DJANGO_SETTINGS_MODULE="hypertuna.settings", HYPERTUNA_VAR_DIR=str(tmp_path))
    escrow_db = tmp_path / "escrow.sqlite3"

    def run(**env):
        out = subprocess.run(
            [sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True, check=True
        )
        return json.loads(out.stdout.strip().splitlines()[-1])

    assert run(HYPERTUNA_ROLE="escrow", ESCROW_DATABASE_URL=f"sqlite:///{escrow_db}") == [
        str(escrow_db),
        "escrow.service_urls",
        0,
    ]
    fallback = run(HYPERTUNA_ROLE="escrow", DATABASE_URL=f"sqlite:///{tmp_path / 'shared.sqlite3'}")
    assert fallback[0] == str(tmp_path / "shared.sqlite3")
    gateway = run(HYPERTUNA_ROLE="gateway", ESCROW_DATABASE_URL=f"sqlite:///{escrow_db}")
    assert gateway[0] != str(escrow_db) and gateway[1] == "hypertuna.urls"
