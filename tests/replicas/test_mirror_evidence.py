"""Mirror evidence for the escrow: the owner's last observed contact (live bridge reports and signed
metadata pushes), never a bridge re-scan or a gateway restart; judged by the escrow at that contact."""

from __future__ import annotations

import base64
import secrets
import time
from datetime import datetime, timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from escrow import coordinator as coordinator_module
from escrow import leases as escrow_leases
from hypertuna.exceptions import ApiError
from replicas import services
from replicas.models import MirrorCore
from replicas.selectors import mirror_evidence, replica_status
from tests.conftest import signed_payload
from tests.escrow.conftest import Clock, WorkerSim, escrow_settings  # noqa: F401  (escrow_settings: autouse)

pytestmark = pytest.mark.django_db

VIEW = "0b" * 32
MAX_AGE = 120  # HYPERTUNA_ESCROW_MIRROR_MAX_AGE in the escrow test settings


def ago(**delta: float) -> datetime:
    return timezone.now().replace(microsecond=0) - timedelta(**delta)  # whole ms, as the bridge reports


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def add_view(relay_key: str, at: datetime, core_key: str = VIEW) -> None:
    services.record_mirror_added(data={"coreKey": core_key, "relayKey": relay_key, "type": "autobase-view"}, now=at)


def progress(at: datetime, *, held: int, remote: int, live: int | None, updated: datetime | None = None) -> None:
    """A bridge ``mirror.progress`` report received at ``at`` (``live=None``: an older bridge's report)."""
    data = {"coreKey": VIEW, "length": held, "contiguousLength": held, "remoteLength": remote}
    data["updatedAt"] = ms(updated or at)
    if live is not None:
        data["livePeers"] = live
    services.record_mirror_progress(data=data, now=at)


def test_a_live_report_is_the_owners_contact():
    relay_key = secrets.token_hex(32)
    t0 = ago(minutes=10)
    add_view(relay_key, t0)
    assert mirror_evidence(relay_key) is None, "added, never announced"
    progress(t0, held=5, remote=8, live=1)
    assert mirror_evidence(relay_key) == {"announcedAt": t0, "announcedLength": 8, "mirroredLength": 5}
    progress(t0 + timedelta(seconds=30), held=8, remote=8, live=1)
    assert mirror_evidence(relay_key) == {
        "announcedAt": t0 + timedelta(seconds=30),
        "announcedLength": 8,
        "mirroredLength": 8,
    }


def test_a_restart_snapshot_or_rescan_does_not_make_the_mirror_look_fresher():
    relay_key = secrets.token_hex(32)
    t0 = ago(hours=1)
    add_view(relay_key, t0)
    progress(t0, held=8, remote=8, live=1)
    # The gateway restarts an hour later: the bridge's start-up snapshot reports every core it holds with
    # updatedAt = now and livePeers 0; an older bridge sends no livePeers at all. Neither is a contact.
    later = t0 + timedelta(hours=1)
    progress(later, held=8, remote=9, live=0)
    progress(later, held=8, remote=9, live=None)
    services.record_mirror_added(data={"coreKey": VIEW, "relayKey": relay_key, "type": "autobase-view"}, now=later)
    evidence = mirror_evidence(relay_key)
    assert evidence == {"announcedAt": t0, "announcedLength": 8, "mirroredLength": 8}


def test_the_announcement_never_moves_back_or_into_the_future():
    relay_key = secrets.token_hex(32)
    t0 = ago(minutes=5)
    add_view(relay_key, t0)
    progress(t0, held=10, remote=10, live=1)
    # A late report read before the last one: neither the time nor the length goes back.
    progress(t0 + timedelta(seconds=1), held=10, remote=7, live=1, updated=t0 - timedelta(seconds=20))
    assert mirror_evidence(relay_key)["announcedAt"] == t0
    assert mirror_evidence(relay_key)["announcedLength"] == 10
    # A bridge clock ahead of ours: dated no later than the moment the report arrived.
    arrived = t0 + timedelta(seconds=2)
    progress(arrived, held=10, remote=10, live=1, updated=arrived + timedelta(hours=3))
    assert mirror_evidence(relay_key)["announcedAt"] == arrived


def test_a_signed_metadata_push_with_a_length_is_a_contact():
    relay_key = secrets.token_hex(32)
    payload = {
        "relayKey": relay_key,
        "ownerPeerKey": "ab" * 32,
        "issuedAt": int(time.time() * 1000),
        "cores": [{"coreKey": VIEW, "type": "autobase-view", "length": 40}, {"coreKey": "0c" * 32, "type": "writer"}],
    }
    before = timezone.now()
    services.record_worker_metadata(payload=payload, signature=signed_payload(payload)["signature"])
    evidence = mirror_evidence(relay_key)
    assert evidence is not None and evidence["announcedLength"] == 40 and evidence["mirroredLength"] == 0
    assert evidence["announcedAt"] >= before
    assert MirrorCore.objects.get(core_key="0c" * 32).announced_at is None, "no length named: no contact"


