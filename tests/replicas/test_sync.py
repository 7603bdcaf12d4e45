"""Replica sync: incremental, crash-safe, idempotent; readiness and real lag."""

from __future__ import annotations

import secrets
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.utils import timezone

from hypertuna.nostr import Filter
from replicas import materialize, services
from replicas.models import MirrorCore, Replica, ReplicaEvent, ReplicaTag
from replicas.queries import query_events
from replicas.selectors import replica_status
from replicas.sync import sync_relay
from tests.nostr.factories import make_event
from tests.replicas.helpers import FakeReplicaSource, fake_event

pytestmark = pytest.mark.django_db
T = 1_700_000_000


def run(relay_key, source, **kwargs):
    return async_to_sync(sync_relay)(relay_key, source, **kwargs)


def view_mirror(relay_key: str, source: FakeReplicaSource, *, remote: int | None = None, at=None) -> None:
    """The bridge reports the relay's view core, then the blind peer's progress on it."""
    services.record_mirror_added(
        data={
            "coreKey": source.view_core_key,
            "relayKey": relay_key,
            "type": "autobase-view",
            "ownerPeerKey": "ab" * 32,
        },
        now=at,
    )
    length = source.length if remote is None else remote
    services.record_mirror_progress(
        data={
            "coreKey": source.view_core_key,
            "length": length,
            "contiguousLength": length,
            "remoteLength": length,
            "updatedAt": int((at or timezone.now()).timestamp() * 1000),
        },
        now=at,
    )


def test_sync_reads_incrementally_from_the_checkpoint():
    relay_key = secrets.token_hex(32)
    source = FakeReplicaSource([fake_event(created_at=T + i) for i in range(30)])
    view_mirror(relay_key, source)
    first = run(relay_key, source, batch_size=16)
    assert first.complete and first.inserted == 30
    assert [start for start, _ in source.reads] == [0, 16, 32, 48]
    assert Replica.objects.get(relay_key=relay_key).checkpoint_seq == source.length

    source.reads.clear()
    source.append([fake_event(created_at=T + 100 + i) for i in range(3)])
    second = run(relay_key, source, batch_size=16)
    assert second.inserted == 3 and source.reads[0][0] == 61
    assert ReplicaEvent.objects.count() == 33


def test_crash_mid_batch_then_restart_loses_and_duplicates_nothing(monkeypatch):
    relay_key = secrets.token_hex(32)
    events = [fake_event(created_at=T + i, tags=[["t", "x"]]) for i in range(40)]
    source = FakeReplicaSource(events)
    view_mirror(relay_key, source)
    run(relay_key, source, batch_size=20, max_batches=1)  # commits 10 events (20 blocks incl. header and indexes)
    committed = Replica.objects.get(relay_key=relay_key).checkpoint_seq
    assert ReplicaEvent.objects.count() == 10

    real_tag_rows = materialize._tag_rows

    def crash(event):
        # Called while the batch's tag rows are built: its event rows are already inserted.
        assert ReplicaEvent.objects.count() > 10
        raise RuntimeError("worker killed mid-batch")

    source.reads.clear()
    monkeypatch.setattr(materialize, "_tag_rows", crash)
    with pytest.raises(RuntimeError):
        run(relay_key, source, batch_size=20)
    replica = Replica.objects.get(relay_key=relay_key)
    assert replica.checkpoint_seq == committed
    assert ReplicaEvent.objects.count() == 10
    assert replica.consecutive_failures == 1 and "mid-batch" in replica.last_error

    monkeypatch.setattr(materialize, "_tag_rows", real_tag_rows)
    result = run(relay_key, source, batch_size=20)
    assert result.complete
    got = query_events(relay_key, [Filter()], max_limit=1000)
    assert sorted(e.id for e in got) == sorted(e.id for e in events)
    assert ReplicaTag.objects.count() == 40
    assert Replica.objects.get(relay_key=relay_key).consecutive_failures == 0


