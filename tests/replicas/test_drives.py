"""Where a relay's files are held while its workers are offline, and the count of what the gateway holds
for it (files, artifacts and leased events not yet linearized)."""

from __future__ import annotations

import pytest

from relays.pending_push import push_body
from replicas.drives import drive_copies, pending_counts, record_pending_write, relay_known
from replicas.models import CoreType, MirrorCore, PendingWrite
from replicas.pending import store_leased_event
from tests.replicas.helpers import fake_event

pytestmark = pytest.mark.django_db
KEY = "ab" * 32


def _write(write_type: str, path: str) -> PendingWrite:
    info = {"driveKey": "e" * 64, "version": 2, "mirrored": True, "path": path, "bytes": 3}
    return record_pending_write(relay_key=KEY, identifier=KEY, write_type=write_type, info=info, lease_id="l")


def test_pending_counts_add_leased_events_to_files_and_artifacts():
    assert pending_counts() == {}
    store_leased_event(relay_key=KEY, event=fake_event(content="leased"))
    _write("drive", f"/{KEY}/f")
    cleared = _write("http-join", "/join/1.json")
    assert pending_counts() == {KEY: 3}
    PendingWrite.objects.filter(pk=cleared.pk).update(cleared_at=cleared.created_at)
    assert pending_counts() == {KEY: 2}
    body = push_body(KEY, "pending", list(PendingWrite.objects.filter(cleared_at=None)), None, events=1)
    assert body["types"] == ["drive", "event"] and body["reason"] == "drive"
    assert push_body(KEY, "pending", [], None, events=1)["types"] == ["event"]


def test_drive_copies_list_active_mirrored_drives_and_the_worker_folders():
    assert not relay_known(KEY) and not drive_copies(KEY).any
    MirrorCore.objects.create(
        core_key="d" * 64, relay_key=KEY, public_identifier="npub1x:files", core_type=CoreType.HYPERDRIVE_METADATA
    )
    MirrorCore.objects.create(
        core_key="c" * 64,
        relay_key=KEY,
        core_type=CoreType.HYPERDRIVE_METADATA,
        state=MirrorCore.State.REMOVED,
    )
    copies = drive_copies(KEY)
    assert copies.mirror_drive_keys == ("d" * 64,) and copies.folders == ("npub1x:files", KEY)
    assert not copies.gateway_drive and relay_known(KEY)
    _write("drive", f"/{KEY}/f")
    assert drive_copies(KEY).gateway_drive and not drive_copies(KEY, pfp=True).any