def test_the_most_recently_announced_active_view_core_is_the_evidence():
    relay_key = secrets.token_hex(32)
    t0 = ago(minutes=5)
    add_view(relay_key, t0)
    add_view(relay_key, t0, core_key="0d" * 32)
    progress(t0, held=3, remote=3, live=1)
    services.record_mirror_progress(
        data={
            "coreKey": "0d" * 32,
            "contiguousLength": 1,
            "remoteLength": 2,
            "livePeers": 1,
            "updatedAt": ms(t0) + 5000,
        },
        now=t0 + timedelta(seconds=5),
    )
    later = t0 + timedelta(seconds=5)
    assert mirror_evidence(relay_key) == {"announcedAt": later, "announcedLength": 2, "mirroredLength": 1}
    services.record_mirror_removed(data={"coreKey": "0d" * 32, "reason": "gc"}, now=t0 + timedelta(seconds=6))
    assert mirror_evidence(relay_key)["announcedLength"] == 3
    status = replica_status(relay_key)
    assert status is not None and status["mirrorEvidence"]["announcedLength"] == 3


def unlock_with_gateway_evidence(relay_key: str, clock: Clock) -> dict:
    """What the gateway's coordinator sends, judged by the escrow service at ``clock.now``."""
    mirror = coordinator_module._mirror_evidence_sync(relay_key)
    body = {
        "relayKey": relay_key,
        "sessionPublicKey": base64.b64encode(secrets.token_bytes(32)).decode(),
        "evidence": {"healthyPeers": 0, **({"mirror": mirror} if mirror else {})},
    }
    request = escrow_leases.parse_unlock(body)
    return escrow_leases.unlock(request=request, requester="gateway:test", now=clock.now)


def test_a_mirror_complete_when_the_worker_left_is_granted_ten_times_the_max_age_later():
    clock = Clock()
    worker = WorkerSim(clock)
    worker.deposit()  # the worker's last signed contact with the escrow
    add_view(worker.relay_key, clock.now)
    progress(clock.now, held=40, remote=40, live=1)  # the gateway's last observation of it
    clock.advance(10 * MAX_AGE)
    progress(clock.now, held=40, remote=40, live=0)  # a gateway restart on the way: no contact
    grant = unlock_with_gateway_evidence(worker.relay_key, clock)
    assert grant["fence"] == 1


def test_a_mirror_behind_when_the_worker_left_is_refused_incomplete():
    clock = Clock()
    worker = WorkerSim(clock)
    worker.deposit()
    add_view(worker.relay_key, clock.now)
    progress(clock.now, held=39, remote=40, live=1)
    clock.advance(2 * MAX_AGE)
    with pytest.raises(ApiError) as excinfo:
        unlock_with_gateway_evidence(worker.relay_key, clock)
    assert excinfo.value.extra["reasons"] == ["mirror-incomplete"]


def test_no_announcement_means_no_mirror_evidence():
    clock = Clock()
    worker = WorkerSim(clock)
    worker.deposit()
    add_view(worker.relay_key, clock.now)
    progress(clock.now, held=40, remote=40, live=0)  # only ever seen in a re-scan
    clock.advance(2 * MAX_AGE)
    with pytest.raises(ApiError) as excinfo:
        unlock_with_gateway_evidence(worker.relay_key, clock)
    assert excinfo.value.extra["reasons"] == ["mirror-evidence-missing"]


def test_admin_shows_the_announcement_and_filters_mirrors_behind_it(admin_client):
    relay_key = secrets.token_hex(32)
    t0 = ago(minutes=1)
    add_view(relay_key, t0)
    progress(t0, held=39, remote=41, live=1)
    add_view(relay_key, t0, core_key="0e" * 32)  # never announced
    url = reverse("admin:replicas_mirrorcore_changelist")
    page = admin_client.get(url).content.decode()
    assert "announced length" in page.lower() and ">41<" in page
    behind = admin_client.get(url, {"evidence": "incomplete"}).content.decode()
    assert VIEW in behind and "0e" * 32 not in behind
    assert "0e" * 32 in admin_client.get(url, {"evidence": "none"}).content.decode()
    assert VIEW not in admin_client.get(url, {"evidence": "complete"}).content.decode()
