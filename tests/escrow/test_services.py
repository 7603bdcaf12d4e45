"""Deposit, heartbeat, unlock, renew, revoke, expiry and rotation at the service layer."""

from __future__ import annotations

import base64
import secrets

import pytest
from django.db import IntegrityError, transaction
from django.urls import reverse

from escrow import audit, crypto, leases, services
from escrow.keystore import escrow_keys
from escrow.models import AuditEntry, Deposit, Lease, WorkerBinding
from hypertuna.exceptions import ApiError
from tests.escrow.conftest import WorkerSim, open_grant, unlock

pytestmark = pytest.mark.django_db

SILENCE = 91  # one second past HYPERTUNA_ESCROW_HEARTBEAT_SILENCE in the test settings


def refused(excinfo) -> list[str]:
    assert excinfo.value.status_code == 412 and excinfo.value.code == "unlock-refused"
    return excinfo.value.extra["reasons"]


def test_full_lifecycle(worker, clock):
    status, body = worker.deposit()
    assert status == 201 and body["relayKey"] == worker.relay_key

    # The worker has just been heard from (the deposit itself): no unlock yet.
    with pytest.raises(ApiError) as excinfo:
        unlock(clock, worker.relay_key)
    assert refused(excinfo) == ["worker-heartbeat-recent"]

    clock.advance(SILENCE)
    grant, session = unlock(clock, worker.relay_key)
    assert grant["fence"] == 1 and grant["expiresAt"] - grant["issuedAt"] == 300
    opened = open_grant(grant, session)
    assert bytes(opened.writer_secret) == bytes(worker.writer.secret)
    assert opened.writer_public == worker.writer.public

    clock.advance(60)
    renewed = leases.renew(lease_id=grant["leaseId"], requester="gateway:test", now=clock.now)
    assert renewed["expiresAt"] == int(clock.now.timestamp()) + 300

    # The worker comes back: its heartbeat ends the lease and demands a new writer key.
    clock.advance(5)
    beat = worker.heartbeat()
    assert beat["leaseRevoked"] == grant["leaseId"] and beat["rotationRequired"] is True
    assert Lease.objects.get(id=grant["leaseId"]).state == Lease.State.REVOKED
    with pytest.raises(ApiError) as excinfo:
        leases.renew(lease_id=grant["leaseId"], requester="gateway:test", now=clock.now)
    assert excinfo.value.code == "lease-not-active"

    clock.advance(SILENCE)
    with pytest.raises(ApiError) as excinfo:
        unlock(clock, worker.relay_key)
    assert refused(excinfo) == ["rotation-required"]

    with pytest.raises(ApiError) as excinfo:
        worker.deposit()  # same, released, writer key
    assert excinfo.value.code == "writer-key-must-rotate"

    worker.rotate_writer()
    assert worker.deposit()[0] == 201
    clock.advance(SILENCE)
    grant2, session2 = unlock(clock, worker.relay_key)
    assert grant2["fence"] == 2
    assert bytes(open_grant(grant2, session2).writer_secret) == bytes(worker.writer.secret)

    clock.advance(1)
    result = worker.revoke()
    assert result["leaseRevoked"] == grant2["leaseId"] and result["depositRevoked"]
    clock.advance(SILENCE)
    with pytest.raises(ApiError) as excinfo:
        unlock(clock, worker.relay_key)
    assert refused(excinfo) == ["deposit-revoked"]

    actions = list(AuditEntry.objects.values_list("action", flat=True))
    assert actions == [
        "deposit",
        "unlock-refused",
        "unlock-granted",
        "renew",
        "rotation",
        "unlock-refused",
        "deposit",
        "unlock-granted",
        "revoke",
        "revoke",
        "unlock-refused",
    ]
    assert audit.verify(record=False).ok


def test_unlock_refusal_lists_every_failed_reason_and_is_audited(worker, clock):
    worker.deposit(allow_gateway_writes=False)
    with pytest.raises(ApiError) as excinfo:
        unlock(clock, worker.relay_key, healthy=2, mirror_age=None)
    assert refused(excinfo) == [
        "gateway-writes-not-permitted",
        "worker-heartbeat-recent",
        "peers-reported-healthy",
        "mirror-evidence-missing",
    ]
    row = AuditEntry.objects.get(action="unlock-refused")
    assert row.details["reasons"] == refused(excinfo)
    assert row.details["inputs"]["healthyPeers"] == 2
    assert row.actor == "gateway:test-gateway"


