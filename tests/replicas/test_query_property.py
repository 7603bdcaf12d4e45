"""NIP-01 correctness of the SQL replica: ``query_events`` must equal the brute-force reference
``apply_query(visible_events(everything ingested), filters)``, order included, on random data and
thousands of random filters (strfry-style fuzzing, performance-anchors §1.2)."""

from __future__ import annotations

import json
import random
import secrets
from dataclasses import replace

import pytest
from django.test import override_settings
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from hypertuna.nostr import Event, Filter, apply_query, visible_events
from replicas.queries import query_events
from tests.replicas.helpers import fake_event, ingest, pubkey

pytestmark = pytest.mark.django_db

MAX_LIMIT = 500
BASE = 1_700_000_000
KINDS = [0, 1, 3, 5, 7, 10002, 20001, 30023, 30024]
WORDS = ["nostr", "zap", "", "long" * 200, "nul\x00byte", "\x01x", "colon:value"]


def _generate(rng: random.Random, n: int) -> list[Event]:
    events: list[Event] = []
    for _ in range(n):
        author = rng.randrange(6)
        kind = rng.choice(KINDS)
        created_at = BASE + rng.randrange(40)  # narrow range: many created_at ties
        tags: list[list[str]] = []
        if kind == 5 and events:
            # Deletions: of own or others' events, by id and by address.
            for target in rng.sample(events, min(len(events), rng.randrange(1, 4))):
                tags.append(["e", target.id])
                address = target.address()
                if address and rng.random() < 0.5:
                    tags.append(["a", address])
            if rng.random() < 0.3:
                tags.append(["a", f"30023:{pubkey(author)}:{rng.choice(['a', 'b', ''])}"])
        else:
            if events and rng.random() < 0.5:
                tags.append(["e", rng.choice(events).id])
            if rng.random() < 0.5:
                tags.append(["p", pubkey(rng.randrange(6))])
            if rng.random() < 0.5:
                tags.append(["t", rng.choice(WORDS)])
            if rng.random() < 0.2:
                tags.append(["T", rng.choice(WORDS)])
            if kind >= 30000 or rng.random() < 0.2:
                if rng.random() < 0.8:
                    tags.append(["d", rng.choice(["a", "b", ""])])
                else:
                    tags.append(["d"])
            if rng.random() < 0.1:
                tags.append(["t"])  # a tag without a value is not indexed
            if rng.random() < 0.1:
                tags.append(["emoji", "x", "y"])
        events.append(fake_event(author=author, kind=kind, created_at=created_at, tags=tags))
    return events


def _clamped(filters: list[Filter]) -> list[Filter]:
    return [replace(f, limit=MAX_LIMIT if f.limit is None else min(f.limit, MAX_LIMIT)) for f in filters]


def _check(relay_key: str, stored: list[Event], filters: list[Filter]) -> None:
    expected = apply_query(visible_events(stored), _clamped(filters))
    got = query_events(relay_key, filters, max_limit=MAX_LIMIT)
    assert [e.id for e in got] == [e.id for e in expected], [f.to_dict() for f in filters]
    by_id = {e.id: e for e in expected}
    for row in got:
        assert Event.from_json(json.loads(row.json)) == by_id[row.id]


