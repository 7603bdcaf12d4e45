"""The stack's real Celery worker and beat run the periodic sweeps: a relay whose registration TTL ran out
is marked expired by the beat-scheduled task, without any request touching it, and its row is kept."""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.request

import pytest

from tests.conftest import hex_key, make_registration, signed
from tests.e2e.harness import Stack, node_available

TTL = 10


@pytest.fixture(scope="module")
def sweep_stack(tmp_path_factory):
    if not node_available():
        pytest.fail("end-to-end tests need Node 20 and `npm ci` in bridge/ (make test installs both)")
    env = {
        "DJANGO_SETTINGS_MODULE": "tests.e2e.fast_beat_settings",
        "HYPERTUNA_REGISTRATION_TTL": str(TTL),
        "HYPERTUNA_LOG_LEVEL": "INFO",
    }
    stack = Stack(tmp_path_factory.mktemp("sweep-stack"), celery=True, env=env).start()
    try:
        yield stack
    finally:
        stack.stop()


def relay_status(stack: Stack, relay_key: str) -> str | None:
    url = stack.env["DATABASE_URL"]
    query = "SELECT status FROM relays_relay WHERE relay_key = %s"
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url.removeprefix("sqlite:///"), timeout=20) as conn:
            row = conn.execute(query.replace("%s", "?"), (relay_key,)).fetchone()
    else:
        import psycopg

        with psycopg.connect(url) as conn:
            row = conn.execute(query, (relay_key,)).fetchone()
    return None if row is None else row[0]


def test_beat_expires_a_lapsed_registration(sweep_stack):
    relay_key = hex_key()
    body = json.dumps(signed(make_registration(relay_key), sweep_stack.secret)).encode()
    request = urllib.request.Request(
        f"{sweep_stack.base_url}/api/relays", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    assert relay_status(sweep_stack, relay_key) == "active"

    celery = next(proc for proc in sweep_stack.procs if proc.name == "celery")
    deadline = time.monotonic() + TTL + 20
    while relay_status(sweep_stack, relay_key) != "expired":
        assert time.monotonic() < deadline, "the beat never expired the relay:\n" + sweep_stack.log_tail()
        assert celery.process.poll() is None, "the Celery worker exited:\n" + sweep_stack.log_tail()
        time.sleep(0.5)
    log = celery.log_path.read_text(errors="replace")
    assert "relays.tasks.expire_registrations" in log, "the expiry must come from the Celery task"