def test_unlock_for_unknown_relay_is_refused_with_no_deposit(clock):
    with pytest.raises(ApiError) as excinfo:
        unlock(clock, secrets.token_hex(32))
    assert refused(excinfo) == ["no-deposit"]


def test_every_policy_reason_reachable_through_the_service(worker, clock, settings):
    worker.deposit()
    clock.advance(SILENCE)
    cases = {
        "peers-reported-healthy": {"healthy": 1},
        "peer-evidence-missing": {"healthy": None},
        "mirror-evidence-missing": {"mirror_age": None},
        # The gateway last saw the worker 121 s before the worker's last signed contact (its deposit).
        "mirror-stale": {"mirror_age": SILENCE + 121},
        "mirror-evidence-invalid": {"mirror_age": -60},
        "mirror-incomplete": {"announced": 9, "mirrored": 8},
    }
    for reason, kwargs in cases.items():
        with pytest.raises(ApiError) as excinfo:
            unlock(clock, worker.relay_key, **kwargs)
        assert refused(excinfo) == [reason]
    settings.HYPERTUNA_ESCROW_POLICY_VERSION = 2
    with pytest.raises(ApiError) as excinfo:
        unlock(clock, worker.relay_key)
    assert refused(excinfo) == ["policy-version-not-acknowledged"]


def test_a_mirror_complete_when_the_worker_left_stays_eligible_for_the_whole_outage(worker, clock):
    worker.deposit()
    left_at = clock.now
    clock.advance(10 * 120)  # ten times mirror_max_age after the worker's last contact
    grant, _ = unlock(clock, worker.relay_key, mirror_age=10 * 120, announced=40, mirrored=40)
    assert grant["fence"] == 1
    inputs = AuditEntry.objects.get(action="unlock-granted").details["inputs"]
    assert inputs["mirrorAnnouncedAt"] == left_at.timestamp()
    assert inputs["workerLastContactAt"] == left_at.timestamp()
    assert (inputs["mirrorAnnouncedLength"], inputs["mirrorMirroredLength"], inputs["mirrorGapSeconds"]) == (40, 40, 0)


def test_a_mirror_behind_when_the_worker_left_is_refused_and_the_audit_shows_why(worker, clock):
    worker.deposit()
    clock.advance(SILENCE)
    with pytest.raises(ApiError) as excinfo:
        unlock(clock, worker.relay_key, mirror_age=SILENCE, announced=41, mirrored=40)
    assert refused(excinfo) == ["mirror-incomplete"]
    inputs = AuditEntry.objects.get(action="unlock-refused").details["inputs"]
    assert (inputs["mirrorAnnouncedLength"], inputs["mirrorMirroredLength"]) == (41, 40)


def test_unlock_body_mirror_evidence_is_parsed_strictly():
    base = {"relayKey": "ab" * 32, "sessionPublicKey": base64.b64encode(bytes(32)).decode()}

    def parse(**evidence):
        return leases.parse_unlock({**base, "evidence": {"healthyPeers": 0, **evidence}}).mirror

    good = {"announcedAt": 1_700_000_000, "announcedLength": 7, "mirroredLength": 9}
    assert (parse(mirror=good).announced_length, parse(mirror=good).mirrored_length) == (7, 9)
    # The older form: a time, no lengths (taken as complete); the new form wins when both are sent.
    legacy = parse(mirrorFreshAt=1_700_000_000)
    assert legacy.announced_at.timestamp() == 1_700_000_000 and legacy.announced_length is None
    assert parse(mirror=good, mirrorFreshAt=5).announced_at.timestamp() == 1_700_000_000
    assert parse() is None
    for field, value in [
        ("announcedLength", True),
        ("announcedLength", 7.0),
        ("mirroredLength", -1),
        ("mirroredLength", 2**53),
        ("mirroredLength", "9"),
        ("announcedAt", 10**20),
        ("announcedAt", -1),
        ("announcedAt", False),
        ("announcedLength", None),
    ]:
        with pytest.raises(ApiError) as excinfo:
            parse(mirror={**good, field: value})
        assert excinfo.value.code == "invalid-request" and excinfo.value.status_code == 400, (field, value)
    for bad in ([good], "fresh", 0):
        with pytest.raises(ApiError):
            parse(mirror=bad)


