"""Which stored events a relay shows: NIP-01 replaceable/ephemeral rules and NIP-09 deletions.

The workers store every event and apply none of these rules (worker-data-layout §1.6), so a gateway
serving REQ from a replica must apply them at query time. :func:`visible_events` is the reference; the
Postgres replica must show exactly the events it returns. The rules, in the order applied:

1. **Ephemeral** events (kinds 20000..29999) are not stored, so never shown.
2. **Replaceable** (0, 3, 10000..19999) and **addressable** (30000..39999) events: per replacement key
   (kind, pubkey, and for addressable kinds the first ``d`` tag's value) only the latest version is
   shown; on equal ``created_at`` the lowest id wins (NIP-01).
3. **Deletions** (NIP-09, kind 5) hide, among what step 2 kept:
   - events named in an ``e`` tag, if they have the deletion's pubkey and are not themselves kind 5
     ("a deletion request against a deletion request has no effect");
   - versions of the address named in an ``a`` tag (``<kind>:<pubkey>:<d>``, pubkey equal to the
     deletion's) with ``created_at`` up to and including the deletion's ``created_at``.
   Deletion requests themselves stay visible (NIP-09: relays should keep publishing them).

Replacement runs before deletion on purpose: a relay that receives v1, then v2, then a deletion of v2
has already discarded v1 (NIP-01 allows it), so showing v1 again would differ from a live relay.
NIP-40 expiration is not applied (not part of NIP-01/NIP-09).
"""

from __future__ import annotations

from collections.abc import Iterable

from hypertuna.nostr.events import (
    Event,
    is_addressable_kind,
    is_ephemeral_kind,
    is_hex64,
    is_replaceable_kind,
    newest_first_key,
    supersedes,
)

DELETION_KIND = 5


def parse_address(value: str) -> tuple[int, str, str] | None:
    """``"<kind>:<pubkey>:<d>"`` → ``(kind, pubkey, d)``; None unless it names a replaceable or
    addressable kind (the ``d`` part may itself contain colons)."""
    parts = value.split(":", 2)
    if len(parts) != 3:
        return None
    kind_text, pubkey, d = parts
    if not (kind_text.isascii() and kind_text.isdigit()) or not is_hex64(pubkey):
        return None
    kind = int(kind_text)
    if is_replaceable_kind(kind):
        return (kind, pubkey, "") if d == "" else None
    if is_addressable_kind(kind):
        return (kind, pubkey, d)
    return None


def visible_events(events: Iterable[Event]) -> list[Event]:
    """The events a NIP-01/NIP-09 relay holding ``events`` would return, newest first (ties: lowest
    id first). Duplicates by id count once. Input events are assumed verified."""
    latest: dict[tuple[int, str, str], Event] = {}
    kept: dict[str, Event] = {}
    for event in events:
        if event.id in kept or is_ephemeral_kind(event.kind):
            continue
        key = event.replacement_key()
        if key is None:
            kept[event.id] = event
            continue
        current = latest.get(key)
        if current is None or supersedes(event, current):
            latest[key] = event
    for event in latest.values():
        kept[event.id] = event

    deleted_ids: set[str] = set()
    # Newest deletion time per address: every version at or before it is hidden.
    deleted_addresses: dict[tuple[int, str, str], int] = {}
    for event in kept.values():
        if event.kind != DELETION_KIND:
            continue
        for tag in event.tags:
            if len(tag) < 2:
                continue
            if tag[0] == "e" and is_hex64(tag[1]):
                target = kept.get(tag[1])
                if target is not None and target.pubkey == event.pubkey and target.kind != DELETION_KIND:
                    deleted_ids.add(target.id)
            elif tag[0] == "a":
                address = parse_address(tag[1])
                if address is not None and address[1] == event.pubkey:
                    previous = deleted_addresses.get(address, -1)
                    deleted_addresses[address] = max(previous, event.created_at)

    visible = []
    for event in kept.values():
        if event.id in deleted_ids:
            continue
        key = event.replacement_key()
        if key is not None and key in deleted_addresses and event.created_at <= deleted_addresses[key]:
            continue
        visible.append(event)
    visible.sort(key=newest_first_key)
    return visible
