"""Filters: parsing, matching against an independent predicate, and the reference REQ answer."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hypertuna.nostr import Event, Filter, FilterLimits, InvalidFilter, apply_query, matches_any

# Small pools so that generated filters and events actually overlap.
IDS = [f"{n:02x}" * 32 for n in (0x01, 0x02, 0x0A, 0x10, 0xA0, 0xAB, 0xEF, 0xFF)]
PUBKEYS = [f"{n:02x}" * 32 for n in (0x11, 0x22, 0x33)]
KINDS = [0, 1, 3, 7, 30_023]
TAG_NAMES = ["e", "p", "t", "T", "d", "emoji"]
TAG_VALUES = ["x", "y", "", IDS[0], IDS[1], PUBKEYS[0]]
SIG = "5" * 128


def ev(
    id_: str = IDS[0],
    *,
    pubkey: str = PUBKEYS[0],
    created_at: int = 10,
    kind: int = 1,
    tags: tuple[tuple[str, ...], ...] = (),
) -> Event:
    """An event with arbitrary (unsigned) id: matching never looks at signatures."""
    return Event(id=id_, pubkey=pubkey, created_at=created_at, kind=kind, tags=tags, content="", sig=SIG)


tags_strategy = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(TAG_NAMES)),
        st.tuples(st.sampled_from(TAG_NAMES), st.sampled_from(TAG_VALUES)),
        st.tuples(st.sampled_from(TAG_NAMES), st.sampled_from(TAG_VALUES), st.just("wss://relay")),
    ),
    max_size=4,
).map(tuple)

events_strategy = st.builds(
    ev,
    st.sampled_from(IDS),
    pubkey=st.sampled_from(PUBKEYS),
    created_at=st.integers(0, 6),
    kind=st.sampled_from(KINDS),
    tags=tags_strategy,
)

raw_filter_strategy = st.fixed_dictionaries(
    {},
    optional={
        "ids": st.lists(st.sampled_from(IDS), max_size=3),
        "authors": st.lists(st.sampled_from(PUBKEYS), max_size=2),
        "kinds": st.lists(st.sampled_from([*KINDS, 2]), max_size=3),
        "#e": st.lists(st.sampled_from(IDS[:3]), max_size=2),
        "#p": st.lists(st.sampled_from(PUBKEYS), max_size=2),
        "#t": st.lists(st.sampled_from(["x", "y", "", "z"]), max_size=2),
        "#T": st.lists(st.sampled_from(["x", "y"]), max_size=2),
        "since": st.integers(0, 7),
        "until": st.integers(-1, 7),
        "limit": st.integers(0, 4),
        "search": st.just("ignored"),
        "#emoji": st.lists(st.just("x"), max_size=1),
    },
)


def reference_matches(raw: dict[str, Any], event: Event) -> bool:
    """NIP-01 matching written directly from the spec text, against the raw client filter."""
    data = event.to_dict()
    for key, value in raw.items():
        if key == "ids" and data["id"] not in value:
            return False
        if key == "authors" and data["pubkey"] not in value:
            return False
        if key == "kinds" and data["kind"] not in value:
            return False
        if key == "since" and not data["created_at"] >= value:
            return False
        if key == "until" and not data["created_at"] <= value:
            return False
        if len(key) == 2 and key[0] == "#" and key[1].isascii() and key[1].isalpha():
            event_values = {tag[1] for tag in data["tags"] if len(tag) > 1 and tag[0] == key[1]}
            if not event_values & set(value):
                return False
    return True


def reference_query(raw_filters: list[dict[str, Any]], events: list[Event]) -> list[Event]:
    """NIP-01 initial query: per filter the newest `limit` matches (ties: lowest id), ORed together."""
    chosen: dict[str, Event] = {}
    for raw in raw_filters:
        matching = sorted((e for e in events if reference_matches(raw, e)), key=lambda e: (-e.created_at, e.id))
        if "limit" in raw:
            matching = matching[: raw["limit"]]
        chosen.update((e.id, e) for e in matching)
    return sorted(chosen.values(), key=lambda e: (-e.created_at, e.id))


# --- properties --------------------------------------------------------------------------------------


@settings(max_examples=400)
@given(raw=raw_filter_strategy, event=events_strategy)
def test_matches_agrees_with_reference_predicate(raw: dict[str, Any], event: Event) -> None:
    assert Filter.from_json(raw).matches(event) is reference_matches(raw, event)


@settings(max_examples=300)
@given(
    raw_filters=st.lists(raw_filter_strategy, min_size=1, max_size=3),
    events=st.lists(events_strategy, max_size=12, unique_by=lambda e: e.id),
)
def test_apply_query_agrees_with_reference_query(raw_filters: list[dict[str, Any]], events: list[Event]) -> None:
    filters = [Filter.from_json(raw) for raw in raw_filters]
    assert apply_query(events, filters) == reference_query(raw_filters, events)


@given(raw=raw_filter_strategy)
def test_to_dict_round_trips(raw: dict[str, Any]) -> None:
    parsed = Filter.from_json(raw)
    assert Filter.from_json(parsed.to_dict()) == parsed


@given(raw_filters=st.lists(raw_filter_strategy, min_size=1, max_size=3), event=events_strategy)
def test_matches_any_is_or_of_filters_without_limit(raw_filters: list[dict[str, Any]], event: Event) -> None:
    filters = [Filter.from_json(raw) for raw in raw_filters]
    assert matches_any(filters, event) is any(reference_matches(raw, event) for raw in raw_filters)


# --- time bounds, ordering, limits --------------------------------------------------------------------


def test_since_and_until_are_inclusive() -> None:
    event = ev(created_at=10)
    assert Filter.from_json({"since": 10, "until": 10}).matches(event)
    assert not Filter.from_json({"until": 9}).matches(event)
    assert not Filter.from_json({"since": 11}).matches(event)
    assert apply_query([event], [Filter.from_json({"until": 10, "limit": 5})]) == [event]


def test_results_are_newest_first_with_ties_by_lowest_id() -> None:
    old = ev(IDS[0], created_at=1)
    tie_high, tie_low, tie_mid = ev(IDS[7], created_at=5), ev(IDS[1], created_at=5), ev(IDS[4], created_at=5)
    newest = ev(IDS[2], created_at=9)
    result = apply_query([old, tie_high, tie_low, newest, tie_mid], [Filter()])
    assert result == [newest, tie_low, tie_mid, tie_high, old]


def test_limit_keeps_newest_and_breaks_ties_by_lowest_id() -> None:
    events = [ev(IDS[7], created_at=5), ev(IDS[1], created_at=5), ev(IDS[4], created_at=5), ev(IDS[2], created_at=1)]
    assert [e.id for e in apply_query(events, [Filter.from_json({"limit": 2})])] == [IDS[1], IDS[4]]


def test_limit_applies_per_filter_and_union_is_deduplicated() -> None:
    notes = [ev(IDS[i], kind=1, created_at=i) for i in range(3)]
    reactions = [ev(IDS[i + 3], kind=7, created_at=i) for i in range(3)]
    filters = [
        Filter.from_json({"kinds": [1], "limit": 1}),
        Filter.from_json({"kinds": [7], "limit": 2}),
        Filter.from_json({"kinds": [1, 7], "limit": 1}),  # ties at t=2: picks notes[2] (lower id) again
    ]
    result = apply_query(notes + reactions, filters)
    assert IDS[2] < IDS[5]
    assert result == [notes[2], reactions[2], reactions[1]]


def test_limit_zero_returns_nothing_and_no_limit_returns_everything() -> None:
    events = [ev(IDS[i], created_at=i) for i in range(5)]
    assert apply_query(events, [Filter.from_json({"limit": 0})]) == []
    assert len(apply_query(events, [Filter.from_json({})])) == 5


def test_duplicate_input_events_count_once() -> None:
    event = ev()
    assert apply_query([event, event], [Filter()]) == [event]


def test_limit_is_clamped_and_default_limit_applies() -> None:
    limits = FilterLimits(max_limit=10, default_limit=3)
    assert Filter.from_json({"limit": 1000}, limits).limit == 10
    assert Filter.from_json({}, limits).limit == 3
    assert Filter.from_json({"limit": 5}, limits).limit == 5
    assert Filter.from_json({}).limit is None


# --- parsing rules -----------------------------------------------------------------------------------


def test_unknown_keys_and_non_single_letter_tags_are_ignored() -> None:
    parsed = Filter.from_json({"search": "x", "#emoji": ["x"], "#1": ["x"], "#": [], "foo": {"bar": 1}})
    assert parsed == Filter()
    assert parsed.matches(ev())


def test_empty_lists_match_nothing() -> None:
    raws: list[dict[str, list[str]]] = [{"ids": []}, {"authors": []}, {"kinds": []}, {"#t": []}]
    for raw in raws:
        assert not Filter.from_json(raw).matches(ev(tags=(("t", "x"),)))


def test_tag_filters_match_the_second_element_of_named_tags() -> None:
    event = ev(tags=(("t", "nostr"), ("e",), ("T", "Upper"), ("p", PUBKEYS[1], "wss://r")))
    assert Filter.from_json({"#t": ["nostr", "other"]}).matches(event)
    assert Filter.from_json({"#T": ["Upper"]}).matches(event)
    assert not Filter.from_json({"#t": ["Upper"]}).matches(event)
    assert Filter.from_json({"#p": [PUBKEYS[1]]}).matches(event)
    assert not Filter.from_json({"#e": [IDS[0]]}).matches(event)  # ["e"] has no value
    assert not Filter.from_json({"#t": ["nostr"], "#T": ["nope"]}).matches(event)  # conditions are ANDed


def test_integral_float_numbers_are_accepted() -> None:
    parsed = Filter.from_json({"kinds": [1.0], "since": 5.0, "until": 1e1, "limit": 2.0})
    assert parsed == Filter(kinds=frozenset({1}), since=5, until=10, limit=2)


def test_exact_hex_only_no_prefix_matching() -> None:
    with pytest.raises(InvalidFilter):
        Filter.from_json({"ids": [IDS[0][:10]]})
    with pytest.raises(InvalidFilter):
        Filter.from_json({"ids": [IDS[5].upper()]})


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([], "filter must be a JSON object"),
        ("x", "filter must be a JSON object"),
        (None, "filter must be a JSON object"),
        ({"ids": IDS[0]}, "'ids' must be an array"),
        ({"ids": ["abc"]}, "'ids' values must be 64-character lowercase hex"),
        ({"ids": [IDS[5].upper()]}, "'ids' values must be 64-character lowercase hex"),
        ({"authors": [1]}, "'authors' values must be 64-character lowercase hex"),
        ({"authors": None}, "'authors' must be an array"),
        ({"kinds": ["1"]}, "kinds values must be an integer"),
        ({"kinds": [True]}, "kinds values must be an integer"),
        ({"kinds": [1.5]}, "kinds values must be an integer"),
        ({"kinds": [65_536]}, "'kinds' values must be between 0 and 65535"),
        ({"kinds": [-1]}, "'kinds' values must be between 0 and 65535"),
        ({"kinds": 1}, "'kinds' must be an array"),
        ({"since": "1"}, "since must be an integer"),
        ({"since": None}, "since must be an integer"),
        ({"until": 1.5}, "until must be an integer"),
        ({"until": 2**53}, "until is out of range"),
        ({"since": -(2**53)}, "since is out of range"),
        ({"limit": -1}, "limit must not be negative"),
        ({"limit": "10"}, "limit must be an integer"),
        ({"limit": False}, "limit must be an integer"),
        ({"#e": ["not-hex"]}, "'#e' values must be 64-character lowercase hex"),
        ({"#p": [PUBKEYS[0][:63]]}, "'#p' values must be 64-character lowercase hex"),
        ({"#t": "x"}, "'#t' must be an array"),
        ({"#t": [1]}, "'#t' values must be strings"),
        ({"#t": ["\ud800"]}, "'#t' values must be valid Unicode strings"),
    ],
)
def test_malformed_filters_raise_invalid(raw: object, message: str) -> None:
    with pytest.raises(InvalidFilter) as info:
        Filter.from_json(raw)
    assert str(info.value) == f"invalid: {message}"


def test_list_size_bound_is_configurable() -> None:
    limits = FilterLimits(max_values=2)
    assert Filter.from_json({"kinds": [1, 2]}, limits).kinds == frozenset({1, 2})
    for key, values in (("kinds", [1, 2, 3]), ("ids", IDS[:3]), ("#t", ["a", "b", "c"])):
        with pytest.raises(InvalidFilter, match=rf"^invalid: too many values in '{key}' \(max 2\)$"):
            Filter.from_json({key: values}, limits)


def test_uppercase_tag_letters_take_any_string() -> None:
    assert Filter.from_json({"#E": ["not-hex"]}).tag_filters == {"E": frozenset({"not-hex"})}
