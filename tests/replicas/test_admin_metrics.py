"""Admin pages load with pinned query counts; actions confirm first; metrics come from the database."""

from __future__ import annotations

import secrets
import time

import pytest
from django.urls import reverse
from prometheus_client import REGISTRY, generate_latest

from replicas import services
from replicas.models import MirrorAction, MirrorCore, Replica, ReplicaEvent
from tests.replicas.helpers import fake_event, ingest

pytestmark = pytest.mark.django_db


@pytest.fixture
def data():
    keys = []
    for i in range(4):
        relay_key = secrets.token_hex(32)
        view = secrets.token_hex(32)
        services.record_mirror_added(
            data={"coreKey": view, "relayKey": relay_key, "type": "autobase-view", "ownerPeerKey": "ab" * 32}
        )
        services.record_mirror_added(data={"coreKey": secrets.token_hex(32), "relayKey": relay_key, "type": "writer"})
        ingest(relay_key, [fake_event(created_at=1_700_000_000 + j, tags=[["t", "x"]]) for j in range(5)])
        services.record_mirror_progress(
            data={
                "coreKey": view,
                "length": 40 + i,
                "remoteLength": 40 + i,
                "updatedAt": int(time.time() * 1000) - 120_000,
            }
        )
        keys.append(relay_key)
    services.request_gc(reason="test")
    services.record_sync_failure(relay_key=keys[0], error="boom")
    return keys


@pytest.mark.parametrize(
    ("url_name", "max_queries"),
    [
        ("admin:replicas_mirrorcore_changelist", 8),
        ("admin:replicas_replica_changelist", 8),
        ("admin:replicas_replicaevent_changelist", 8),
        ("admin:replicas_mirroraction_changelist", 8),
    ],
)
def test_changelists_load_with_bounded_queries(
    admin_client, data, django_assert_max_num_queries, url_name, max_queries
):
    with django_assert_max_num_queries(max_queries):
        response = admin_client.get(reverse(url_name))
    assert response.status_code == 200


@pytest.mark.parametrize(("flt", "expected"), [("stale", 0), ("lag-1m", 4), ("failed", 0), ("caught-up", 0)])
def test_replica_health_filters(admin_client, data, flt, expected):
    response = admin_client.get(reverse("admin:replicas_replica_changelist"), {"health": flt})
    assert response.status_code == 200
    assert response.context["cl"].result_count == expected


def test_failed_filter_finds_failing_replicas(admin_client, data, settings):
    settings.HYPERTUNA_REPLICA_FAIL_AFTER = 1
    response = admin_client.get(reverse("admin:replicas_replica_changelist"), {"health": "failed"})
    assert [r.relay_key for r in response.context["cl"].result_list] == [data[0]]


def test_detail_pages_load(admin_client, data):
    replica = Replica.objects.first()
    event = ReplicaEvent.objects.first()
    core = MirrorCore.objects.first()
    assert admin_client.get(reverse("admin:replicas_replica_change", args=[replica.pk])).status_code == 200
    assert admin_client.get(reverse("admin:replicas_replicaevent_change", args=[event.pk])).status_code == 200
    assert admin_client.get(reverse("admin:replicas_mirrorcore_change", args=[core.pk])).status_code == 200
    found = admin_client.get(reverse("admin:replicas_replicaevent_changelist"), {"q": bytes(event.eid).hex()})
    assert found.context["cl"].result_count == 1


def test_replica_events_are_read_only(admin_client, data):
    event = ReplicaEvent.objects.first()
    response = admin_client.post(reverse("admin:replicas_replicaevent_change", args=[event.pk]), {"kind": 9})
    assert response.status_code == 403
    assert admin_client.get(reverse("admin:replicas_replicaevent_add")).status_code == 403


def test_drop_action_asks_for_confirmation_then_records_intent(
    admin_client, data, django_capture_on_commit_callbacks, monkeypatch
):
    monkeypatch.setattr("replicas.tasks.perform_mirror_action.delay", lambda action_id: None)
    core = MirrorCore.objects.filter(core_type="writer").first()
    url = reverse("admin:replicas_mirrorcore_changelist")
    confirm = admin_client.post(url, {"action": "drop_mirrors", "_selected_action": [core.pk]})
    assert confirm.status_code == 200 and b"Drop these mirrors?" in confirm.content
    assert MirrorCore.objects.get(pk=core.pk).state == "active"
    with django_capture_on_commit_callbacks(execute=True):
        done = admin_client.post(
            url, {"action": "drop_mirrors", "_selected_action": [core.pk], "confirmed": "yes", "reason": "cleanup"}
        )
    assert done.status_code == 302
    assert MirrorCore.objects.get(pk=core.pk).state == "removing"
    assert MirrorAction.objects.filter(action="drop", core_key=core.core_key, reason="cleanup").exists()


def test_metrics_export_mirror_state_and_real_lag(data):
    services.record_mirror_removed(
        data={"coreKey": MirrorCore.objects.filter(relay_key=data[1], core_type="writer").get().core_key}
    )
    text = generate_latest(REGISTRY).decode()
    assert f'gateway_blind_peer_mirror_state{{relay="{data[1]}",type="writer"}} 0.0' in text
    assert f'gateway_blind_peer_mirror_state{{relay="{data[1]}",type="autobase-view"}} 1.0' in text
    lag_line = next(
        line for line in text.splitlines() if line.startswith(f'gateway_blind_peer_mirror_lag_ms{{relay="{data[2]}"}}')
    )
    lag = float(lag_line.split()[-1])
    # Dated from the blind peer's report two minutes ago, not from the sync that ran just now.
    assert 120_000 <= lag < 180_000


def test_sync_now_enqueues_and_full_resync_confirms_first(admin_client, data, monkeypatch):
    enqueued = []
    monkeypatch.setattr("replicas.tasks.sync_replica.delay", lambda *args: enqueued.append(args))
    replica = Replica.objects.get(relay_key=data[1])
    url = reverse("admin:replicas_replica_changelist")
    admin_client.post(url, {"action": "sync_now", "_selected_action": [replica.pk]})
    assert enqueued == [(data[1],)]
    confirm = admin_client.post(url, {"action": "full_resync", "_selected_action": [replica.pk]})
    assert confirm.status_code == 200 and b"Re-read these replicas?" in confirm.content
    assert len(enqueued) == 1
    admin_client.post(url, {"action": "full_resync", "_selected_action": [replica.pk], "confirmed": "yes"})
    assert enqueued[-1] == (data[1], True)
