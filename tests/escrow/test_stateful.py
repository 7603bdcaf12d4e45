"""Hypothesis stateful tests of the lease invariants.

``LeaseMachine`` drives deposit / heartbeat / unlock / renew / revoke / expiry / clock steps sequentially
against the real services and a pure-Python model, and checks after every step that the database agrees
with the model: at most one usable lease per relay, exactly the one the model expects, and a revoked or
expired lease is never usable or renewable again.

``ConcurrentLeaseMachine`` (Postgres only) fires bursts of the same operations from real threads, each with
its own database connection, at one relay. The outcome of a race is not predictable, so instead of a model
it checks the invariants on the database and on the audit log, whose ``seq`` order is the serialization
order of every state change: replaying it, no relay ever has two open leases, every grant has a fence
above every earlier one, and no renew of a lease comes after that lease ended.
"""

from __future__ import annotations

import secrets
import threading
from datetime import timedelta

import pytest
from django.db import connection, connections
from django.utils import timezone
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from escrow import audit, leases
from escrow.models import AuditEntry, Lease
from hypertuna.exceptions import ApiError
from tests.escrow.conftest import Clock, WorkerSim, unlock

SILENCE = 90
MAX_TTL = 3600


class LeaseMachine(RuleBasedStateMachine):
    """Sequential steps with an exact model of what the escrow must answer."""

    @initialize()
    def setup(self):
        self.clock = Clock()
        self.worker = WorkerSim(self.clock, relay_key=secrets.token_hex(32))
        self.bound = False
        self.released_writers: set[bytes] = set()
        self.deposit: dict | None = None  # {"state", "expires_at"}
        self.last_seen = None
        self.rotation_required = False
        self.lease: dict | None = None  # the newest lease: {"id", "state", "expires_at", "max", "fence"}
        self.ended: set[str] = set()
        self.fence = 0

    # --- model helpers --------------------------------------------------------------------------------

    def _lease_usable(self) -> bool:
        return bool(self.lease and self.lease["state"] == "active" and self.lease["expires_at"] > self.clock.now)

    def _deposit_active(self) -> bool:
        return bool(self.deposit and self.deposit["state"] == "active" and self.deposit["expires_at"] > self.clock.now)

    def _end_lease(self, state: str) -> None:
        assert self.lease is not None
        self.lease["state"] = state
        self.ended.add(self.lease["id"])

    def _settle_expiry(self) -> None:
        """What the escrow's read-time expiry does before any operation on the relay."""
        if self.lease and self.lease["state"] == "active" and self.lease["expires_at"] <= self.clock.now:
            self._end_lease("expired")
        if self.deposit and self.deposit["state"] == "active" and self.deposit["expires_at"] <= self.clock.now:
            self.deposit["state"] = "expired"

    # --- rules -----------------------------------------------------------------------------------------

    @rule(seconds=st.integers(min_value=1, max_value=700))
    def advance(self, seconds):
        self.clock.advance(seconds)

    @rule(new_writer=st.booleans(), ttl=st.sampled_from([200, 3000, 86400]))
    def deposit_package(self, new_writer, ttl):
        if new_writer:
            self.worker.rotate_writer()
        expires = int(self.clock.now.timestamp()) + ttl
        if self.worker.writer.public in self.released_writers:
            with pytest.raises(ApiError) as excinfo:
                self.worker.deposit(expires_at=expires)
            assert excinfo.value.code == "writer-key-must-rotate"
            # Refused, yet signed by the worker: it is back, so the lease ends and a rotation is owed.
            self._settle_expiry()
            if self._lease_usable():
                self._end_lease("revoked")
            self.last_seen = self.clock.now
            self.rotation_required = True
            return
        status, _ = self.worker.deposit(expires_at=expires)
        assert status == 201
        self._settle_expiry()
        if self._lease_usable():
            self._end_lease("revoked")
        self.bound = True
        self.deposit = {"state": "active", "expires_at": self.clock.now + timedelta(seconds=ttl)}
        self.last_seen = self.clock.now
        self.rotation_required = False

    @rule()
    def heartbeat(self):
        if not self.bound:
            with pytest.raises(ApiError) as excinfo:
                self.worker.heartbeat()
            assert excinfo.value.status_code == 404
            return
        result = self.worker.heartbeat()
        self._settle_expiry()
        if self._lease_usable():
            assert result["leaseRevoked"] == self.lease["id"]
            self._end_lease("revoked")
            self.rotation_required = True
        else:
            assert result["leaseRevoked"] is None
        self.last_seen = self.clock.now

    @rule(healthy=st.sampled_from([0, 0, 1]), ttl=st.sampled_from([None, 60, 1000, 5000]))
    def request_unlock(self, healthy, ttl):
        self._settle_expiry()
        if self._lease_usable():
            with pytest.raises(ApiError) as excinfo:
                unlock(self.clock, self.worker.relay_key, healthy=healthy, ttl=ttl)
            assert excinfo.value.status_code == 409 and excinfo.value.extra["leaseId"] == self.lease["id"]
            return
        expected = []
        if self.deposit is None:
            expected.append("no-deposit")
        elif self.deposit["state"] == "revoked":
            expected.append("deposit-revoked")
        elif not self._deposit_active():
            expected.append("deposit-expired")
        if self.rotation_required:
            expected.append("rotation-required")
        if self.last_seen is not None and self.clock.now - self.last_seen < timedelta(seconds=SILENCE):
            expected.append("worker-heartbeat-recent")
        if healthy:
            expected.append("peers-reported-healthy")
        if expected:
            with pytest.raises(ApiError) as excinfo:
                unlock(self.clock, self.worker.relay_key, healthy=healthy, ttl=ttl)
            assert excinfo.value.status_code == 412 and excinfo.value.extra["reasons"] == expected
            return
        grant, _ = unlock(self.clock, self.worker.relay_key, healthy=healthy, ttl=ttl)
        self.fence += 1
        assert grant["fence"] == self.fence
        lifetime = min(ttl or 300, MAX_TTL)
        self.lease = {
            "id": grant["leaseId"],
            "state": "active",
            "fence": self.fence,
            "expires_at": self.clock.now + timedelta(seconds=lifetime),
            "max": self.clock.now + timedelta(seconds=MAX_TTL),
        }
        self.released_writers.add(self.worker.writer.public)

    @rule(ttl=st.sampled_from([None, 100, 4000]))
    def renew(self, ttl):
        if self.lease is None:
            return
        self._settle_expiry()
        if self._lease_usable() and self._deposit_active():
            result = leases.renew(lease_id=self.lease["id"], requester="gateway:t", ttl=ttl, now=self.clock.now)
            wanted = min(self.clock.now + timedelta(seconds=min(ttl or 300, MAX_TTL)), self.lease["max"])
            self.lease["expires_at"] = max(self.lease["expires_at"], wanted)
            assert result["expiresAt"] == int(self.lease["expires_at"].timestamp())
        else:
            with pytest.raises(ApiError) as excinfo:
                leases.renew(lease_id=self.lease["id"], requester="gateway:t", ttl=ttl, now=self.clock.now)
            assert excinfo.value.status_code == 409

    @rule()
    def gateway_revoke(self):
        if self.lease is None:
            return
        result = leases.revoke_lease_by_id(
            lease_id=self.lease["id"], actor="gateway:t", reason="done", now=self.clock.now
        )
        self._settle_expiry()
        if self._lease_usable():
            assert result["leaseRevoked"] == self.lease["id"]
            self._end_lease("revoked")
        else:
            assert result["leaseRevoked"] is None

    @rule()
    def worker_revoke(self):
        if not self.bound:
            return
        result = self.worker.revoke()
        self._settle_expiry()
        if self._lease_usable():
            assert result["leaseRevoked"] == self.lease["id"]
            self._end_lease("revoked")
        if self._deposit_active():
            assert result["depositRevoked"]
            self.deposit["state"] = "revoked"
        self.last_seen = self.clock.now

    @rule()
    def sweep(self):
        leases.expire_leases(now=self.clock.now)
        self._settle_expiry()

    # --- invariants -------------------------------------------------------------------------------------

    @invariant()
    def at_most_one_active_lease(self):
        if not hasattr(self, "worker"):
            return
        assert Lease.objects.filter(relay_key=self.worker.relay_key, state="active").count() <= 1

    @invariant()
    def usable_lease_matches_the_model(self):
        if not hasattr(self, "worker"):
            return
        usable = list(
            Lease.objects.filter(
                relay_key=self.worker.relay_key, state="active", expires_at__gt=self.clock.now
            ).values_list("id", flat=True)
        )
        expected = [self.lease["id"]] if self._lease_usable() else []
        assert [str(i) for i in usable] == expected
        assert not (set(map(str, usable)) & self.ended), "a revoked or expired lease is usable"

    def teardown(self):
        if hasattr(self, "worker"):
            assert audit.verify(record=False).ok