def test_deposit_expiry_refuses_unlock(worker, clock):
    worker.deposit(expires_at=int(clock.now.timestamp()) + 200)
    clock.advance(201)
    with pytest.raises(ApiError) as excinfo:
        unlock(clock, worker.relay_key)
    assert refused(excinfo) == ["deposit-expired"]
    assert Deposit.objects.get().state == Deposit.State.EXPIRED


def test_deposit_expiry_is_capped_by_policy(worker, clock, settings):
    settings.HYPERTUNA_ESCROW_DEPOSIT_MAX_TTL = 3600
    _, body = worker.deposit(expires_at=int(clock.now.timestamp()) + 10 * 86400)
    assert body["expiresAt"] == int(clock.now.timestamp()) + 3600


# --- Adversarial deposits -------------------------------------------------------------------------------


def test_tampered_deposit_fields_fail_the_signature(worker):
    body = worker.deposit_body()
    for field, value in [
        ("relayKey", secrets.token_hex(32)),
        ("allowGatewayWrites", False),
        ("expiresAt", body["expiresAt"] + 1),
        ("ownerIdentity", "someone-else"),
        ("writerPublicKey", crypto.generate_signing_keypair().public.hex()),
        ("idempotencyKey", "x" * 24),
    ]:
        with pytest.raises(ApiError) as excinfo:
            worker.deposit({**body, field: value})
        assert excinfo.value.code == "invalid-signature", field
    assert not Deposit.objects.exists()


def test_tampered_ciphertext_fails_the_signature_and_a_resigned_one_fails_to_open(worker):
    body = worker.deposit_body()
    sealed = bytearray(base64.b64decode(body["sealedSecret"]))
    sealed[-1] ^= 1
    with pytest.raises(ApiError) as excinfo:
        worker.deposit({**body, "sealedSecret": base64.b64encode(bytes(sealed)).decode()})
    assert excinfo.value.code == "invalid-signature"
    # Even the worker itself cannot get a corrupted package accepted.
    junk = crypto.seal(escrow_keys().public_key, b"not a package")
    with pytest.raises(ApiError) as excinfo:
        worker.deposit(_resigned(worker, sealed_secret=junk))
    assert excinfo.value.code == "package-malformed"


def _resigned(worker: WorkerSim, *, sealed_secret: bytes, relay_key: str | None = None) -> dict:
    """A correctly signed deposit around an arbitrary sealed blob (a malicious or buggy worker)."""
    from escrow import wire

    body = worker.deposit_body()
    relay_key = relay_key or worker.relay_key
    body.update(relayKey=relay_key, sealedSecret=crypto.b64encode(sealed_secret), issuedAt=worker.next_ms())
    signed = wire.deposit_message(
        relay_key=relay_key,
        worker_key=worker.signing.public,
        owner_identity=body["ownerIdentity"],
        writer_public_key=bytes.fromhex(body["writerPublicKey"]),
        sealed_secret=sealed_secret,
        escrow_key_id=body["escrowKeyId"],
        policy_version=body["policyVersion"],
        allow_gateway_writes=body["allowGatewayWrites"],
        expires_at=body["expiresAt"],
        issued_at_ms=body["issuedAt"],
        idempotency_key=body["idempotencyKey"],
    )
    body["signature"] = crypto.b64encode(worker.signing.sign(signed))
    return body


def test_wrong_relay_package_is_refused(worker, clock):
    # A package sealed for relay A, wrapped in a valid deposit for relay B (cut and paste between relays).
    other_relay = secrets.token_hex(32)
    sealed_for_a = crypto.seal_writer_package(
        escrow_keys().public_key, worker.relay_key, worker.writer.public, worker.writer.secret
    )
    with pytest.raises(ApiError) as excinfo:
        worker.deposit(_resigned(worker, sealed_secret=sealed_for_a, relay_key=other_relay))
    assert excinfo.value.code == "package-relay-mismatch"


def test_package_naming_another_writer_is_refused(worker):
    other = crypto.generate_signing_keypair()
    sealed = crypto.seal_writer_package(escrow_keys().public_key, worker.relay_key, other.public, other.secret)
    with pytest.raises(ApiError) as excinfo:
        worker.deposit(_resigned(worker, sealed_secret=sealed))
    assert excinfo.value.code == "package-writer-mismatch"


