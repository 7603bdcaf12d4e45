"""Replaceable, addressable, ephemeral and NIP-09 deletion rules for stored events."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from hypertuna.nostr import Event, Filter, apply_query, visible_events
from tests.nostr.factories import make_event, pubkey_hex


def test_regular_events_are_all_visible_newest_first() -> None:
    a, b = make_event(content="a", created_at=1), make_event(content="b", created_at=2)
    assert visible_events([a, b]) == [b, a]


def test_ephemeral_events_are_never_visible() -> None:
    assert visible_events([make_event(kind=20_001), make_event(kind=29_999)]) == []


def test_only_latest_replaceable_version_is_visible() -> None:
    v1 = make_event(kind=0, content="v1", created_at=1)
    v2 = make_event(kind=0, content="v2", created_at=2)
    other_author = make_event("bob", kind=0, content="bob", created_at=1)
    other_kind = make_event(kind=10_002, content="relays", created_at=1)
    assert visible_events([v2, v1, other_author, other_kind]) == [
        v2,
        *sorted([other_author, other_kind], key=lambda e: e.id),
    ]


def test_replaceable_tie_keeps_lowest_id() -> None:
    a = make_event(kind=3, content="a", created_at=5)
    b = make_event(kind=3, content="b", created_at=5)
    assert visible_events([a, b]) == [min(a, b, key=lambda e: e.id)]
    assert visible_events([b, a]) == [min(a, b, key=lambda e: e.id)]


def test_addressable_versions_are_per_d_tag() -> None:
    post1_old = make_event(kind=30_023, tags=[["d", "post-1"]], content="old", created_at=1)
    post1_new = make_event(kind=30_023, tags=[["d", "post-1"]], content="new", created_at=2)
    post2 = make_event(kind=30_023, tags=[["d", "post-2"]], content="other", created_at=1)
    no_d = make_event(kind=30_023, content="no d", created_at=3)
    empty_d = make_event(kind=30_023, tags=[["d", ""]], content="empty d", created_at=4)
    assert visible_events([post1_old, post1_new, post2, no_d, empty_d]) == [empty_d, post1_new, post2]


def test_deletion_by_e_tag_hides_own_events_only() -> None:
    mine = make_event("alice", content="mine", created_at=1)
    theirs = make_event("bob", content="theirs", created_at=1)
    deletion = make_event("alice", kind=5, tags=[["e", mine.id], ["e", theirs.id]], created_at=2)
    assert visible_events([mine, theirs, deletion]) == [deletion, theirs]


def test_deleting_a_deletion_has_no_effect() -> None:
    note = make_event(content="note", created_at=1)
    first = make_event(kind=5, tags=[["e", note.id]], created_at=2)
    second = make_event(kind=5, tags=[["e", first.id]], created_at=3)
    assert visible_events([note, first, second]) == [second, first]


def test_deletion_of_latest_replaceable_does_not_resurrect_older_version() -> None:
    v1 = make_event(kind=0, content="v1", created_at=1)
    v2 = make_event(kind=0, content="v2", created_at=2)
    deletion = make_event(kind=5, tags=[["e", v2.id]], created_at=3)
    assert visible_events([v1, v2, deletion]) == [deletion]


def test_deletion_by_a_tag_hides_versions_up_to_its_time() -> None:
    author = pubkey_hex("alice")
    article = make_event(kind=30_023, tags=[["d", "x:y"]], content="article", created_at=5)
    deletion = make_event(kind=5, tags=[["a", f"30023:{author}:x:y"]], created_at=5)
    assert visible_events([article, deletion]) == [deletion]
    newer = make_event(kind=30_023, tags=[["d", "x:y"]], content="re-published", created_at=6)
    assert visible_events([article, deletion, newer]) == [newer, deletion]


def test_a_tag_deletion_of_replaceable_uses_empty_d_and_same_author() -> None:
    author = pubkey_hex("alice")
    profile = make_event(kind=0, content="{}", created_at=1)
    bob_profile = make_event("bob", kind=0, content="{}", created_at=1)
    by_alice = make_event(kind=5, tags=[["a", f"0:{author}:"], ["a", f"0:{pubkey_hex('bob')}:"]], created_at=2)
    assert visible_events([profile, bob_profile, by_alice]) == [by_alice, bob_profile]


def test_malformed_deletion_tags_are_ignored() -> None:
    note = make_event(content="note", created_at=1)
    article = make_event(kind=30_001, tags=[["d", "x"]], created_at=1)
    author = pubkey_hex("alice")
    deletion = make_event(
        kind=5,
        tags=[
            ["e"],
            ["e", note.id.upper()],
            ["a", "30001"],
            ["a", f"x:{author}:x"],
            ["a", f"1:{author}:"],
            ["a", f"0:{author}:d"],
        ],
        created_at=2,
    )
    assert visible_events([note, article, deletion]) == [deletion, *sorted([note, article], key=lambda e: e.id)]


events_strategy = st.builds(
    make_event,
    st.sampled_from(["alice", "bob"]),
    kind=st.sampled_from([0, 1, 5, 10_002, 20_000, 30_023]),
    content=st.sampled_from(["a", "b"]),
    tags=st.lists(st.sampled_from([["d", "x"], ["d", "y"], ["t", "x"]]), max_size=2),
    created_at=st.integers(0, 3),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(events_strategy, max_size=10))
def test_visible_set_invariants(events: list[Event]) -> None:
    visible = visible_events(events)
    ids = [e.id for e in visible]
    assert len(ids) == len(set(ids))
    assert set(ids) <= {e.id for e in events}
    assert all(not 20_000 <= e.kind < 30_000 for e in visible)
    keys = [e.replacement_key() for e in visible if e.replacement_key() is not None]
    assert len(keys) == len(set(keys))
    assert visible == apply_query(visible, [Filter()])  # already in NIP-01 result order
