"""Shared helpers for the replica tests: unsigned-shape events, view batches, a fake source."""

from __future__ import annotations

import hashlib
import itertools
import secrets
from collections.abc import Sequence

from hypertuna.nostr import Event
from replicas.models import Replica
from replicas.sources import ViewBatch, ViewEntry

_counter = itertools.count()


def pubkey(n: int) -> str:
    return hashlib.sha256(f"pubkey-{n}".encode()).hexdigest()


def fake_event(
    *,
    author: int = 0,
    kind: int = 1,
    created_at: int = 1_700_000_000,
    tags: Sequence[Sequence[str]] = (),
    content: str | None = None,
) -> Event:
    """A structurally valid event with a unique random-looking id and a dummy signature (tests that
    need real signatures use tests.nostr.factories.make_event)."""
    n = next(_counter)
    return Event(
        id=hashlib.sha256(f"event-{n}-{secrets.token_hex(4)}".encode()).hexdigest(),
        pubkey=pubkey(author),
        created_at=created_at,
        kind=kind,
        tags=tuple(tuple(t) for t in tags),
        content=content if content is not None else f"content {n}",
        sig="0" * 128,
    )


def entries_for(events: Sequence[Event], start_seq: int = 1) -> list[ViewEntry]:
    """View entries as the bridge returns them: each event record, followed by one index record
    (skipped by the sync), so sequences have gaps like a real Hyperbee history."""
    out: list[ViewEntry] = []
    seq = start_seq
    for event in events:
        out.append(ViewEntry(seq=seq, key=event.id, value=event.to_json()))
        out.append(ViewEntry(seq=seq + 1, key=("created_at:" + event.id).encode().hex(), value=event.id))
        seq += 2
    return out


class FakeReplicaSource:
    """An in-memory relay view: block 0 is the Hyperbee header, then the entries in order.

    ``fail_after_reads`` makes the n-th read raise (a source outage). Unit tests only.
    """

    def __init__(self, events: Sequence[Event] = (), *, view_core_key: str = "") -> None:
        self.view_core_key = view_core_key or secrets.token_hex(32)
        self.entries: list[ViewEntry] = []
        self.length = 1
        self.reads: list[tuple[int, int]] = []
        self.fail_after_reads: int | None = None
        self.append(events)

    def append(self, events: Sequence[Event]) -> None:
        new = entries_for(events, start_seq=self.length)
        self.entries.extend(new)
        self.length += 2 * len(events)

    async def read_view(self, relay_key: str, view_core_key: str, start_seq: int, limit: int) -> ViewBatch:
        if self.fail_after_reads is not None and len(self.reads) >= self.fail_after_reads:
            raise ConnectionError("bridge went away")
        self.reads.append((start_seq, limit))
        end = min(self.length, start_seq + limit)
        chosen = [e for e in self.entries if start_seq <= e.seq < end]
        return ViewBatch(
            entries=chosen, length=self.length, next_seq=max(end, start_seq), view_core_key=self.view_core_key
        )


def ensure_replica(relay_key: str, view_core_key: str = "") -> Replica:
    replica, _ = Replica.objects.get_or_create(relay_key=relay_key, defaults={"view_core_key": view_core_key})
    return replica


def ingest(relay_key: str, events: Sequence[Event], *, batch: int = 50) -> None:
    """Materialize ``events`` in order, in batches, through the same service the sync uses."""
    from replicas import services

    replica = ensure_replica(relay_key)
    for i in range(0, len(events), batch):
        chunk = events[i : i + batch]
        start = Replica.objects.get(pk=replica.pk).checkpoint_seq
        entries = entries_for(chunk, start_seq=start)
        next_seq = start + 2 * len(chunk)
        services.ingest_view_batch(
            relay_key=relay_key,
            start_seq=start,
            batch=ViewBatch(entries=entries, length=next_seq, next_seq=next_seq),
        )
