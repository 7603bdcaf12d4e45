"""NIP-01 filters: parsing, matching, and the brute-force reference answer to a REQ.

:meth:`Filter.matches` and :func:`apply_query` are the *reference semantics*: the Postgres replica
query must return exactly what they return (property tests compare the two). Semantics, per NIP-01:

- ``ids``, ``authors``, ``kinds``, ``#<letter>``: the event's value must be in the list (for tags: some
  tag named ``<letter>`` has its second element in the list). Conditions are ANDed.
- ``ids``, ``authors``, ``#e``, ``#p`` must hold exact 64-character lowercase hex values (NIP-01 "MUST");
  anything else is rejected, so **no prefix matching** (older NIP-01 allowed prefixes; it no longer does,
  and the workers match exactly too).
- An empty list is accepted and matches nothing (the event's value cannot be in an empty set; this is
  what nostr-tools' ``matchFilter`` does). NIP-01 says lists have one or more values, so clients should
  not send one.
- ``since <= created_at <= until``, both inclusive.
- ``limit`` does not affect matching; it caps the initial query (see :func:`apply_query`). A larger
  ``limit`` than the configured maximum is clamped (NIP-01: returning fewer events is always allowed).
- Unknown keys, multi-letter tag keys (``#emoji``) and ``search`` are ignored, as the workers ignore
  them; the result is then a superset of what the client asked for, never a subset.
- Numbers accept integral JSON floats (``5.0``); booleans are not numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hypertuna.nostr._wire import has_lone_surrogate
from hypertuna.nostr.errors import InvalidFilter
from hypertuna.nostr.events import MAX_KIND, Event, is_hex64, newest_first_key

#: ``since``/``until`` bound: JavaScript's safe-integer range, so every peer reads the same number and a
#: Postgres ``bigint`` parameter always holds it.
MAX_TIMESTAMP = 2**53 - 1

_TAG_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_HEX_TAGS = frozenset("ep")


@dataclass(frozen=True, slots=True)
class FilterLimits:
    """Bounds applied while parsing a filter.

    ``max_values``: most values in any one list (``ids``, ``authors``, ``kinds``, each ``#x``); more is
    an error. ``max_limit``: larger ``limit`` values are clamped to it. ``default_limit``: the ``limit``
    given to filters that have none (None: unlimited).
    """

    max_values: int = 1000
    max_limit: int = 5000
    default_limit: int | None = None


DEFAULT_FILTER_LIMITS = FilterLimits()


def _json_int(value: object, name: str) -> int:
    if isinstance(value, bool):
        raise InvalidFilter(f"{name} must be an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise InvalidFilter(f"{name} must be an integer")


def _json_list(value: object, name: str, limits: FilterLimits) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidFilter(f"{name!r} must be an array")
    if len(value) > limits.max_values:
        raise InvalidFilter(f"too many values in {name!r} (max {limits.max_values})")
    return value


def _hex_values(value: object, name: str, limits: FilterLimits) -> frozenset[str]:
    items = _json_list(value, name, limits)
    for item in items:
        if not is_hex64(item):
            raise InvalidFilter(f"{name!r} values must be 64-character lowercase hex")
    return frozenset(items)


def _string_values(value: object, name: str, limits: FilterLimits) -> frozenset[str]:
    items = _json_list(value, name, limits)
    for item in items:
        if not isinstance(item, str):
            raise InvalidFilter(f"{name!r} values must be strings")
        if has_lone_surrogate(item):
            raise InvalidFilter(f"{name!r} values must be valid Unicode strings")
    return frozenset(items)


def _timestamp(value: object, name: str) -> int:
    number = _json_int(value, name)
    if not -MAX_TIMESTAMP <= number <= MAX_TIMESTAMP:
        raise InvalidFilter(f"{name} is out of range")
    return number


@dataclass(frozen=True, slots=True)
class Filter:
    """One parsed REQ/COUNT filter. ``None`` means "condition absent".

    ``tags`` holds ``(letter, values)`` pairs sorted by letter (a tuple, so filters are hashable).
    :meth:`from_json` is the parser for client input; direct construction trusts its arguments.
    """

    ids: frozenset[str] | None = None
    authors: frozenset[str] | None = None
    kinds: frozenset[int] | None = None
    tags: tuple[tuple[str, frozenset[str]], ...] = ()
    since: int | None = None
    until: int | None = None
    limit: int | None = None

    @classmethod
    def from_json(cls, obj: object, limits: FilterLimits = DEFAULT_FILTER_LIMITS) -> Filter:
        """Parse a client filter object. Raises :class:`InvalidFilter` (``invalid:`` message)."""
        if not isinstance(obj, Mapping):
            raise InvalidFilter("filter must be a JSON object")
        ids = authors = None
        kinds: frozenset[int] | None = None
        tags: dict[str, frozenset[str]] = {}
        since = until = None
        limit = limits.default_limit
        for key, value in obj.items():
            if key == "ids":
                ids = _hex_values(value, key, limits)
            elif key == "authors":
                authors = _hex_values(value, key, limits)
            elif key == "kinds":
                numbers = [_json_int(item, "kinds values") for item in _json_list(value, key, limits)]
                if any(not 0 <= kind <= MAX_KIND for kind in numbers):
                    raise InvalidFilter(f"'kinds' values must be between 0 and {MAX_KIND}")
                kinds = frozenset(numbers)
            elif key == "since":
                since = _timestamp(value, key)
            elif key == "until":
                until = _timestamp(value, key)
            elif key == "limit":
                requested = _json_int(value, key)
                if requested < 0:
                    raise InvalidFilter("limit must not be negative")
                limit = min(requested, limits.max_limit)
            elif isinstance(key, str) and len(key) == 2 and key[0] == "#" and key[1] in _TAG_LETTERS:
                letter = key[1]
                if letter in _HEX_TAGS:
                    tags[letter] = _hex_values(value, key, limits)
                else:
                    tags[letter] = _string_values(value, key, limits)
            # Anything else is ignored on purpose (module docstring).
        return cls(
            ids=ids,
            authors=authors,
            kinds=kinds,
            tags=tuple(sorted(tags.items())),
            since=since,
            until=until,
            limit=limit,
        )

    @property
    def tag_filters(self) -> dict[str, frozenset[str]]:
        """``{letter: values}`` for the tag conditions."""
        return dict(self.tags)

    def matches(self, event: Event) -> bool:
        """True if ``event`` satisfies every condition of this filter (``limit`` plays no part)."""
        if self.ids is not None and event.id not in self.ids:
            return False
        if self.authors is not None and event.pubkey not in self.authors:
            return False
        if self.kinds is not None and event.kind not in self.kinds:
            return False
        if self.since is not None and event.created_at < self.since:
            return False
        if self.until is not None and event.created_at > self.until:
            return False
        for letter, values in self.tags:
            if not any(len(tag) >= 2 and tag[0] == letter and tag[1] in values for tag in event.tags):
                return False
        return True

    def to_dict(self) -> dict[str, Any]:
        """The filter as a client would send it (lists sorted, absent conditions omitted)."""
        out: dict[str, Any] = {}
        if self.ids is not None:
            out["ids"] = sorted(self.ids)
        if self.authors is not None:
            out["authors"] = sorted(self.authors)
        if self.kinds is not None:
            out["kinds"] = sorted(self.kinds)
        for letter, values in self.tags:
            out[f"#{letter}"] = sorted(values)
        if self.since is not None:
            out["since"] = self.since
        if self.until is not None:
            out["until"] = self.until
        if self.limit is not None:
            out["limit"] = self.limit
        return out


def matches_any(filters: Iterable[Filter], event: Event) -> bool:
    """True if ``event`` matches at least one filter (NIP-01: filters of one REQ are ORed).

    Use this for live events after EOSE: ``limit`` no longer applies then.
    """
    return any(f.matches(event) for f in filters)


def apply_query(events: Iterable[Event], filters: Sequence[Filter]) -> list[Event]:
    """The reference answer to the initial query of a REQ: what is sent before EOSE.

    For each filter independently: its matching events, newest ``created_at`` first with ties broken by
    lowest id first (NIP-01), truncated to its ``limit``. The answer is the union of those per-filter
    selections, each event once, in the same order (newest first, then lowest id).

    ``events`` is the stored set; events sharing an id are the same event (ids are hashes), the first
    one seen is kept. Replaceable/deleted/ephemeral handling is a property of the stored set, not of the
    query: pass ``visible_events(store)`` (see :mod:`hypertuna.nostr.visibility`) for relay semantics.
    """
    unique: dict[str, Event] = {}
    for event in events:
        unique.setdefault(event.id, event)
    ordered = sorted(unique.values(), key=newest_first_key)
    selected: dict[str, Event] = {}
    for f in filters:
        if f.limit == 0:
            continue
        taken = 0
        for event in ordered:
            if f.matches(event):
                selected[event.id] = event
                taken += 1
                if f.limit is not None and taken >= f.limit:
                    break
    return sorted(selected.values(), key=newest_first_key)
