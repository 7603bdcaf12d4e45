"""Postgres restarted in the middle of a stream of deposits: no acknowledged deposit is lost, none doubled.

Deposits go through the real mTLS listener with the worker client, which retries the identical body
(same idempotency key) on transport errors and 5xx answers. Postgres is restarted with pg_ctlcluster
while deposits are in flight. Runs only against Postgres; bounded to about a minute.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from django.db import connection

from escrow import audit, crypto
from escrow.models import Deposit, IdempotencyRecord
from escrow.worker_client import WorkerClient
from tests.escrow.mtls import escrow_listener, make_pki

pytestmark = [pytest.mark.postgres, pytest.mark.urls("escrow.service_urls"), pytest.mark.django_db(transaction=True)]

DEPOSITS = 24
RESTART_AFTER = 6


def restart_postgres() -> None:
    versions = sorted(p.name for p in Path("/etc/postgresql").iterdir())
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "restart"],
        check=True,
        timeout=60,
        capture_output=True,
    )


def wait_for_postgres(deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            connection.close()
            connection.ensure_connection()
            return
        except Exception:
            time.sleep(0.2)
    raise AssertionError("Postgres did not come back in time")


def test_postgres_restart_mid_run_loses_no_deposit(tmp_path):
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL")
    if shutil.which("pg_ctlcluster") is None or not Path("/etc/postgresql").is_dir():
        pytest.skip("needs a local Postgres cluster managed by pg_ctlcluster")
    certs = make_pki(tmp_path / "pki")
    acknowledged: dict[str, str] = {}  # relay key -> deposit id the escrow acknowledged
    restarted = threading.Event()
    restart_error: list[BaseException] = []

    def restart_in_background() -> None:
        try:
            restart_postgres()
        except BaseException as exc:  # reported by the main thread
            restart_error.append(exc)
        finally:
            restarted.set()

    started = time.monotonic()
    with escrow_listener(certs) as url:
        worker = WorkerClient(certs.client(url, certs.worker, timeout=5), crypto.generate_signing_keypair())
        worker.policy()
        restarter = threading.Thread(target=restart_in_background, daemon=True)
        for index in range(DEPOSITS):
            if index == RESTART_AFTER:
                restarter.start()
            relay_key = f"{index:02x}" * 32
            writer = crypto.generate_signing_keypair()
            result = worker.deposit(relay_key, writer.secret, attempts=40, deadline=60)
            acknowledged[relay_key] = result["depositId"]
            assert time.monotonic() - started < 120, "the run must stay bounded"
        assert restarted.wait(timeout=60)
        restarter.join(timeout=5)
    assert not restart_error, restart_error

    wait_for_postgres(time.monotonic() + 30)
    assert len(acknowledged) == DEPOSITS
    for relay_key, deposit_id in acknowledged.items():
        rows = list(Deposit.objects.filter(relay_key=relay_key).values_list("id", "state"))
        assert [(str(i), s) for i, s in rows] == [(deposit_id, "active")], f"{relay_key}: {rows}"
    assert IdempotencyRecord.objects.count() == DEPOSITS
    assert audit.verify(record=False).ok
