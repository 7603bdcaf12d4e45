"""The pure policy: every rule on its own, every failed rule reported together. No database."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from escrow import policy as p

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
POLICY = p.Policy(
    version=3, heartbeat_silence=90, mirror_max_age=120, lease_ttl=300, lease_max_ttl=3600, deposit_max_ttl=86400
)
GOOD = p.Snapshot(
    now=NOW,
    policy=POLICY,
    deposit=p.DepositFacts(
        state="active", expires_at=NOW + timedelta(hours=1), allow_gateway_writes=True, policy_version=3
    ),
    worker_last_seen_at=NOW - timedelta(seconds=91),
    rotation_required=False,
    evidence=p.Evidence(healthy_peers=0, mirror_fresh_at=NOW - timedelta(seconds=5)),
)


@pytest.mark.parametrize("module", ["escrow.policy", "escrow.crypto", "escrow.wire", "escrow.worker_client"])
def test_pure_modules_import_without_django(module):
    code = f"import sys, {module}; sys.exit(1 if any(m.split('.')[0] == 'django' for m in sys.modules) else 0)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_grant_when_every_rule_passes():
    assert p.decide(GOOD) == p.Decision(granted=True, reasons=())


@pytest.mark.parametrize(
    ("snapshot", "reason"),
    [
        (replace(GOOD, deposit=None), p.NO_DEPOSIT),
        (replace(GOOD, deposit=replace(GOOD.deposit, state="revoked")), p.DEPOSIT_REVOKED),
        (replace(GOOD, deposit=replace(GOOD.deposit, state="expired")), p.DEPOSIT_EXPIRED),
        (replace(GOOD, deposit=replace(GOOD.deposit, expires_at=NOW)), p.DEPOSIT_EXPIRED),
        (replace(GOOD, deposit=replace(GOOD.deposit, allow_gateway_writes=False)), p.GATEWAY_WRITES_NOT_PERMITTED),
        (replace(GOOD, deposit=replace(GOOD.deposit, policy_version=2)), p.POLICY_VERSION_NOT_ACKNOWLEDGED),
        (replace(GOOD, deposit=replace(GOOD.deposit, sealed_to_current_key=False)), p.DEPOSIT_KEY_RETIRED),
        (replace(GOOD, rotation_required=True), p.ROTATION_REQUIRED),
        (replace(GOOD, worker_last_seen_at=NOW - timedelta(seconds=89)), p.WORKER_HEARTBEAT_RECENT),
        (replace(GOOD, worker_last_seen_at=NOW + timedelta(minutes=5)), p.WORKER_HEARTBEAT_RECENT),
        (replace(GOOD, evidence=p.Evidence(healthy_peers=None, mirror_fresh_at=NOW)), p.PEER_EVIDENCE_MISSING),
        (replace(GOOD, evidence=p.Evidence(healthy_peers=1, mirror_fresh_at=NOW)), p.PEERS_REPORTED_HEALTHY),
        (replace(GOOD, evidence=p.Evidence(healthy_peers=0, mirror_fresh_at=None)), p.MIRROR_EVIDENCE_MISSING),
        (
            replace(GOOD, evidence=p.Evidence(healthy_peers=0, mirror_fresh_at=NOW + timedelta(seconds=30))),
            p.MIRROR_EVIDENCE_INVALID,
        ),
        (
            replace(GOOD, evidence=p.Evidence(healthy_peers=0, mirror_fresh_at=NOW - timedelta(seconds=121))),
            p.MIRROR_STALE,
        ),
    ],
)
def test_each_rule_refuses_alone(snapshot, reason):
    assert p.decide(snapshot) == p.Decision(granted=False, reasons=(reason,))


def test_boundaries_are_inclusive_where_documented():
    # Exactly N seconds of silence is enough; exactly M seconds of mirror age is still fresh.
    at_edge = replace(
        GOOD,
        worker_last_seen_at=NOW - timedelta(seconds=90),
        evidence=p.Evidence(healthy_peers=0, mirror_fresh_at=NOW - timedelta(seconds=120)),
    )
    assert p.decide(at_edge).granted


def test_every_failed_reason_is_listed_in_stable_order():
    worst = p.Snapshot(
        now=NOW,
        policy=POLICY,
        deposit=p.DepositFacts(
            state="revoked", expires_at=NOW - timedelta(1), allow_gateway_writes=False, policy_version=1
        ),
        worker_last_seen_at=NOW,
        rotation_required=True,
        evidence=p.Evidence(healthy_peers=2, mirror_fresh_at=NOW - timedelta(hours=1)),
    )
    decision = p.decide(worst)
    assert not decision.granted
    assert decision.reasons == (
        p.DEPOSIT_REVOKED,
        p.GATEWAY_WRITES_NOT_PERMITTED,
        p.POLICY_VERSION_NOT_ACKNOWLEDGED,
        p.ROTATION_REQUIRED,
        p.WORKER_HEARTBEAT_RECENT,
        p.PEERS_REPORTED_HEALTHY,
        p.MIRROR_STALE,
    )


def test_requester_evidence_cannot_override_escrow_evidence():
    # The requester says everything is fine; the escrow saw the worker 10 s ago: refused.
    snapshot = replace(GOOD, worker_last_seen_at=NOW - timedelta(seconds=10))
    assert p.decide(snapshot).reasons == (p.WORKER_HEARTBEAT_RECENT,)


def test_audit_view_of_the_snapshot_has_the_inputs():
    inputs = GOOD.as_audit()
    assert inputs == {
        "policyVersion": 3,
        "depositState": "active",
        "workerSilenceSeconds": 91.0,
        "healthyPeers": 0,
        "mirrorAgeSeconds": 5.0,
        "rotationRequired": False,
    }
