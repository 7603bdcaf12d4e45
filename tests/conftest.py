"""Shared fixtures: the registration secret, a clean cache per test, signed-request helpers."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import SyncToAsync
from django.core.cache import cache
from django.db import connections
from django.test import TestCase
from hypothesis import settings as hypothesis_settings
from rest_framework.test import APIClient

from hypertuna.compat import hmac_hex

SECRET = "test-registration-secret-0123456789"

# CI explores a fixed sequence of examples so that a landing never depends on luck; local runs keep
# exploring new ones (and print a reproduction blob when they find something).
hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
hypothesis_settings.register_profile("dev", print_blob=True)
hypothesis_settings.load_profile("ci" if os.environ.get("CI") else "dev")
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(autouse=True)
def _gateway_settings(settings: Any) -> None:
    settings.HYPERTUNA_REGISTRATION_SECRET = SECRET
    settings.HYPERTUNA_RATELIMIT_IP_PER_MINUTE = 0
    settings.HYPERTUNA_RATELIMIT_TOKEN_PER_MINUTE = 0
    settings.HYPERTUNA_BRIDGE_REQUIRED = False


def _clear_own_cache() -> None:
    """Empty this test run's cache only. On Redis, ``cache.clear()`` is FLUSHDB: it would also wipe the keys of
    the end-to-end stacks running beside the tests on the same database (their own prefixes), such as the blind
    peer the replica node publishes for the other nodes."""
    delete_pattern = getattr(cache, "delete_pattern", None)
    if delete_pattern is not None:
        delete_pattern("*")
    else:
        cache.clear()


@pytest.fixture(autouse=True)
def _clean_cache() -> Any:
    from relays import frame_limit, replica_reads

    _clear_own_cache()
    frame_limit.limiter.reset()  # its counts mirror the cache's
    yield
    _clear_own_cache()
    frame_limit.limiter.reset()
    # Replica reads have connections of their own, and so has the thread that runs an async test's ORM calls
    # (``database_sync_to_async``): closed with the test that opened them, so the run's test database can be
    # dropped at its end.
    replica_reads.close_read_connections()
    SyncToAsync.single_thread_executor.submit(connections.close_all).result()


@pytest.fixture(autouse=True)
def _fresh_channel_layer_and_runtime() -> Any:
    """Each test's event loop gets its own channel layer and gateway runtime. channels-redis keeps a lock per
    receiving channel prefix that a message's clean-up task releases; a test whose loop ended before that task
    ran left the lock held and bound to the dead loop, and the next test's consumers on the same layer failed
    with "bound to a different event loop". The runtimes are keyed by the loop's id, which a new loop reuses."""
    from channels.layers import channel_layers

    from relays import runtime

    yield
    channel_layers.backends.clear()
    runtime._runtimes.clear()


@pytest.fixture(autouse=True, scope="session")
def _flush_past_the_audit_truncate_guard() -> Any:
    """The test runner empties a Postgres database with one TRUNCATE of every table, which the escrow audit
    log's TRUNCATE guard (a trigger) refuses; the flush switches triggers off for its transaction, as only a
    superuser can (the guard binds the application role)."""
    try:
        from django.db.backends.postgresql.operations import DatabaseOperations
    except ImportError:  # no Postgres driver: SQLite runs only
        yield
        return
    original = DatabaseOperations.execute_sql_flush

    def execute_sql_flush(self: Any, sql_list: list[str]) -> None:
        original(self, ["SET LOCAL session_replication_role = replica", *sql_list])

    DatabaseOperations.execute_sql_flush = execute_sql_flush  # type: ignore[method-assign]
    yield
    DatabaseOperations.execute_sql_flush = original  # type: ignore[method-assign]


@pytest.fixture(autouse=True, scope="session")
def _nothing_left_listening(tmp_path_factory: Any) -> Any:
    """Torn down last: fail the run if a process it started (a descendant, or one naming the run's temporary
    directory) still listens on a TCP or Unix socket, and kill those processes."""
    from tests.e2e.harness import listening_leftovers

    markers = [f"{tmp_path_factory.getbasetemp()}{os.sep}"]
    yield
    deadline = time.monotonic() + 5  # a stopped group's last members may take a moment to go
    while (leftovers := listening_leftovers(markers, os.getpid())) and time.monotonic() < deadline:
        time.sleep(0.2)
    for leftover in leftovers:
        with contextlib.suppress(OSError):
            os.kill(leftover.pid, signal.SIGKILL)
    assert not leftovers, "processes of this run still listening at its end (killed now):\n" + "\n".join(
        f"  pid {item.pid} {item.command[:200]}: {', '.join(item.listening)}" for item in leftovers
    )


@pytest.fixture(scope="session")
def js_vectors() -> dict[str, Any]:
    return json.loads((FIXTURES / "js-compat.json").read_text(encoding="utf-8"))


def hex_key(seed: str = "") -> str:
    return (seed.encode().hex() + secrets.token_hex(32))[:64] if seed else secrets.token_hex(32)


def make_registration(relay_key: str, **overrides: Any) -> dict[str, Any]:
    registration: dict[str, Any] = {
        "relayKey": relay_key,
        "nonce": secrets.token_hex(12),
        "issuedAt": int(time.time() * 1000),
        "peers": [secrets.token_hex(32)],
        "metadata": {"name": "Test relay", "requiresAuth": True},
    }
    registration.update(overrides)
    return registration


def signed(registration: dict[str, Any], secret: str = SECRET) -> dict[str, Any]:
    return {"registration": registration, "signature": hmac_hex(secret, registration)}


def signed_payload(payload: dict[str, Any], secret: str = SECRET) -> dict[str, Any]:
    return {"payload": payload, "signature": hmac_hex(secret, payload)}


class CommittingAPIClient(APIClient):
    """Runs the on-commit callbacks of each request, as a real commit would (cache refreshes,
    broadcasts), even inside the test's wrapping transaction."""

    def generic(self, *args: Any, **kwargs: Any) -> Any:
        with TestCase.captureOnCommitCallbacks(execute=True):
            return super().generic(*args, **kwargs)


@pytest.fixture
def api() -> APIClient:
    return CommittingAPIClient()