def test_a_public_key_is_not_accepted_as_a_writer_secret(worker):
    # The earlier design escrowed the writer's public key; the escrow now proves the secret signs as the key.
    fake_secret = worker.writer.public + worker.writer.public
    plaintext = crypto.writer_package_plaintext(worker.relay_key, worker.writer.public, fake_secret)
    with pytest.raises(ApiError) as excinfo:
        worker.deposit(_resigned(worker, sealed_secret=crypto.seal(escrow_keys().public_key, plaintext)))
    assert excinfo.value.code == "writer-secret-invalid"


def test_replayed_deposit_returns_the_first_answer_and_changes_nothing(worker, clock):
    body = worker.deposit_body()
    status, first = worker.deposit(body)
    clock.advance(3600)  # long past the signature window: answered from the idempotency record
    status2, second = worker.deposit(body)
    assert (status, status2) == (201, 201) and second["replayed"] is True
    assert second["depositId"] == first["depositId"]
    assert Deposit.objects.count() == 1 and AuditEntry.objects.filter(action="deposit").count() == 1


def test_replay_of_an_older_deposit_does_not_resurrect_it(worker, clock):
    old = worker.deposit_body()
    worker.deposit(old)
    worker.rotate_writer()
    clock.advance(1)
    _, newest = worker.deposit()
    _, replay = worker.deposit(old)
    assert replay["replayed"] is True
    active = Deposit.objects.get(state=Deposit.State.ACTIVE)
    assert str(active.id) == newest["depositId"]


def test_idempotency_key_reuse_with_other_content_is_refused(worker):
    body = worker.deposit_body(idempotency_key="k" * 20)
    worker.deposit(body)
    worker.rotate_writer()
    with pytest.raises(ApiError) as excinfo:
        worker.deposit(worker.deposit_body(idempotency_key="k" * 20))
    assert excinfo.value.status_code == 422 and excinfo.value.code == "idempotency-key-reused"


def test_stale_and_future_deposits_are_refused(worker, clock):
    for skew in (-301, 301):
        body = worker.deposit_body(issued_at_ms=int((clock.now.timestamp() + skew) * 1000))
        with pytest.raises(ApiError) as excinfo:
            worker.deposit(body)
        assert excinfo.value.code == "signature-expired"


def test_expired_deposit_is_refused(worker, clock):
    with pytest.raises(ApiError) as excinfo:
        worker.deposit(expires_at=int(clock.now.timestamp()) - 1)
    assert excinfo.value.code == "deposit-expired"


def test_deposit_must_use_the_current_escrow_key_and_policy(worker, settings):
    with pytest.raises(ApiError) as excinfo:
        worker.deposit(policy={**worker_policy(), "escrowKeyId": "0" * 16})
    assert excinfo.value.code == "escrow-key-changed"
    with pytest.raises(ApiError) as excinfo:
        worker.deposit(policy={**worker_policy(), "version": 7})
    assert excinfo.value.code == "policy-version-mismatch"


def worker_policy() -> dict:
    from escrow import selectors

    return selectors.policy_document()["policy"]


def test_another_worker_cannot_deposit_heartbeat_or_revoke_for_a_bound_relay(worker, clock):
    worker.deposit()
    intruder = WorkerSim(clock, relay_key=worker.relay_key)
    with pytest.raises(ApiError) as excinfo:
        intruder.deposit()
    assert excinfo.value.status_code == 403 and excinfo.value.code == "relay-bound-to-other-worker"
    for action in (intruder.heartbeat, intruder.revoke):
        with pytest.raises(ApiError) as excinfo:
            action()
        assert excinfo.value.code == "relay-bound-to-other-worker"
    assert Deposit.objects.get().state == Deposit.State.ACTIVE


def test_replayed_heartbeat_and_revoke_are_refused(worker, clock):
    worker.deposit()
    beat = worker.statement("heartbeat")
    worker.heartbeat(beat)
    with pytest.raises(ApiError) as excinfo:
        worker.heartbeat(beat)
    assert excinfo.value.code == "signature-replayed"
    revoke = worker.statement("revoke", "x")
    services.worker_revoke(body=revoke, actor="worker:t", now=clock.now)
    with pytest.raises(ApiError) as excinfo:
        services.worker_revoke(body=revoke, actor="worker:t", now=clock.now)
    assert excinfo.value.code == "signature-replayed"


