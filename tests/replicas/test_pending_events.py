"""Events written under a lease are materialized at once as pending, under the usual rules, and become
linearized (not duplicated) when the view brings them."""

from __future__ import annotations

import secrets

import pytest

from hypertuna.nostr import Filter
from replicas.models import Replica, ReplicaEvent
from replicas.pending import store_leased_event
from replicas.queries import query_events
from tests.replicas.helpers import ensure_replica, fake_event, ingest

pytestmark = pytest.mark.django_db
T = 1_700_000_000


def visible(relay_key: str, **filter_json) -> list[str]:
    return [e.id for e in query_events(relay_key, [Filter.from_json(filter_json)])]


def row(relay_key: str, event_id: str) -> ReplicaEvent:
    return ReplicaEvent.objects.get(replica__relay_key=relay_key, eid=bytes.fromhex(event_id))


def test_a_leased_event_answers_reqs_at_once_and_is_marked_pending():
    relay_key = secrets.token_hex(32)
    old = fake_event(created_at=T)
    ensure_replica(relay_key)
    ingest(relay_key, [old])
    written = fake_event(created_at=T + 10, tags=[["t", "x"]])
    assert store_leased_event(relay_key=relay_key, event=written) is True
    assert visible(relay_key) == [written.id, old.id]
    assert visible(relay_key, **{"#t": ["x"]}) == [written.id]  # tags are indexed like any row
    assert row(relay_key, written.id).pending is True and row(relay_key, old.id).pending is False
    assert Replica.objects.get(relay_key=relay_key).event_count == 2
    # The same event again (a client retry answered "duplicate") changes nothing.
    assert store_leased_event(relay_key=relay_key, event=written) is False
    assert ReplicaEvent.objects.filter(replica__relay_key=relay_key).count() == 2


def test_the_view_bringing_a_pending_event_linearizes_the_same_row():
    relay_key = secrets.token_hex(32)
    ensure_replica(relay_key)
    written = fake_event(created_at=T + 10)
    store_leased_event(relay_key=relay_key, event=written)
    before = row(relay_key, written.id).pk
    other = fake_event(created_at=T)
    ingest(relay_key, [other, written])  # a worker came back and linearized the gateway's block
    linearized = row(relay_key, written.id)
    assert linearized.pk == before and linearized.pending is False and linearized.seq == 2
    assert ReplicaEvent.objects.filter(replica__relay_key=relay_key).count() == 2
    assert Replica.objects.get(relay_key=relay_key).event_count == 2
    assert visible(relay_key) == [written.id, other.id]


def test_replaceable_and_addressable_rules_apply_to_pending_events():
    relay_key = secrets.token_hex(32)
    ensure_replica(relay_key)
    profile_v1 = fake_event(kind=0, created_at=T)
    article_v1 = fake_event(kind=30023, created_at=T, tags=[["d", "post"]])
    ingest(relay_key, [profile_v1, article_v1])
    profile_v2 = fake_event(kind=0, created_at=T + 5)
    article_v2 = fake_event(kind=30023, created_at=T + 5, tags=[["d", "post"]])
    assert store_leased_event(relay_key=relay_key, event=profile_v2) is True
    assert store_leased_event(relay_key=relay_key, event=article_v2) is True
    assert visible(relay_key, kinds=[0]) == [profile_v2.id]
    assert visible(relay_key, kinds=[30023]) == [article_v2.id]
    # An older version written under the lease does not displace the retained head.
    assert store_leased_event(relay_key=relay_key, event=fake_event(kind=0, created_at=T + 1)) is False
    assert visible(relay_key, kinds=[0]) == [profile_v2.id]
    # A newer version from the view replaces the pending one.
    profile_v3 = fake_event(kind=0, created_at=T + 9)
    ingest(relay_key, [profile_v3])
    assert visible(relay_key, kinds=[0]) == [profile_v3.id]
    assert not ReplicaEvent.objects.filter(eid=bytes.fromhex(profile_v2.id)).exists()


def test_deletions_apply_to_and_from_pending_events():
    relay_key = secrets.token_hex(32)
    ensure_replica(relay_key)
    stored = fake_event(created_at=T)
    ingest(relay_key, [stored])
    # A pending deletion hides the author's stored event at once.
    deletion = fake_event(kind=5, created_at=T + 1, tags=[["e", stored.id]])
    store_leased_event(relay_key=relay_key, event=deletion)
    assert visible(relay_key) == [deletion.id]
    # A pending event whose deletion the replica already holds stays hidden.
    doomed = fake_event(created_at=T + 2)
    ingest(relay_key, [fake_event(kind=5, created_at=T + 3, tags=[["e", doomed.id]])])
    assert store_leased_event(relay_key=relay_key, event=doomed) is False
    assert doomed.id not in visible(relay_key)
    # A deletion read from the view later removes a pending event.
    pending = fake_event(created_at=T + 4)
    store_leased_event(relay_key=relay_key, event=pending)
    assert pending.id in visible(relay_key)
    ingest(relay_key, [fake_event(kind=5, created_at=T + 5, tags=[["e", pending.id]])])
    assert pending.id not in visible(relay_key)


def test_ephemeral_events_are_not_stored():
    relay_key = secrets.token_hex(32)
    ensure_replica(relay_key)
    assert store_leased_event(relay_key=relay_key, event=fake_event(kind=20001, created_at=T)) is False
    assert visible(relay_key) == []


def test_a_relay_without_a_replica_row_gets_one_as_the_sync_would():
    relay_key = secrets.token_hex(32)
    written = fake_event(created_at=T)
    assert store_leased_event(relay_key=relay_key, event=written) is True
    replica = Replica.objects.get(relay_key=relay_key)
    assert replica.checkpoint_seq == 0 and replica.view_core_key == "" and replica.event_count == 1
    assert visible(relay_key) == [written.id]