def test_full_resync_is_idempotent():
    relay_key = secrets.token_hex(32)
    source = FakeReplicaSource([fake_event(created_at=T + i) for i in range(12)])
    view_mirror(relay_key, source)
    run(relay_key, source)
    run(relay_key, source, full=True)
    assert ReplicaEvent.objects.count() == 12
    assert Replica.objects.get(relay_key=relay_key).event_count == 12


def test_lag_and_readiness_follow_the_source_while_sync_is_paused():
    relay_key = secrets.token_hex(32)
    t0 = timezone.now() - timedelta(minutes=30)
    source = FakeReplicaSource([fake_event(created_at=T + i) for i in range(5)])
    view_mirror(relay_key, source, at=t0)
    assert replica_status(relay_key, now=t0)["state"] == "pending"
    run(relay_key, source)
    status = replica_status(relay_key)
    assert status["state"] == "ready" and status["lagEntries"] == 0 and status["lagMs"] == 0

    # The worker writes more; the blind peer reports it at t1; sync does not run ("paused").
    t1 = timezone.now() - timedelta(minutes=2)
    source.append([fake_event(created_at=T + 50 + i) for i in range(4)])
    view_mirror(relay_key, source, at=t1)
    now = t1 + timedelta(seconds=90)
    status = replica_status(relay_key, now=now)
    assert status["lagEntries"] == 8
    assert status["lagMs"] == 90_000  # since the oldest unmaterialized entry became known, not since activity
    assert status["state"] == "syncing"
    # Later growth does not make the oldest pending entry younger.
    t2 = t1 + timedelta(seconds=60)
    source.append([fake_event(created_at=T + 80)])
    view_mirror(relay_key, source, at=t2)
    assert replica_status(relay_key, now=now)["lagMs"] == 90_000
    assert replica_status(relay_key, now=t1 + timedelta(seconds=601))["state"] == "stale"

    # Partial catch-up: the oldest pending entry is now one first seen at t2.
    replica = Replica.objects.get(relay_key=relay_key)
    async_to_sync(sync_relay)(relay_key, source, batch_size=source.length - 2 - replica.checkpoint_seq, max_batches=1)
    status = replica_status(relay_key, now=t2 + timedelta(seconds=5))
    assert status["lagEntries"] == 2 and status["lagMs"] == 5_000
    run(relay_key, source)
    assert replica_status(relay_key)["state"] == "ready"


def test_no_new_data_means_no_lag_however_long_ago_the_last_activity():
    relay_key = secrets.token_hex(32)
    long_ago = timezone.now() - timedelta(days=3)
    source = FakeReplicaSource([fake_event()])
    view_mirror(relay_key, source, at=long_ago)
    run(relay_key, source)
    status = replica_status(relay_key, now=timezone.now() + timedelta(days=1))
    assert status["lagMs"] == 0 and status["state"] == "ready"


def test_repeated_source_failures_mark_the_replica_failed():
    relay_key = secrets.token_hex(32)
    source = FakeReplicaSource([fake_event()])
    view_mirror(relay_key, source)
    source.fail_after_reads = 0
    for _ in range(3):
        with pytest.raises(ConnectionError):
            run(relay_key, source)
    assert replica_status(relay_key)["state"] == "failed"
    source.fail_after_reads = None
    run(relay_key, source)
    assert replica_status(relay_key)["state"] == "ready"


def test_signatures_are_verified_when_enabled(settings):
    settings.HYPERTUNA_REPLICA_VERIFY_SIGNATURES = True
    relay_key = secrets.token_hex(32)
    good = make_event("alice", created_at=T)
    forged = fake_event(created_at=T + 1)
    source = FakeReplicaSource([good, forged])
    view_mirror(relay_key, source)
    result = run(relay_key, source)
    assert result.rejected == 1
    assert [e.id for e in query_events(relay_key, [Filter()])] == [good.id]


