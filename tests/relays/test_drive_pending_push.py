"""The push of pending gateway writes to a returning worker, its backoff and acknowledgement, and the
release of the relay's lease on resync-complete (the bridge is a fake; the JSON body is the contract)."""

from __future__ import annotations

import contextlib
from datetime import timedelta

import pytest
from django.utils import timezone
from prometheus_client import REGISTRY

from hypertuna.bridge import BridgeError, PeerResponse
from hypertuna.compat import hmac_hex
from relays import pending_push
from replicas.drives import record_pending_write
from replicas.models import PendingWrite
from tests.conftest import SECRET, hex_key
from tests.relays.test_proxy import register

pytestmark = pytest.mark.django_db(transaction=True)
WORKER = "7" * 64


class Workers:
    def __init__(self, status=200):
        self.status = status
        self.pushes = []

    async def peer_request(self, peer_key, method, path, *, body, timeout_ms):
        self.pushes.append((peer_key, method, path, body))
        if self.status is None:
            raise BridgeError("peer-unavailable", "Peer unavailable")
        return PeerResponse(self.status, {}, b'{"status":"accepted"}')


class Coordinator:
    def __init__(self):
        self.released = []

    async def release(self, relay_key, *, reason):
        self.released.append((relay_key, reason))
        return True


@pytest.fixture
def workers(monkeypatch):
    fake = Workers()

    @contextlib.asynccontextmanager
    async def client():
        yield fake

    monkeypatch.setattr(pending_push.blindpeer, "bridge_client", client)
    return fake


def stored(relay_key, write_type="drive", path="/k/f"):
    info = {"driveKey": "e" * 64, "blobsKey": "f" * 64, "version": 3, "mirrored": True, "path": path, "bytes": 5}
    return record_pending_write(
        relay_key=relay_key, identifier=relay_key, write_type=write_type, info=info, lease_id="l1"
    )


def test_a_live_worker_acknowledges_the_push_which_names_the_gateway_drive(workers):
    key = hex_key()
    register(key, [WORKER])
    stored(key)
    stored(key, "http-join", "/join/1-a.json")
    before = REGISTRY.get_sample_value("gateway_pending_write_push_wait_seconds_count") or 0
    assert pending_push.push(key) == "acknowledged"
    ((peer, method, path, body),) = workers.pushes
    assert (peer, method, path) == (WORKER, "POST", "/gateway/pending-writes")
    assert body["relayKey"] == key and body["state"] == "pending" and body["driveKey"] == "e" * 64
    assert body["types"] == ["drive", "http-join"] and body["driveVersion"] == 3 and body["leaseActive"]
    assert {w["path"] for w in body["writes"]} == {"/k/f", "/join/1-a.json"}
    assert all(row.acknowledged_at and row.push_attempts == 1 for row in PendingWrite.objects.all())
    assert REGISTRY.get_sample_value("gateway_pending_write_push_wait_seconds_count") == before + 2
    assert pending_push.push(key) == "nothing"  # acknowledged writes are not pushed again
    assert len(workers.pushes) == 1


def test_unanswered_pushes_back_off_exponentially_with_jitter(workers, settings):
    settings.HYPERTUNA_PENDING_PUSH_BASE_S, settings.HYPERTUNA_PENDING_PUSH_MAX_S = 10, 35
    key = hex_key()
    register(key, [WORKER])
    stored(key)
    workers.status = None
    delays = []
    for _ in range(4):
        started = timezone.now()
        assert pending_push.push(key) == "failed"
        row = PendingWrite.objects.get()
        delays.append((row.next_push_at - started).total_seconds())
    assert 8 <= delays[0] <= 12.1 and 16 <= delays[1] <= 24.1 and 28 <= delays[2] <= 42.1 and delays[3] <= 42.1
    assert row.push_attempts == 4 and row.acknowledged_at is None and "peer-unavailable" in row.last_push_error
    workers.status = 500
    PendingWrite.objects.update(next_push_at=timezone.now() - timedelta(seconds=1))
    assert pending_push.push_due_pending_writes() == 1
    assert PendingWrite.objects.get().last_push_error == "worker answered 500"
    assert pending_push.push_due_pending_writes() == 0  # not due again yet


def test_no_live_worker_means_no_push_until_one_registers(workers):
    key = hex_key()
    register(key, [])
    stored(key)
    assert pending_push.push(key) == "no-worker"
    assert workers.pushes == []
    assert PendingWrite.objects.get().next_push_at > timezone.now()


def test_resync_complete_clears_pushes_cleared_and_releases_the_lease(workers, api, monkeypatch):
    coordinator = Coordinator()
    monkeypatch.setattr("escrow.coordinator.get_coordinator", lambda: coordinator)
    key = hex_key()
    register(key, [WORKER])
    stored(key)
    signature = hmac_hex(SECRET, {"action": "resync-complete", "relayKey": key})
    refused = api.post(f"/api/relays/{key}/resync-complete", HTTP_X_SIGNATURE="00" * 32)
    assert refused.status_code == 401 and coordinator.released == []
    assert PendingWrite.objects.get().cleared_at is None
    response = api.post(f"/api/relays/{key}/resync-complete", HTTP_X_SIGNATURE=signature)
    assert response.status_code == 200
    assert PendingWrite.objects.get().cleared_at is not None
    assert coordinator.released == [(key, "worker-resync")]
    ((_, _, _, body),) = workers.pushes
    assert body["state"] == "cleared" and body["clearedAt"] and body["driveKey"] == "e" * 64
    assert pending_push.push(key) == "nothing"


def test_a_relay_whose_only_offline_writes_are_leased_events_is_pushed_too(workers):
    """Leased events are the replica's pending rows; one marker row per relay gets its worker told, and a new
    event after the acknowledgement re-arms the push. The gauge counts the events, not the marker."""
    from hypertuna.nostr import sign_event
    from replicas.drives import pending_counts
    from replicas.pending import store_leased_event

    key = hex_key()
    register(key, [WORKER])
    secret = bytes(range(1, 33))
    first, second = (
        sign_event(secret, kind=1, content=text, tags=[], created_at=1_700_000_000 + i)
        for i, text in enumerate(("one", "two"))
    )
    assert store_leased_event(relay_key=key, event=first)
    assert pending_push.push_due_pending_writes() == 1
    ((_, _, _, body),) = workers.pushes
    assert body["types"] == ["event"] and body["writes"] == [] and body["reason"] == "autobase"
    assert pending_push.push_due_pending_writes() == 0  # acknowledged
    assert store_leased_event(relay_key=key, event=second)
    assert pending_push.push_due_pending_writes() == 1
    assert pending_counts() == {key: 2}