def test_heartbeat_signature_is_domain_separated_from_revoke(worker):
    worker.deposit()
    beat = worker.statement("heartbeat")
    # A heartbeat signature presented as a revoke (same fields, reason empty) must not verify.
    with pytest.raises(ApiError) as excinfo:
        services.worker_revoke(body={**beat, "reason": ""}, actor="worker:t")
    assert excinfo.value.code == "invalid-signature"


def test_heartbeat_for_unknown_relay_is_refused(worker):
    with pytest.raises(ApiError) as excinfo:
        worker.heartbeat()
    assert excinfo.value.status_code == 404


@pytest.mark.parametrize(
    "mutation",
    [
        {"relayKey": "NOT-A-KEY"},
        {"relayKey": "A" * 64},  # non-canonical spelling of a hex key
        {"workerKey": "zz"},
        {"sealedSecret": "%%%"},
        {"signature": base64.b64encode(b"short").decode()},
        {"policyVersion": "1"},
        {"allowGatewayWrites": "yes"},
        {"idempotencyKey": "short"},
        {"version": 2},
        {"ownerIdentity": "a\nb"},
    ],
)
def test_malformed_deposits_are_rejected_with_400(worker, mutation):
    with pytest.raises(ApiError) as excinfo:
        worker.deposit({**worker.deposit_body(), **mutation})
    assert excinfo.value.status_code == 400


# --- Re-deposit, leases, expiry -------------------------------------------------------------------------


def test_redeposit_replaces_the_package_atomically(worker, clock):
    _, first = worker.deposit()
    worker.rotate_writer()
    clock.advance(1)
    _, second = worker.deposit()
    assert second["supersedes"] == first["depositId"]
    assert Deposit.objects.get(id=first["depositId"]).state == Deposit.State.SUPERSEDED
    clock.advance(SILENCE)
    grant, session = unlock(clock, worker.relay_key)
    assert bytes(open_grant(grant, session).writer_secret) == bytes(worker.writer.secret)


def test_redeposit_while_leased_revokes_the_lease(worker, clock):
    worker.deposit()
    clock.advance(SILENCE)
    grant, _ = unlock(clock, worker.relay_key)
    worker.rotate_writer()
    worker.deposit()
    assert Lease.objects.get(id=grant["leaseId"]).state == Lease.State.REVOKED
    assert AuditEntry.objects.filter(action="rotation", lease_id=grant["leaseId"]).exists()


def test_a_returning_worker_refused_for_its_released_key_still_ends_the_lease(worker, clock):
    """The worker's first signed word after an outage may be a deposit of the writer key the gateway was
    given: it is refused (the key must rotate), but it proves the worker is back, so the lease ends then
    rather than when the rotated deposit arrives (or, later still, when the lease lapses)."""
    worker.deposit()
    clock.advance(SILENCE)
    grant, _ = unlock(clock, worker.relay_key)
    clock.advance(5)
    stale = worker.deposit_body()  # the released writer key
    with pytest.raises(ApiError) as excinfo:
        worker.deposit(stale)
    assert excinfo.value.status_code == 409 and excinfo.value.code == "writer-key-must-rotate"
    assert Lease.objects.get(id=grant["leaseId"]).state == Lease.State.REVOKED
    rotation = AuditEntry.objects.get(action="rotation", lease_id=grant["leaseId"])
    assert rotation.reason == "worker-reconnected" and rotation.actor.startswith("worker:")
    binding = WorkerBinding.objects.get(relay_key=worker.relay_key)
    assert binding.rotation_required and binding.last_seen_at == clock.now

    # The refused body cannot be played again (its clock is spent), and nothing further is audited.
    entries = AuditEntry.objects.count()
    clock.advance(1)
    with pytest.raises(ApiError) as excinfo:
        worker.deposit(stale)
    assert excinfo.value.code == "signature-replayed"
    assert AuditEntry.objects.count() == entries

    # No new lease while the rotation is owed, even once the worker is silent again.
    clock.advance(SILENCE)
    with pytest.raises(ApiError) as excinfo:
        unlock(clock, worker.relay_key)
    assert refused(excinfo) == ["rotation-required"]

    # The rotated deposit completes the rotation.
    worker.rotate_writer()
    assert worker.deposit()[0] == 201
    last = AuditEntry.objects.filter(action="deposit").order_by("-seq").first()
    assert last is not None and last.details["rotationCompleted"] is True
    assert audit.verify(record=False).ok