def test_event_under_a_foreign_key_is_rejected():
    from replicas.sources import ViewBatch, ViewEntry

    relay_key = secrets.token_hex(32)
    services.begin_sync(relay_key=relay_key)
    event = fake_event()
    batch = ViewBatch(entries=[ViewEntry(seq=1, key="cd" * 32, value=event.to_json())], length=2, next_seq=2)
    result = services.ingest_view_batch(relay_key=relay_key, start_seq=0, batch=batch)
    assert result.rejected == 1 and ReplicaEvent.objects.count() == 0


def test_a_new_view_core_restarts_from_block_zero_keeping_rows():
    relay_key = secrets.token_hex(32)
    events = [fake_event(created_at=T + i) for i in range(6)]
    source = FakeReplicaSource(events)
    view_mirror(relay_key, source)
    run(relay_key, source)
    migrated = FakeReplicaSource([*events, fake_event(created_at=T + 50)])
    view_mirror(relay_key, migrated)
    replica = Replica.objects.get(relay_key=relay_key)
    assert replica.view_core_key == migrated.view_core_key and replica.checkpoint_seq == 0
    assert len(query_events(relay_key, [Filter()])) == 6  # still readable while it resyncs
    run(relay_key, migrated)
    assert ReplicaEvent.objects.count() == 7
    assert MirrorCore.objects.filter(relay_key=relay_key).count() == 2


def test_truncated_view_restarts_from_block_zero():
    relay_key = secrets.token_hex(32)
    source = FakeReplicaSource([fake_event(created_at=T + i) for i in range(6)])
    view_mirror(relay_key, source)
    run(relay_key, source)
    source.entries = source.entries[:4]
    source.length = 5
    result = run(relay_key, source)
    assert "view truncated; restarting from block 0" in result.notes
    assert Replica.objects.get(relay_key=relay_key).checkpoint_seq == 5


def test_replicas_sync_command_reports_progress_and_result(capsys):
    from io import StringIO

    from replicas.management.commands.replicas_sync import Command

    relay_key = secrets.token_hex(32)
    source = FakeReplicaSource([fake_event(created_at=T + i) for i in range(7)])
    view_mirror(relay_key, source)
    out = StringIO()
    command = Command(stdout=out, stderr=StringIO())
    failures = async_to_sync(command.sync_all)([relay_key], source, full=False, max_batches=None)
    assert failures == 0
    text = out.getvalue()
    assert f"{source.length}/{source.length} blocks" in text
    assert "caught up, +7 events" in text


def test_beat_enqueues_replicas_that_are_behind_or_unchecked(monkeypatch):
    from replicas import tasks

    behind, fresh, never = (secrets.token_hex(32) for _ in range(3))
    for key in (behind, fresh, never):
        source = FakeReplicaSource([fake_event()])
        view_mirror(key, source)
        if key != never:
            run(key, source)
    services.record_mirror_progress(
        data={"coreKey": Replica.objects.get(relay_key=behind).view_core_key, "length": 99, "remoteLength": 99}
    )
    Replica.objects.create(relay_key=secrets.token_hex(32))  # no view core yet: nothing to read
    enqueued = []
    monkeypatch.setattr(tasks.sync_replica, "delay", lambda key: enqueued.append(key))
    assert tasks.sync_all_replicas() == 2
    assert sorted(enqueued) == sorted([behind, never])


def test_a_batch_read_from_a_stale_checkpoint_is_dropped():
    from replicas.sources import ViewBatch
    from tests.replicas.helpers import entries_for

    relay_key = secrets.token_hex(32)
    services.begin_sync(relay_key=relay_key)
    first = [fake_event(created_at=T)]
    services.ingest_view_batch(
        relay_key=relay_key, start_seq=0, batch=ViewBatch(entries=entries_for(first), length=3, next_seq=3)
    )
    # A second sync that read from block 0 before the first committed must not write anything.
    late = [fake_event(created_at=T + 1)]
    result = services.ingest_view_batch(
        relay_key=relay_key, start_seq=0, batch=ViewBatch(entries=entries_for(late), length=3, next_seq=3)
    )
    assert result.checkpoint == 3 and result.inserted == 0
    assert "checkpoint moved by another sync; batch dropped" in result.notes
    assert [e.id for e in query_events(relay_key, [Filter()])] == [first[0].id]


