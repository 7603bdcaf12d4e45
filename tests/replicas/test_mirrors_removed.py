"""A mirrored core removed by the blind peer (``mirror.removed``, e.g. its byte budget's ``gc-bytes``): the
mirror row says so, and a replica that reads it as its view and is behind says why it stops progressing."""

from __future__ import annotations

import secrets

import pytest
from asgiref.sync import async_to_sync

from replicas.events import handle_bridge_event
from replicas.models import MirrorCore, Replica
from replicas.selectors import replica_status
from replicas.sync import ViewCoreRemoved, sync_relay
from tests.replicas.helpers import FakeReplicaSource, fake_event
from tests.replicas.test_sync import view_mirror

pytestmark = pytest.mark.django_db
T = 1_700_000_000


def _behind_replica(events: int = 30, synced_batches: int = 1) -> tuple[str, FakeReplicaSource]:
    relay_key = secrets.token_hex(32)
    source = FakeReplicaSource([fake_event(created_at=T + i) for i in range(events)])
    view_mirror(relay_key, source)
    async_to_sync(sync_relay)(relay_key, source, batch_size=16, max_batches=synced_batches)
    return relay_key, source


def test_a_removed_view_fails_a_replica_that_is_behind_and_says_why():
    relay_key, source = _behind_replica()
    before = replica_status(relay_key)
    assert before["state"] == "syncing" and before["materializedLength"] == 16 and before["lastError"] is None

    assert handle_bridge_event("mirror.removed", {"coreKey": source.view_core_key, "reason": "gc-bytes"})
    core = MirrorCore.objects.get(core_key=source.view_core_key)
    assert core.state == MirrorCore.State.REMOVED and core.removal_reason == "gc-bytes"
    status = replica_status(relay_key)
    assert status["state"] == "failed", status
    assert "view-core-removed" in status["lastError"] and "gc-bytes" in status["lastError"]
    assert f"16 of {source.length} blocks" in status["lastError"]

    # A sync does not read a view the blind peer no longer holds: it fails, naming the reason.
    reads = len(source.reads)
    with pytest.raises(ViewCoreRemoved, match="gc-bytes"):
        async_to_sync(sync_relay)(relay_key, source)
    assert len(source.reads) == reads
    replica = Replica.objects.get(relay_key=relay_key)
    assert replica.consecutive_failures == 1 and replica.checkpoint_seq == 16
    assert replica_status(relay_key)["state"] == "failed"

    # Its worker mirrors the view again (after the mirror was dropped): the error goes, the sync completes.
    view_mirror(relay_key, source)
    assert replica_status(relay_key)["lastError"] is None
    assert replica_status(relay_key)["state"] == "syncing"
    assert async_to_sync(sync_relay)(relay_key, source).complete
    assert replica_status(relay_key)["state"] == "ready"


def test_a_caught_up_replica_or_another_core_is_not_an_error():
    relay_key, source = _behind_replica(events=5, synced_batches=10)
    drive = secrets.token_hex(32)
    handle_bridge_event("mirror.added", {"coreKey": drive, "relayKey": relay_key, "type": "hyperdrive-blobs"})
    assert handle_bridge_event("mirror.removed", {"coreKey": drive, "reason": "gc-bytes"})
    assert MirrorCore.objects.get(core_key=drive).removal_reason == "gc-bytes"
    assert handle_bridge_event("mirror.removed", {"coreKey": source.view_core_key, "reason": "stale"})
    status = replica_status(relay_key)
    assert status["state"] == "ready" and status["lastError"] is None, status
    assert async_to_sync(sync_relay)(relay_key, source).complete  # nothing left to read: not a failure


def test_the_bridge_reannouncing_a_cleared_view_keeps_it_failed():
    """The byte budget keeps a cleared core's record: the worker's next add is followed by the removal again."""
    relay_key, source = _behind_replica()
    handle_bridge_event("mirror.removed", {"coreKey": source.view_core_key, "reason": "gc-bytes"})
    handle_bridge_event("mirror.added", {"coreKey": source.view_core_key, "relayKey": relay_key, "type": "unknown"})
    assert replica_status(relay_key)["lastError"] is None
    handle_bridge_event("mirror.removed", {"coreKey": source.view_core_key, "reason": "gc-bytes"})
    status = replica_status(relay_key)
    assert status["state"] == "failed" and "gc-bytes" in status["lastError"], status
