"""Where replica sync reads a mirrored relay view from.

:class:`ReplicaSource` is the protocol the sync driver needs; :class:`BridgeReplicaSource` implements it
over the bridge RPC method ``replica.readView`` (specified in ``replicas/README.md``). The bridge does
the Holepunch part — open the mirrored ``autobee`` Hyperbee from the blind peer's store, walk its history
by block sequence, decode the compact-encoding ``any`` values — and hands back plain JSON; everything
else (validation, NIP-01/NIP-09 rules, checkpoints) happens here in Python.

This module imports no Django so the sources stay testable on their own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Protocol

_HEX = re.compile(r"^[0-9a-f]*$")


class SourceError(Exception):
    """The source answered with something the sync cannot use (malformed batch, wrong sequence)."""


@dataclass(frozen=True, slots=True)
class ViewEntry:
    """One Hyperbee history entry of the relay view.

    ``seq``: the view block it was written in. ``key``: the raw key as lowercase hex (event records
    are 32-byte keys, i.e. 64 hex; index keys are longer and are skipped by the sync). ``value``: for a
    ``put`` the event as JSON text (the c.any string the worker stored), else None. ``type``: ``put``
    or ``del``.
    """

    seq: int
    key: str
    value: str | None
    type: str = "put"


@dataclass(frozen=True, slots=True)
class ViewBatch:
    """Entries with ``start_seq <= seq < next_seq``, in sequence order, and the view length now.

    ``next_seq`` is where the next read starts (the bridge may skip blocks that hold no event record,
    so ``next_seq`` can be past the last entry). ``view_core_key`` is the view core actually read (it
    changes when the relay's indexer set changes; the sync then starts over on the new core).
    """

    entries: list[ViewEntry]
    length: int
    next_seq: int
    view_core_key: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class ReplicaSource(Protocol):
    async def read_view(self, relay_key: str, view_core_key: str, start_seq: int, limit: int) -> ViewBatch:
        """Read up to ``limit`` view blocks starting at ``start_seq``."""
        ...


def parse_batch(result: Any, *, start_seq: int) -> ViewBatch:
    """Validate a ``replica.readView`` result (a decoded JSON object) into a :class:`ViewBatch`.

    Raises :class:`SourceError` for anything out of contract, so a misbehaving bridge can never move a
    checkpoint backwards or past data it did not return.
    """
    if not isinstance(result, dict):
        raise SourceError("replica.readView must return an object")
    length = result.get("length")
    next_seq = result.get("nextSeq")
    entries_raw = result.get("entries")
    if not isinstance(length, int) or isinstance(length, bool) or length < 0:
        raise SourceError("length must be a non-negative integer")
    if not isinstance(next_seq, int) or isinstance(next_seq, bool) or not start_seq <= next_seq:
        raise SourceError("nextSeq must be an integer >= startSeq")
    if next_seq > length and next_seq != start_seq:
        raise SourceError("nextSeq is beyond the view length")
    if not isinstance(entries_raw, list):
        raise SourceError("entries must be a list")
    entries: list[ViewEntry] = []
    previous = start_seq - 1
    for raw in entries_raw:
        if not isinstance(raw, dict):
            raise SourceError("each entry must be an object")
        seq, key, value, kind = raw.get("seq"), raw.get("key"), raw.get("value"), raw.get("type", "put")
        if not isinstance(seq, int) or isinstance(seq, bool) or not previous < seq < next_seq:
            raise SourceError("entry seq must increase and lie in [startSeq, nextSeq)")
        if not isinstance(key, str) or not _HEX.match(key):
            raise SourceError("entry key must be lowercase hex")
        if kind not in ("put", "del"):
            raise SourceError("entry type must be put or del")
        if value is not None and not isinstance(value, str):
            raise SourceError("entry value must be JSON text or null")
        entries.append(ViewEntry(seq=seq, key=key, value=value, type=kind))
        previous = seq
    view_core_key = result.get("viewCoreKey") or ""
    if not isinstance(view_core_key, str):
        raise SourceError("viewCoreKey must be a string")
    return ViewBatch(entries=entries, length=length, next_seq=next_seq, view_core_key=view_core_key.lower())


class BridgeReplicaSource:
    """:class:`ReplicaSource` over ``hypertuna.bridge``: one ``replica.readView`` call per batch.

    ``client`` is a connected :class:`hypertuna.bridge.BridgeClient` (or anything with the same
    ``call``); the caller owns its lifetime.
    """

    METHOD = "replica.readView"

    def __init__(self, client: Any, *, timeout_s: float = 30.0) -> None:
        self.client = client
        self.timeout_s = timeout_s

    async def read_view(self, relay_key: str, view_core_key: str, start_seq: int, limit: int) -> ViewBatch:
        result = await self.client.call(
            self.METHOD,
            {"relayKey": relay_key, "viewCoreKey": view_core_key or None, "startSeq": start_seq, "limit": limit},
            timeout_s=self.timeout_s,
        )
        return parse_batch(result, start_seq=start_seq)