@pytest.mark.django_db
def test_lease_state_machine():
    run = LeaseMachine.TestCase
    run.settings = settings(
        max_examples=50,
        stateful_step_count=30,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    run().runTest()


# --- Concurrent (Postgres) ------------------------------------------------------------------------------


def _call(operation, relay_key, worker, lease_ids, outcomes, barrier):
    try:
        barrier.wait(timeout=10)
        now = timezone.now()
        try:
            if operation == "unlock":
                clock = Clock()
                grant, _ = unlock(clock, relay_key)
                lease_ids.append(grant["leaseId"])
                outcomes.append(("granted", grant["leaseId"]))
            elif operation in ("revoke", "renew") and not lease_ids:
                outcomes.append(("skipped", None))
            elif operation == "revoke":
                result = leases.revoke_lease_by_id(lease_id=lease_ids[-1], actor="gateway:t", reason="race", now=now)
                outcomes.append(("revoked", result["leaseRevoked"]))
            elif operation == "renew":
                result = leases.renew(lease_id=lease_ids[-1], requester="gateway:t", now=now)
                outcomes.append(("renewed", result["leaseId"]))
            elif operation == "expire":
                leases.expire_leases(now=now + timedelta(seconds=400))
                outcomes.append(("swept", None))
            elif operation == "heartbeat":
                worker.heartbeat(worker.statement("heartbeat", issued_at_ms=worker.next_ms()))
                outcomes.append(("heartbeat", None))
        except ApiError as exc:
            outcomes.append(("refused", exc.code))
    finally:
        connections.close_all()


def check_audit_linearization(relay_key: str) -> None:
    """Replay the audit log in seq order: one open lease per relay, rising fences, no renew after the end."""
    open_lease: str | None = None
    ended: set[str] = set()
    last_fence = 0
    for row in AuditEntry.objects.filter(relay_key=relay_key).order_by("seq"):
        if row.action == "unlock-granted":
            assert open_lease is None, f"lease {row.lease_id} granted while {open_lease} was open (seq {row.seq})"
            assert row.details["fence"] > last_fence
            last_fence = row.details["fence"]
            open_lease = row.lease_id
        elif row.action in ("revoke", "expire", "rotation") and row.lease_id:
            assert row.lease_id == open_lease, f"ended a lease that was not open (seq {row.seq})"
            ended.add(row.lease_id)
            open_lease = None
        elif row.action == "renew":
            assert row.lease_id == open_lease and row.lease_id not in ended, f"renew after end (seq {row.seq})"


class ConcurrentLeaseMachine(RuleBasedStateMachine):
    @initialize()
    def setup(self):
        self.clock = Clock()
        self.worker = WorkerSim(self.clock, relay_key=secrets.token_hex(32))
        # Deposited "95 s ago" by the escrow clock, so unlocks pass the heartbeat-silence rule.
        self.clock.now = timezone.now() - timedelta(seconds=SILENCE + 5)
        self.worker.deposit()
        self.lease_ids: list[str] = []

    @rule(
        operations=st.lists(
            st.sampled_from(["unlock", "unlock", "revoke", "renew", "expire", "heartbeat"]), min_size=2, max_size=6
        )
    )
    def burst(self, operations):
        outcomes: list = []
        barrier = threading.Barrier(len(operations))
        threads = [
            threading.Thread(
                target=_call, args=(op, self.worker.relay_key, self.worker, self.lease_ids, outcomes, barrier)
            )
            for op in operations
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert not any(thread.is_alive() for thread in threads), "a thread hung"
        # Every thread finished with an answer: no deadlock, no IntegrityError or other error escaped a service.
        assert len(outcomes) == len(operations), outcomes
        allowed = {
            "lease-active",
            "unlock-refused",
            "lease-not-active",
            "lease-mismatch",
            "deposit-not-active",
            "signature-replayed",
        }
        assert {code for kind, code in outcomes if kind == "refused"} <= allowed, outcomes

    @rule()
    def worker_returns_and_rotates(self):
        # Rotation: the worker deposits a fresh writer key so later unlocks can succeed again.
        self.worker.rotate_writer()
        self.clock.now = timezone.now() - timedelta(seconds=SILENCE + 5)
        self.worker.deposit()

    @invariant()
    def database_and_audit_agree(self):
        if not hasattr(self, "worker"):
            return
        assert Lease.objects.filter(relay_key=self.worker.relay_key, state="active").count() <= 1
        check_audit_linearization(self.worker.relay_key)
        granted_in_audit = set(
            AuditEntry.objects.filter(relay_key=self.worker.relay_key, action="unlock-granted").values_list(
                "lease_id", flat=True
            )
        )
        assert set(self.lease_ids) <= granted_in_audit, "a grant reached a client without its audit row"

    def teardown(self):
        if hasattr(self, "worker"):
            assert audit.verify(record=False).ok


@pytest.mark.django_db(transaction=True)
def test_concurrent_unlock_revoke_expire_keep_the_invariants(escrow_settings):
    if connection.vendor != "postgresql":
        pytest.skip("row locks and concurrent writers are exercised on Postgres (SQLite serializes writers)")
    escrow_settings.HYPERTUNA_ESCROW_HEARTBEAT_SILENCE = SILENCE
    run = ConcurrentLeaseMachine.TestCase
    run.settings = settings(
        max_examples=12,
        stateful_step_count=12,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    run().runTest()


def test_linearization_checker_catches_a_double_grant(db):
    """The checker itself must be able to fail."""
    relay_key = secrets.token_hex(32)
    from django.db import transaction

    with transaction.atomic():
        audit.append(action="unlock-granted", actor="t", relay_key=relay_key, lease_id="a", details={"fence": 1})
        audit.append(action="unlock-granted", actor="t", relay_key=relay_key, lease_id="b", details={"fence": 2})
    with pytest.raises(AssertionError, match="granted while"):
        check_audit_linearization(relay_key)


@pytest.mark.django_db
def test_regression_redeposit_in_the_same_instant_as_a_revoke_then_expiry():
    """Found by the state machine: revoke, re-deposit at the same escrow timestamp, let it expire. The
    refusal must name the newer package's state (expired), not the revoked one's."""
    state = LeaseMachine()
    state.setup()
    state.deposit_package(new_writer=False, ttl=200)
    state.worker_revoke()
    state.deposit_package(new_writer=False, ttl=200)
    state.advance(seconds=200)
    state.request_unlock(healthy=0, ttl=None)
    state.teardown()