def test_replicas_list_puts_the_longest_waiting_first():
    from replicas.selectors import replicas_list

    caught_up, behind = secrets.token_hex(32), secrets.token_hex(32)
    for key in (caught_up, behind):
        source = FakeReplicaSource([fake_event()])
        view_mirror(key, source)
        run(key, source)
    services.record_mirror_progress(
        data={"coreKey": Replica.objects.get(relay_key=behind).view_core_key, "length": 50, "remoteLength": 50}
    )
    listed = [r["relayKey"] for r in replicas_list()]
    assert listed.index(behind) < listed.index(caught_up)


def test_bridge_reporting_a_new_view_core_restarts_the_sync_on_it():
    relay_key = secrets.token_hex(32)
    events = [fake_event(created_at=T + i) for i in range(4)]
    source = FakeReplicaSource(events)
    view_mirror(relay_key, source)
    run(relay_key, source)
    # The relay's indexer set changed: the bridge now resolves a different view core for the relay.
    source.view_core_key = secrets.token_hex(32)
    source.append([fake_event(created_at=T + 9)])
    result = run(relay_key, source)
    assert "view core changed; restarting from block 0" in result.notes
    replica = Replica.objects.get(relay_key=relay_key)
    assert replica.view_core_key == source.view_core_key
    assert replica.checkpoint_seq == source.length and result.complete
    assert ReplicaEvent.objects.count() == 5


def test_late_progress_of_an_older_view_core_does_not_pull_the_replica_back():
    relay_key = secrets.token_hex(32)
    t0 = timezone.now() - timedelta(minutes=5)
    old = FakeReplicaSource([fake_event()])
    view_mirror(relay_key, old, at=t0)
    new = FakeReplicaSource([fake_event(), fake_event()])
    view_mirror(relay_key, new, at=t0 + timedelta(minutes=1))
    run(relay_key, new)
    services.record_mirror_progress(data={"coreKey": old.view_core_key, "length": 7, "remoteLength": 7})
    replica = Replica.objects.get(relay_key=relay_key)
    assert replica.view_core_key == new.view_core_key and replica.checkpoint_seq == new.length


class FakeBridgeClient:
    """Answers ``replica.readView`` from a FakeReplicaSource in the wire shape of replicas/README.md."""

    def __init__(self, source: FakeReplicaSource) -> None:
        self.source = source

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return None

    async def call(self, method, params, *, timeout_s=None):
        assert method == "replica.readView"
        batch = await self.source.read_view(
            params["relayKey"], params["viewCoreKey"], params["startSeq"], params["limit"]
        )
        return {
            "viewCoreKey": batch.view_core_key,
            "length": batch.length,
            "nextSeq": batch.next_seq,
            "entries": [{"seq": e.seq, "type": e.type, "key": e.key, "value": e.value} for e in batch.entries],
        }


def test_sync_task_reads_through_the_bridge_rpc_shape(monkeypatch):
    from replicas import blindpeer, tasks

    relay_key = secrets.token_hex(32)
    source = FakeReplicaSource([fake_event(created_at=T + i, tags=[["p", "ab" * 32]]) for i in range(9)])
    view_mirror(relay_key, source)
    monkeypatch.setattr(blindpeer, "bridge_client", lambda: FakeBridgeClient(source))
    outcome = tasks.sync_replica.run(relay_key)
    assert outcome == {
        "relayKey": relay_key,
        "checkpoint": source.length,
        "length": source.length,
        "inserted": 9,
        "complete": True,
    }
    assert len(query_events(relay_key, [Filter.from_json({"#p": ["ab" * 32]})])) == 9
