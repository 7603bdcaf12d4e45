"""Named NIP-01/NIP-09 cases for the replica (the property tests cover the combinations)."""

from __future__ import annotations

import secrets

import pytest

from hypertuna.nostr import Filter
from replicas.models import ReplicaEvent, ReplicaTag
from replicas.queries import query_events
from tests.replicas.helpers import fake_event, ingest, pubkey

pytestmark = pytest.mark.django_db
T = 1_700_000_000


@pytest.fixture
def relay_key() -> str:
    return secrets.token_hex(32)


def ids(relay_key: str, *filters: dict, max_limit: int = 500) -> list[str]:
    return [e.id for e in query_events(relay_key, [Filter.from_json(f) for f in filters], max_limit=max_limit)]


def test_newest_first_ties_by_lowest_id_and_until_is_inclusive(relay_key):
    a, b, c = (fake_event(created_at=T + 5) for _ in range(3))
    old = fake_event(created_at=T)
    ingest(relay_key, [old, a, b, c])
    tied = sorted([a.id, b.id, c.id])
    assert ids(relay_key, {}) == [*tied, old.id]
    assert ids(relay_key, {"until": T + 5, "since": T + 5}) == tied
    assert ids(relay_key, {"until": T}) == [old.id]
    assert ids(relay_key, {"until": T - 1}) == []


def test_limit_applies_per_filter_and_filters_are_unioned_without_duplicates(relay_key):
    notes = [fake_event(kind=1, created_at=T + i) for i in range(5)]
    reactions = [fake_event(kind=7, created_at=T + 10 + i) for i in range(5)]
    ingest(relay_key, notes + reactions)
    got = ids(relay_key, {"kinds": [1], "limit": 2}, {"kinds": [7], "limit": 1}, {"kinds": [1, 7], "limit": 1})
    assert got == [reactions[4].id, notes[4].id, notes[3].id]
    assert ids(relay_key, {"limit": 0}) == []
    assert len(ids(relay_key, {}, max_limit=3)) == 3


def test_replaceable_keeps_latest_and_lowest_id_on_ties(relay_key):
    v1 = fake_event(kind=0, created_at=T)
    v2 = fake_event(kind=0, created_at=T + 1)
    ties = [fake_event(kind=0, created_at=T + 2) for _ in range(2)]
    other_author = fake_event(author=1, kind=0, created_at=T)
    ingest(relay_key, [v2, *ties, v1, other_author], batch=1)
    assert ids(relay_key, {"kinds": [0]}) == [min(t.id for t in ties), other_author.id]


def test_parameterized_replaceable_is_per_d_tag(relay_key):
    a1 = fake_event(kind=30023, created_at=T, tags=[["d", "a"]])
    a2 = fake_event(kind=30023, created_at=T + 1, tags=[["d", "a"]])
    b1 = fake_event(kind=30023, created_at=T, tags=[["d", "b"]])
    no_d = fake_event(kind=30023, created_at=T, tags=[])
    empty_d = fake_event(kind=30023, created_at=T + 3, tags=[["d", ""]])
    ingest(relay_key, [a2, a1, b1, no_d, empty_d], batch=2)
    assert ids(relay_key, {"kinds": [30023]}) == [empty_d.id, a2.id, b1.id]
    assert ids(relay_key, {"#d": ["a"]}) == [a2.id]


def test_deletion_hides_only_the_authors_own_events_and_stays_visible(relay_key):
    mine = fake_event(author=0, created_at=T)
    theirs = fake_event(author=1, created_at=T)
    deletion = fake_event(author=0, kind=5, created_at=T + 1, tags=[["e", mine.id], ["e", theirs.id]])
    ingest(relay_key, [mine, theirs, deletion])
    assert ids(relay_key, {}) == [deletion.id, theirs.id]
    assert not ReplicaTag.objects.filter(eid=bytes.fromhex(mine.id)).exists()


def test_deleted_id_stays_deleted_when_the_event_arrives_later(relay_key):
    target = fake_event(author=2, created_at=T)
    deletion = fake_event(author=2, kind=5, created_at=T + 1, tags=[["e", target.id]])
    ingest(relay_key, [deletion])
    ingest(relay_key, [target])
    ingest(relay_key, [target])
    assert ids(relay_key, {}) == [deletion.id]


def test_deletion_of_a_deletion_has_no_effect(relay_key):
    first = fake_event(kind=5, created_at=T, tags=[["e", "ab" * 32]])
    second = fake_event(kind=5, created_at=T + 1, tags=[["e", first.id]])
    ingest(relay_key, [first, second])
    assert ids(relay_key, {"kinds": [5]}) == [second.id, first.id]


