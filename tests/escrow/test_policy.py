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
    evidence=p.Evidence(healthy_peers=0, mirror=p.MirrorEvidence(NOW - timedelta(seconds=5), 12, 12)),
)


def with_mirror(announced_at=NOW - timedelta(seconds=5), announced=12, mirrored=12, **changes):
    """GOOD with other mirror evidence (and other snapshot fields)."""
    mirror = p.MirrorEvidence(announced_at, announced, mirrored)
    return replace(GOOD, evidence=replace(GOOD.evidence, mirror=mirror), **changes)


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
        (replace(GOOD, evidence=replace(GOOD.evidence, healthy_peers=None)), p.PEER_EVIDENCE_MISSING),
        (replace(GOOD, evidence=replace(GOOD.evidence, healthy_peers=1)), p.PEERS_REPORTED_HEALTHY),
        (replace(GOOD, evidence=replace(GOOD.evidence, mirror=None)), p.MIRROR_EVIDENCE_MISSING),
        (with_mirror(NOW + timedelta(seconds=30)), p.MIRROR_EVIDENCE_INVALID),
        (with_mirror(announced=13, mirrored=12), p.MIRROR_INCOMPLETE),
        # Last seen by the gateway 121 s before the worker's last signed contact (NOW - 91 s).
        (with_mirror(NOW - timedelta(seconds=91 + 121)), p.MIRROR_STALE),
    ],
)
def test_each_rule_refuses_alone(snapshot, reason):
    assert p.decide(snapshot) == p.Decision(granted=False, reasons=(reason,))


def test_boundaries_are_inclusive_where_documented():
    # Exactly N seconds of silence is enough; a gap of exactly M seconds between the gateway's last
    # observation and the worker's last signed contact is still fresh; a mirror holding exactly what was
    # announced is complete.
    at_edge = with_mirror(NOW - timedelta(seconds=90 + 120), worker_last_seen_at=NOW - timedelta(seconds=90))
    assert p.decide(at_edge).granted
    assert p.decide(with_mirror(NOW + p.FUTURE_SKEW)).granted


def test_a_complete_mirror_stays_eligible_for_the_whole_outage():
    # The worker left (last signed contact) right after the gateway saw it; ten times mirror_max_age later
    # the mirror is still exactly as complete as it was: granted. Measuring against "now" would refuse.
    left = NOW - timedelta(seconds=10 * POLICY.mirror_max_age)
    assert p.decide(with_mirror(left - timedelta(seconds=3), worker_last_seen_at=left)).granted


def test_a_mirror_behind_when_the_worker_left_is_refused_however_fresh_the_report():
    assert p.decide(with_mirror(NOW, announced=100, mirrored=99)).reasons == (p.MIRROR_INCOMPLETE,)


def test_mirrored_beyond_announced_is_complete():
    # The blind peer may hold more than the worker announced at its last observed contact (later blocks
    # arrived from the worker before it went away): that is not a reason to refuse.
    assert p.decide(with_mirror(announced=10, mirrored=25)).granted


def test_gateway_contact_after_the_workers_last_escrow_contact_is_fresh():
    assert p.decide(with_mirror(NOW - timedelta(seconds=2))).granted  # gap -89 s


def test_without_an_escrow_last_seen_the_deposit_creation_is_the_workers_contact():
    created = NOW - timedelta(hours=2)
    deposit = replace(GOOD.deposit, created_at=created)
    fresh = with_mirror(created - timedelta(seconds=60), worker_last_seen_at=None, deposit=deposit)
    assert p.decide(fresh).granted
    stale = with_mirror(created - timedelta(seconds=121), worker_last_seen_at=None, deposit=deposit)
    assert p.decide(stale).reasons == (p.MIRROR_STALE,)


def test_older_mirror_fresh_at_form_has_no_lengths_and_counts_as_complete():
    legacy = replace(GOOD, evidence=replace(GOOD.evidence, mirror=p.MirrorEvidence(NOW - timedelta(seconds=100))))
    assert p.decide(legacy).granted
    stale = p.MirrorEvidence(NOW - timedelta(seconds=91 + 121))
    assert p.decide(replace(legacy, evidence=replace(legacy.evidence, mirror=stale))).reasons == (p.MIRROR_STALE,)


@pytest.mark.parametrize(
    ("announced", "mirrored"),
    [
        (True, 12),  # bools are ints in Python: not a length
        (12, False),
        (12.0, 12),
        (12, 12.5),
        (-1, 0),
        (12, -3),
        (2**53, 2**53),  # beyond what the bridge can observe
        (10**30, 12),
        ("12", 12),
        (12, None),  # one length without the other
        (None, 12),
    ],
)
def test_forged_or_malformed_lengths_are_invalid_evidence(announced, mirrored):
    decision = p.decide(with_mirror(announced=announced, mirrored=mirrored))
    assert decision.reasons == (p.MIRROR_EVIDENCE_INVALID,)


def test_forged_future_announcement_is_invalid_not_fresh():
    # A gateway cannot make a stale mirror look fresh by dating its observation in the future.
    forged = with_mirror(NOW + p.FUTURE_SKEW + timedelta(seconds=1), worker_last_seen_at=NOW - timedelta(hours=5))
    assert p.decide(forged).reasons == (p.MIRROR_EVIDENCE_INVALID,)


def test_every_failed_reason_is_listed_in_stable_order():
    worst = p.Snapshot(
        now=NOW,
        policy=POLICY,
        deposit=p.DepositFacts(
            state="revoked", expires_at=NOW - timedelta(1), allow_gateway_writes=False, policy_version=1
        ),
        worker_last_seen_at=NOW,
        rotation_required=True,
        evidence=p.Evidence(healthy_peers=2, mirror=p.MirrorEvidence(NOW - timedelta(hours=1), 5, 4)),
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
        p.MIRROR_INCOMPLETE,
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
        "mirrorAnnouncedAt": (NOW - timedelta(seconds=5)).timestamp(),
        "mirrorAnnouncedLength": 12,
        "mirrorMirroredLength": 12,
        "workerLastContactAt": (NOW - timedelta(seconds=91)).timestamp(),
        "mirrorGapSeconds": -86.0,
        "rotationRequired": False,
    }


def test_audit_view_records_malformed_lengths_as_given():
    inputs = with_mirror(announced=True, mirrored=1.5).as_audit()
    assert (inputs["mirrorAnnouncedLength"], inputs["mirrorMirroredLength"]) == ("True", "1.5")