def test_second_unlock_while_a_lease_is_active_is_a_conflict(worker, clock):
    worker.deposit()
    clock.advance(SILENCE)
    grant, _ = unlock(clock, worker.relay_key)
    with pytest.raises(ApiError) as excinfo:
        unlock(clock, worker.relay_key)
    assert excinfo.value.status_code == 409 and excinfo.value.extra["leaseId"] == grant["leaseId"]
    assert "sealedSecret" not in excinfo.value.extra


def test_database_refuses_a_second_active_lease(worker, clock):
    worker.deposit()
    clock.advance(SILENCE)
    grant, _ = unlock(clock, worker.relay_key)
    lease = Lease.objects.get(id=grant["leaseId"])
    with pytest.raises(IntegrityError), transaction.atomic():
        Lease.objects.create(
            relay_key=lease.relay_key,
            deposit=lease.deposit,
            fence=lease.fence + 1,
            requester="x",
            session_key_hash="0" * 64,
            issued_at=clock.now,
            expires_at=clock.now,
            max_expires_at=clock.now,
        )
    with pytest.raises(IntegrityError), transaction.atomic():
        Deposit.objects.create(
            relay_key=lease.relay_key,
            worker_key="0" * 64,
            writer_public_key="0" * 64,
            sealed_secret=b"x",
            escrow_key_id="0" * 16,
            policy_version=1,
            issued_at=clock.now,
            expires_at=clock.now,
            created_at=clock.now,
        )


def test_lease_expires_and_a_new_one_gets_a_higher_fence(worker, clock):
    worker.deposit()
    clock.advance(SILENCE)
    grant, _ = unlock(clock, worker.relay_key, ttl=60)
    assert grant["expiresAt"] - grant["issuedAt"] == 60
    clock.advance(61)
    assert leases.expire_leases(now=clock.now) == 1
    assert leases.expire_leases(now=clock.now) == 0  # idempotent
    assert Lease.objects.get(id=grant["leaseId"]).state == Lease.State.EXPIRED
    assert AuditEntry.objects.filter(action="expire", lease_id=grant["leaseId"]).count() == 1
    grant2, _ = unlock(clock, worker.relay_key)
    assert grant2["fence"] == 2


def test_an_unswept_expired_lease_blocks_nothing_and_cannot_be_renewed(worker, clock):
    worker.deposit()
    clock.advance(SILENCE)
    grant, _ = unlock(clock, worker.relay_key, ttl=30)
    clock.advance(31)
    with pytest.raises(ApiError) as excinfo:
        leases.renew(lease_id=grant["leaseId"], requester="gateway:test", now=clock.now)
    assert excinfo.value.code == "lease-not-active"
    assert Lease.objects.get(id=grant["leaseId"]).state == Lease.State.EXPIRED  # recorded despite the refusal
    unlock(clock, worker.relay_key)


def test_ttl_and_renewals_are_capped_at_the_maximum(worker, clock, settings):
    settings.HYPERTUNA_ESCROW_LEASE_MAX_TTL = 600
    worker.deposit()
    clock.advance(SILENCE)
    grant, _ = unlock(clock, worker.relay_key, ttl=10_000)
    assert grant["expiresAt"] - grant["issuedAt"] == 600
    for _ in range(3):
        clock.advance(150)
        renewed = leases.renew(lease_id=grant["leaseId"], requester="gateway:test", ttl=600, now=clock.now)
    assert renewed["expiresAt"] == grant["maxExpiresAt"]


def test_gateway_revoke_ends_the_lease_but_keeps_the_deposit(worker, clock):
    worker.deposit()
    clock.advance(SILENCE)
    grant, _ = unlock(clock, worker.relay_key)
    result = leases.revoke_lease_by_id(lease_id=grant["leaseId"], actor="gateway:test", reason="done")
    assert result["leaseRevoked"] == grant["leaseId"] and result["depositRevoked"] is None
    grant2, _ = unlock(clock, worker.relay_key)
    assert grant2["fence"] == 2


def test_operator_rebind_moves_a_relay_to_a_new_worker_key(worker, clock):
    worker.deposit()
    newcomer = WorkerSim(clock, relay_key=worker.relay_key)
    services.rebind_worker(
        relay_key=worker.relay_key,
        worker_key=newcomer.signing.public.hex(),
        actor="operator:alice",
        reason="worker reinstalled",
    )
    assert Deposit.objects.get().state == Deposit.State.REVOKED
    assert newcomer.deposit()[0] == 201
    assert WorkerBinding.objects.get().worker_key == newcomer.signing.public.hex()
    with pytest.raises(ApiError):
        worker.heartbeat()


