"""Key material never reaches logs, exception text, the database, the cache or metrics.

A full lifecycle runs over the real mTLS listener with every logger at DEBUG; the captured records (message,
arguments and every extra field), the error bodies, each table's rows, the cache and /metrics are searched
for the writer secret, its seed and the escrow's private keys in hex, base64 (both alphabets) and raw form.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from prometheus_client import generate_latest

from escrow import audit, crypto
from escrow.coordinator import EscrowCoordinator
from escrow.keystore import escrow_keys
from escrow.transport import EscrowHTTPError
from escrow.worker_client import WorkerClient
from tests.escrow.mtls import escrow_listener, make_pki

pytestmark = [pytest.mark.urls("escrow.service_urls"), pytest.mark.django_db(transaction=True)]


def forms(secret: bytes) -> list[bytes]:
    out = [
        secret,
        secret.hex().encode(),
        secret.hex().upper().encode(),
        base64.b64encode(secret),
        base64.urlsafe_b64encode(secret),
        base64.b64encode(secret).rstrip(b"="),
    ]
    out.append(repr(secret).encode())
    out.append(str(list(secret)).encode())
    return out


def assert_absent(haystack: bytes, secrets: dict[str, bytes], where: str) -> None:
    for name, secret in secrets.items():
        for form in forms(secret):
            assert form not in haystack, f"{name} found in {where}"


def record_text(record: logging.LogRecord) -> bytes:
    parts = [record.getMessage(), repr(record.args), repr(sorted(record.__dict__.items(), key=lambda kv: kv[0]))]
    if record.exc_info:
        parts.append(logging.Formatter().formatException(record.exc_info))
    return "\n".join(parts).encode("utf-8", "backslashreplace")


def checkpoint_and_verify() -> bool:
    audit.create_checkpoint()
    return audit.verify().ok


def dump_escrow_tables() -> dict[str, bytes]:
    """Every escrow table, each value as raw bytes (binary columns) or its text representation."""
    dumps: dict[str, bytes] = {}
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            if not table.startswith("escrow_"):
                continue
            cursor.execute(f'SELECT * FROM "{table}"')
            chunks = []
            for row in cursor.fetchall():
                for value in row:
                    chunks.append(bytes(value) if isinstance(value, bytes | memoryview) else repr(value).encode())
            dumps[table] = b"\n".join(chunks)
    assert dumps.get("escrow_auditentry"), "the audit table should not be empty"
    return dumps


@pytest.fixture
def certs(tmp_path):
    return make_pki(tmp_path / "pki")


async def test_no_key_material_in_logs_errors_database_cache_or_metrics(certs, escrow_settings, caplog):
    escrow_settings.HYPERTUNA_ESCROW_HEARTBEAT_SILENCE = 0
    caplog.set_level(logging.DEBUG)
    writer = crypto.generate_signing_keypair()
    signing = crypto.generate_signing_keypair()
    relay_key = "9a" * 32
    errors: list[bytes] = []
    with escrow_listener(certs) as url:
        keys = escrow_keys()
        secrets = {
            "writer secret": bytes(writer.secret),
            "writer seed": bytes(writer.secret[:32]),
            "worker signing seed": bytes(signing.secret[:32]),
            "escrow box key": bytes(keys._box),
            "escrow signing seed": bytes(keys._sign),
            "key-encryption key": bytes.fromhex(settings.HYPERTUNA_ESCROW_KEK),
        }
        worker = WorkerClient(certs.client(url, certs.worker), signing)
        gateway = EscrowCoordinator(
            certs.client(url, certs.gateway),
            mirror_evidence=lambda key: {
                "announcedAt": int(time.time()) - 1,
                "announcedLength": 1,
                "mirroredLength": 1,
            },
            confirm_interval=0.1,
            refusal_pause=0,
        )

        worker.deposit(relay_key, writer.secret, owner_identity="peer")
        lease = await gateway.ensure_write_lease(relay_key)
        assert lease is not None
        with gateway.vault.writer_secret(relay_key) as borrowed:
            assert bytes(borrowed) == bytes(writer.secret)
        # Adversarial and failing paths produce log lines and error bodies too.
        other = certs.client(url, certs.gateway)
        for body in ({"relayKey": relay_key, "sessionPublicKey": "bad"}, {"relayKey": relay_key}):
            with pytest.raises(EscrowHTTPError) as excinfo:
                other.request("POST", "/escrow/unlock", body)
            errors.append(repr(excinfo.value.body).encode())
        with pytest.raises(EscrowHTTPError) as excinfo:
            worker.deposit(relay_key, writer.secret)  # released key: must rotate
        errors.append(repr(excinfo.value.body).encode() + str(excinfo.value).encode())
        worker.heartbeat(relay_key)
        for _ in range(50):  # the lease's watcher learns of the revocation and wipes the key
            if gateway.vault.get(relay_key) is None:
                break
            await asyncio.sleep(0.1)
        assert await gateway.ensure_write_lease(relay_key) is None
        rotated = crypto.generate_signing_keypair()
        secrets["rotated writer secret"] = bytes(rotated.secret)
        worker.deposit(relay_key, rotated.secret)
        assert await gateway.ensure_write_lease(relay_key) is not None
        await gateway.release(relay_key, reason="done")
        worker.revoke(relay_key)
        assert await sync_to_async(checkpoint_and_verify)()

    logged = b"\n".join(record_text(r) for r in caplog.records)
    assert caplog.records, "the lifecycle should have logged something"
    assert_absent(logged, secrets, "log records")
    assert_absent(b"\n".join(errors), secrets, "error bodies")
    assert_absent(generate_latest(), secrets, "/metrics")

    for table, dump in (await sync_to_async(dump_escrow_tables)()).items():
        assert_absent(dump, secrets, f"table {table}")

    if settings.REDIS_URL:
        import redis

        client = redis.Redis.from_url(settings.REDIS_URL)
        dump = b""
        for key in client.scan_iter(count=500):
            dump += key
            if client.type(key) == b"string":
                dump += client.get(key) or b""
        assert_absent(dump, secrets, "Redis")