def _filter_strategy(pool: list[Event]) -> st.SearchStrategy[Filter]:
    ids = [e.id for e in pool]
    authors = [pubkey(i) for i in range(7)]
    unknown = secrets.token_hex(32)

    @st.composite
    def build(draw: st.DrawFn) -> Filter:
        obj: dict = {}
        if draw(st.booleans()) and draw(st.integers(0, 3)) == 0:
            obj["ids"] = draw(st.lists(st.sampled_from([*ids, unknown]), max_size=8, unique=True))
        if draw(st.integers(0, 2)) == 0:
            obj["authors"] = draw(st.lists(st.sampled_from(authors), max_size=4, unique=True))
        if draw(st.integers(0, 2)) == 0:
            obj["kinds"] = draw(st.lists(st.sampled_from([*KINDS, 4]), max_size=4, unique=True))
        if draw(st.integers(0, 3)) == 0:
            obj["#e"] = draw(st.lists(st.sampled_from([*ids, unknown]), min_size=1, max_size=5, unique=True))
        if draw(st.integers(0, 3)) == 0:
            obj["#p"] = draw(st.lists(st.sampled_from(authors), min_size=1, max_size=3, unique=True))
        if draw(st.integers(0, 3)) == 0:
            obj["#t"] = draw(st.lists(st.sampled_from([*WORDS, "other"]), min_size=1, max_size=3, unique=True))
        if draw(st.integers(0, 5)) == 0:
            obj["#d"] = draw(st.lists(st.sampled_from(["a", "b", "", "c"]), min_size=1, max_size=2, unique=True))
        if draw(st.integers(0, 6)) == 0:
            obj["#T"] = draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=2, unique=True))
        if draw(st.integers(0, 2)) == 0:
            obj["since"] = BASE + draw(st.integers(-2, 42))
        if draw(st.integers(0, 2)) == 0:
            obj["until"] = BASE + draw(st.integers(-2, 42))
        if draw(st.integers(0, 1)) == 0:
            obj["limit"] = draw(st.integers(0, 40))
        return Filter.from_json(obj)

    return build()


@pytest.fixture(scope="module")
def corpus(django_db_setup, django_db_blocker):
    """One event set (about 600 events) ingested in shuffled order and odd batch sizes."""
    rng = random.Random(20261122)
    events = _generate(rng, 600)
    shuffled = events[:]
    rng.shuffle(shuffled)
    relay_key = secrets.token_hex(32)
    # Module scope: the autouse settings fixture does not apply here (dummy signatures).
    with django_db_blocker.unblock(), override_settings(HYPERTUNA_REPLICA_VERIFY_SIGNATURES=False):
        ingest(relay_key, shuffled, batch=37)
    yield relay_key, events
    with django_db_blocker.unblock():
        from replicas.models import Replica

        Replica.objects.filter(relay_key=relay_key).delete()


def test_corpus_has_every_rule_in_play(corpus):
    _, events = corpus
    visible = visible_events(events)
    assert len(visible) < len([e for e in events if not 20000 <= e.kind < 30000])
    assert any(e.kind == 5 for e in visible)
    assert any(e.kind in (0, 3, 10002) for e in visible)
    assert any(e.kind >= 30000 for e in visible)


@hsettings(
    max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(data=st.data())
def test_random_filters_match_reference(corpus, data):
    relay_key, events = corpus
    filters = data.draw(st.lists(_filter_strategy(events), min_size=1, max_size=3))
    _check(relay_key, events, filters)


@hsettings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(seed=st.integers(0, 2**32 - 1), size=st.integers(1, 120), batch=st.integers(1, 40))
def test_materialized_set_is_independent_of_arrival_order(db, seed, size, batch):
    rng = random.Random(seed)
    events = _generate(rng, size)
    order = events[:]
    rng.shuffle(order)
    # Re-deliveries (a re-read after a crash, a view migration) must change nothing.
    order += rng.sample(events, min(len(events), rng.randrange(0, 10)))
    relay_key = secrets.token_hex(32)
    ingest(relay_key, order, batch=batch)
    _check(relay_key, events, [Filter()])
    _check(relay_key, events, [Filter(kinds=frozenset({0, 3, 5, 10002, 30023, 30024}))])


@hsettings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(data=st.data(), window=st.sampled_from([1, 3, 40]), hashed_from=st.sampled_from([1, 9]))
def test_random_filters_match_reference_through_the_newest_events_probe(corpus, data, window, hashed_from):
    """Every authors/kinds filter first probes the newest ``limit * window`` events: when the probe finds
    the limit it answers alone (window 40), else the per-range plan answers (window 1); same result, with
    authors and kinds looked up in a hash (Postgres) from one value on or from nine."""
    from unittest import mock

    from replicas import queries

    relay_key, events = corpus
    filters = data.draw(st.lists(_filter_strategy(events), min_size=1, max_size=3))
    with (
        mock.patch.object(queries, "PROBE_MIN_RANGES", 1),
        mock.patch.object(queries, "PROBE_WINDOW", window),
        mock.patch.object(queries, "HASHED_IN_MIN", hashed_from),
    ):
        _check(relay_key, events, filters)