def test_failed_audit_append_rolls_back_the_grant(worker, clock, monkeypatch):
    worker.deposit()
    clock.advance(SILENCE)

    def broken(**kwargs):
        raise audit.AuditError("disk full")

    monkeypatch.setattr(audit, "append", broken)
    with pytest.raises(audit.AuditError):
        unlock(clock, worker.relay_key)
    assert not Lease.objects.exists()
    assert Deposit.objects.get().released_at is None


def test_grant_seals_to_the_requested_session_key_only(worker, clock):
    worker.deposit()
    clock.advance(SILENCE)
    grant, session = unlock(clock, worker.relay_key)
    stranger = crypto.generate_session_keypair()
    with pytest.raises(crypto.CryptoError):
        open_grant(grant, stranger)  # the envelope signature binds the session key
    tampered = {**grant, "fence": grant["fence"] + 1}
    with pytest.raises(crypto.CryptoError):
        open_grant(tampered, session)
    with pytest.raises(crypto.CryptoError) as excinfo:
        open_grant(grant, session)  # the session key was discarded by the failed attempt
    assert excinfo.value.code == "session-key-used"


def test_opening_twice_is_refused(worker, clock):
    worker.deposit()
    clock.advance(SILENCE)
    grant, session = unlock(clock, worker.relay_key)
    open_grant(grant, session)
    with pytest.raises(crypto.CryptoError):
        open_grant(grant, session)


def test_expiry_of_lapsed_deposits_is_audited(worker, clock):
    worker.deposit(expires_at=int(clock.now.timestamp()) + 100)
    clock.advance(101)
    assert leases.expire_leases(now=clock.now) == 1
    assert AuditEntry.objects.filter(action="expire", reason="deposit-expired").count() == 1
    assert Deposit.objects.get().ended_at == clock.now


def test_deposit_sealed_to_a_retired_escrow_key_is_refused(worker, clock):
    worker.deposit()
    clock.advance(SILENCE)
    Deposit.objects.update(escrow_key_id="f" * 16)  # as if the escrow key had been rotated since
    with pytest.raises(ApiError) as excinfo:
        unlock(clock, worker.relay_key)
    assert refused(excinfo) == ["deposit-key-retired"]


def test_a_stored_package_that_no_longer_opens_releases_nothing(worker, clock):
    worker.deposit()
    clock.advance(SILENCE)
    Deposit.objects.update(sealed_secret=crypto.seal(escrow_keys().public_key, b"garbage"))
    with pytest.raises(ApiError) as excinfo:
        unlock(clock, worker.relay_key)
    assert excinfo.value.status_code == 500 and excinfo.value.code == "deposit-unreadable"
    assert not Lease.objects.exists() and Deposit.objects.get().released_at is None


def test_worker_revoke_after_the_deposit_expired_leaves_it_expired(worker, clock):
    """Read-time expiry comes first: a revoke at or after ``expiresAt`` finds no active deposit, and the
    refusal names the expiry (found by the lease state machine: deposit ttl 200, +200 s, revoke, unlock)."""
    worker.deposit(expires_at=int(clock.now.timestamp()) + 200)
    clock.advance(200)
    assert worker.revoke()["depositRevoked"] is None
    clock.advance(SILENCE)
    with pytest.raises(ApiError) as refused:
        unlock(clock, worker.relay_key)
    assert refused.value.status_code == 412
    assert (
        "deposit-expired" in refused.value.extra["reasons"] and "deposit-revoked" not in refused.value.extra["reasons"]
    )


def test_the_admin_shows_the_inputs_of_each_decision(worker, clock, admin_client):
    worker.deposit()
    clock.advance(SILENCE)
    with pytest.raises(ApiError):
        unlock(clock, worker.relay_key, announced=9, mirrored=8)
    row = AuditEntry.objects.get(action="unlock-refused")
    page = admin_client.get(reverse("admin:escrow_auditentry_change", args=[row.pk])).content.decode()
    for key in ("mirrorAnnouncedLength", "mirrorMirroredLength", "mirrorGapSeconds", "workerLastContactAt"):
        assert f"<th>{key}</th>" in page
    assert "<td>9</td>" in page and "<td>8</td>" in page
