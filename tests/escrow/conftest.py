"""Escrow test fixtures: an isolated key file per test, audit triggers, worker and gateway simulators."""

from __future__ import annotations

import asyncio
import importlib
import secrets
from datetime import datetime, timedelta
from typing import Any

import pytest
from asgiref.sync import SyncToAsync
from django.db import connection, connections
from django.utils import timezone

from escrow import crypto, leases, selectors, services, worker_client
from escrow.keystore import forget_loaded_keys
from escrow.policy import MirrorEvidence

_triggers = importlib.import_module("escrow.migrations.0002_audit_append_only")


class _Editor:
    """The bit of a schema editor the trigger migration functions use."""

    def __init__(self) -> None:
        self.connection = connection


def install_audit_triggers() -> None:
    _triggers.install(None, _Editor())


def remove_audit_triggers() -> None:
    _triggers.uninstall(None, _Editor())


@pytest.fixture(autouse=True)
def escrow_settings(settings: Any, tmp_path: Any) -> Any:
    settings.HYPERTUNA_ESCROW_KEY_FILE = tmp_path / "escrow-keys.bin"
    settings.HYPERTUNA_ESCROW_KEK = secrets.token_hex(32)
    settings.HYPERTUNA_ESCROW_KEK_FILE = None
    settings.HYPERTUNA_ESCROW_CHECKPOINT_DIR = tmp_path / "checkpoints"
    settings.HYPERTUNA_ESCROW_POLICY_VERSION = 1
    settings.HYPERTUNA_ESCROW_HEARTBEAT_SILENCE = 90
    settings.HYPERTUNA_ESCROW_MIRROR_MAX_AGE = 120
    settings.HYPERTUNA_ESCROW_LEASE_TTL = 300
    settings.HYPERTUNA_ESCROW_LEASE_MAX_TTL = 3600
    settings.HYPERTUNA_ESCROW_DEPOSIT_MAX_TTL = 7 * 86400
    settings.HYPERTUNA_ESCROW_SIGNATURE_WINDOW = 300
    forget_loaded_keys()
    yield settings
    forget_loaded_keys()


@pytest.fixture(autouse=True)
def _audit_triggers(request: Any) -> Any:
    """Keep the append-only triggers installed for every escrow DB test.

    Transactional tests end with a flush, which on SQLite is a DELETE the triggers would abort; the
    triggers are removed just before it (this fixture is torn down before pytest-django's flush) and put
    back by the next test. On Postgres the flush's TRUNCATE runs with ``session_replication_role = replica``
    (``tests/conftest.py``), which switches the triggers off for that statement only.
    """
    marker = request.node.get_closest_marker("django_db")
    if marker is None:
        yield
        return
    install_audit_triggers()
    yield
    transactional = marker.kwargs.get("transaction", False) or "transactional_db" in request.fixturenames
    if transactional and connection.vendor == "sqlite":
        remove_audit_triggers()


@pytest.fixture(autouse=True)
def _close_executor_connections(request: Any) -> Any:
    """Async tests reach the ORM through asgiref's shared executor thread; close its connection afterwards
    so Postgres can drop the test database at the end of the session."""
    yield
    if asyncio.iscoroutinefunction(getattr(request.node, "function", None)):
        SyncToAsync.single_thread_executor.submit(connections.close_all).result(timeout=10)


class Clock:
    def __init__(self) -> None:
        self.now = timezone.now().replace(microsecond=0)

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


class WorkerSim:
    """A worker: its Ed25519 signing key, its relay, and a gateway-writer keypair it deposits."""

    def __init__(self, clock: Clock, relay_key: str | None = None) -> None:
        self.clock = clock
        self.signing = crypto.generate_signing_keypair()
        self.relay_key = relay_key or secrets.token_hex(32)
        self.writer = crypto.generate_signing_keypair()
        self._last_ms = 0

    @property
    def actor(self) -> str:
        return "worker:test-worker"

    def next_ms(self) -> int:
        self._last_ms = max(int(self.clock.now.timestamp() * 1000), self._last_ms + 1)
        return self._last_ms

    def rotate_writer(self) -> None:
        self.writer = crypto.generate_signing_keypair()

    def deposit_body(self, **overrides: Any) -> dict[str, Any]:
        policy = selectors.policy_document()["policy"]
        args: dict[str, Any] = {
            "signing": self.signing,
            "policy": policy,
            "relay_key": self.relay_key,
            "writer_secret": self.writer.secret,
            "owner_identity": "owner-peer",
            "expires_at": int(self.clock.now.timestamp()) + 86400,
            "issued_at_ms": self.next_ms(),
        }
        args.update(overrides)
        return worker_client.build_deposit(**args)

    def deposit(self, body: dict[str, Any] | None = None, **overrides: Any) -> tuple[int, dict[str, Any]]:
        return services.deposit(body=body or self.deposit_body(**overrides), actor=self.actor, now=self.clock.now)

    def statement(self, kind: str, reason: str = "", **overrides: Any) -> dict[str, Any]:
        args: dict[str, Any] = {"signing": self.signing, "relay_key": self.relay_key, "issued_at_ms": self.next_ms()}
        args.update(overrides)
        return worker_client.build_statement(kind, reason=reason, **args)

    def heartbeat(self, body: dict[str, Any] | None = None) -> dict[str, Any]:
        return services.heartbeat(body=body or self.statement("heartbeat"), actor=self.actor, now=self.clock.now)

    def revoke(self, reason: str = "worker-revoke") -> dict[str, Any]:
        return services.worker_revoke(body=self.statement("revoke", reason), actor=self.actor, now=self.clock.now)


@pytest.fixture
def worker(clock: Clock) -> WorkerSim:
    return WorkerSim(clock)


def unlock(
    clock: Clock,
    relay_key: str,
    *,
    healthy: int | None = 0,
    mirror_age: float | None = 10,
    announced: int = 5,
    mirrored: int = 5,
    ttl: int | None = None,
    session: crypto.SessionKeypair | None = None,
) -> tuple[dict[str, Any], crypto.SessionKeypair]:
    """An unlock whose mirror evidence says the gateway last saw the worker ``mirror_age`` seconds ago,
    announcing length ``announced``, and holds ``mirrored`` (``mirror_age=None``: no mirror evidence)."""
    session = session or crypto.generate_session_keypair()
    mirror = (
        MirrorEvidence(clock.now - timedelta(seconds=mirror_age), announced, mirrored)
        if mirror_age is not None
        else None
    )
    request = leases.UnlockRequest(
        relay_key=relay_key,
        session_public_key=session.public,
        healthy_peers=healthy,
        mirror=mirror,
        ttl=ttl,
    )
    return leases.unlock(request=request, requester="gateway:test-gateway", now=clock.now), session


def open_grant(grant: dict[str, Any], session: crypto.SessionKeypair) -> crypto.OpenedLease:
    return crypto.open_lease(
        session,
        sealed=crypto.b64decode(grant["sealedSecret"], field="sealedSecret"),
        signature=crypto.b64decode(grant["signature"], field="signature"),
        escrow_verify_key=bytes.fromhex(grant["escrowVerifyKey"]),
        lease_id=grant["leaseId"],
        relay_key=grant["relayKey"],
        fence=grant["fence"],
        expires_at=grant["expiresAt"],
        writer_public=bytes.fromhex(grant["writerPublicKey"]),
    )