def test_address_deletion_hides_versions_up_to_its_time_only(relay_key):
    v1 = fake_event(kind=30023, created_at=T, tags=[["d", "x"]])
    deletion = fake_event(kind=5, created_at=T + 5, tags=[["a", f"30023:{pubkey(0)}:x"]])
    ingest(relay_key, [v1, deletion])
    assert ids(relay_key, {"kinds": [30023]}) == []
    v2 = fake_event(kind=30023, created_at=T + 6, tags=[["d", "x"]])
    older = fake_event(kind=30023, created_at=T + 4, tags=[["d", "x"]])
    ingest(relay_key, [older, v2])
    assert ids(relay_key, {"kinds": [30023]}) == [v2.id]


def test_deleted_head_does_not_let_an_older_version_resurface(relay_key):
    v2 = fake_event(kind=3, created_at=T + 2)
    deletion = fake_event(kind=5, created_at=T + 3, tags=[["e", v2.id]])
    ingest(relay_key, [v2, deletion])
    v1 = fake_event(kind=3, created_at=T + 1)
    ingest(relay_key, [v1])
    assert ids(relay_key, {"kinds": [3]}) == []


def test_ephemeral_events_are_not_stored(relay_key):
    ingest(relay_key, [fake_event(kind=20001)])
    assert ReplicaEvent.objects.count() == 0


def test_tag_filters_match_exact_values_including_long_and_nul_values(relay_key):
    long_value = "v" * 2000
    e1 = fake_event(tags=[["t", long_value]])
    e2 = fake_event(tags=[["t", "a\x00b"], ["t", "a\x00b"]])
    e3 = fake_event(tags=[["t", "\x01" + "0" * 64]])
    ingest(relay_key, [e1, e2, e3])
    assert ids(relay_key, {"#t": [long_value]}) == [e1.id]
    assert ids(relay_key, {"#t": ["a\x00b"]}) == [e2.id]
    assert ids(relay_key, {"#t": ["\x01" + "0" * 64]}) == [e3.id]
    assert ids(relay_key, {"#t": ["v" * 1999]}) == []


def test_unknown_relay_answers_nothing():
    assert query_events("f" * 64, [Filter()]) == []


@pytest.mark.parametrize("expansion", [0, 256])
def test_pair_expansion_and_in_list_plans_agree(relay_key, monkeypatch, expansion):
    from hypertuna.nostr import apply_query, visible_events
    from replicas import queries

    monkeypatch.setattr(queries, "MAX_PAIR_EXPANSION", expansion)
    events = [
        fake_event(author=i % 3, kind=(1, 7, 6)[i % 3], created_at=T + i // 2, tags=[["t", f"w{i % 4}"]])
        for i in range(60)
    ]
    ingest(relay_key, events, batch=16)
    for raw in (
        {"authors": [pubkey(0), pubkey(1)], "kinds": [1, 7], "limit": 7},
        {"#t": ["w1", "w2"], "kinds": [1, 6], "limit": 5},
        {"#t": ["w0"], "authors": [pubkey(0)], "kinds": [1, 6, 7], "until": T + 20},
    ):
        f = Filter.from_json(raw)
        expected = [e.id for e in apply_query(visible_events(events), [f])]
        assert ids(relay_key, raw) == expected


def test_the_newest_events_probe_looks_authors_up_in_a_hash_when_its_plan_is_generic(relay_key):
    """The probe runs prepared: once Postgres switches to the generic plan the values are parameters, and
    50 authors must still be one hash probe a row, in the window's order (no join that loses it)."""
    from django.db import connection

    from replicas import queries

    if connection.vendor != "postgresql":
        pytest.skip("prepared statements and their plans are Postgres's")
    import psycopg

    ingest(relay_key, [fake_event(author=i % 60, kind=1, created_at=T + i) for i in range(120)])
    f = Filter.from_json({"authors": [pubkey(i) for i in range(50)], "kinds": [1, 6], "limit": 10})
    probe = queries._probe_sql(relay_key, f, 10, postgres=True)
    assert probe is not None
    sql, params = queries._with_json(relay_key, *probe)
    expected = [e.id for e in query_events(relay_key, [f])]
    assert len(expected) == 10  # the probe answered alone (its window holds the limit)
    raw = connection.connection
    with raw.cursor() as cursor:
        cursor.execute(sql, params, prepare=True)
        assert [bytes(row[0]).hex() for row in cursor.fetchall()] == expected
        # The probe's window is limit × PROBE_WINDOW (400) of the newest events.
        cursor.execute("SELECT name FROM pg_prepared_statements WHERE statement LIKE %s", ["% LIMIT 400) w %"])
        (name,) = cursor.fetchone()
    with psycopg.ClientCursor(raw) as client:
        client.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        client.execute(f"EXPLAIN (COSTS OFF) EXECUTE {name}({', '.join(['%s'] * len(params))})", params)
        plan = "\n".join(row[0] for row in client.fetchall())
    assert "hashed SubPlan" in plan, plan
    assert "Hash Join" not in plan and "Hash Semi Join" not in plan, plan
