"""NIP-01 events: the immutable :class:`Event`, id serialization, signature checks and kind classes.

Guarantees:

- An :class:`Event` instance is always structurally valid (checked in ``__post_init__``): lowercase-hex
  id/pubkey/sig of the right lengths, ``0 <= created_at <= MAX_CREATED_AT``, ``0 <= kind <= 65535``,
  tags a tuple of non-empty tuples of strings, no unpaired surrogates anywhere. Whether its id matches
  its content and its signature verifies is a separate, explicit step (:func:`verify_event`), because
  it costs a hash and a curve operation and because stored events are re-read without re-verifying.
- :func:`serialize_for_id` produces the exact bytes the rest of the Nostr ecosystem hashes (see there).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeGuard

from hypertuna.nostr import crypto
from hypertuna.nostr._wire import dumps, has_lone_surrogate
from hypertuna.nostr.errors import InvalidEvent

_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_HEX128 = re.compile(r"[0-9a-f]{128}\Z")

#: Largest accepted ``created_at``. The workers' Hyperbee indexes pad ``created_at`` to 10 decimal digits
#: (``created_at:<since10>``, upper bound ``9999999999``), so a larger value would sort wrongly there;
#: it is also far below 2**53, so JavaScript peers read the exact same number. (Year 2286.)
MAX_CREATED_AT = 9_999_999_999
MAX_KIND = 65_535

EVENT_FIELDS = ("id", "pubkey", "created_at", "kind", "tags", "content", "sig")

Tags = tuple[tuple[str, ...], ...]


def is_hex64(value: object) -> TypeGuard[str]:
    """True for a string of exactly 64 lowercase hex digits (event ids, pubkeys)."""
    return isinstance(value, str) and _HEX64.match(value) is not None


# --- kind classes ------------------------------------------------------------------------------------


class KindClass(StrEnum):
    """NIP-01 storage classes of kinds."""

    REGULAR = "regular"
    REPLACEABLE = "replaceable"
    EPHEMERAL = "ephemeral"
    #: "parameterized replaceable" in older NIP-01 text: replaceable per (pubkey, kind, ``d`` value).
    ADDRESSABLE = "addressable"


def is_replaceable_kind(kind: int) -> bool:
    """Kinds 0, 3 and 10000..19999: only the latest event per (pubkey, kind) counts."""
    return kind in (0, 3) or 10_000 <= kind < 20_000


def is_ephemeral_kind(kind: int) -> bool:
    """Kinds 20000..29999: not expected to be stored."""
    return 20_000 <= kind < 30_000


def is_addressable_kind(kind: int) -> bool:
    """Kinds 30000..39999: only the latest event per (pubkey, kind, ``d`` tag value) counts."""
    return 30_000 <= kind < 40_000


def is_regular_kind(kind: int) -> bool:
    """Every kind that is neither replaceable, ephemeral nor addressable: all events are kept.

    NIP-01 names 1, 2, 4..44 and 1000..9999 regular and leaves 45..999 and 40000..65535 to other NIPs;
    a relay has to store something for them, and "keep every event" is the only safe choice.
    """
    return kind_class(kind) is KindClass.REGULAR


def kind_class(kind: int) -> KindClass:
    """The NIP-01 class of ``kind``."""
    if is_replaceable_kind(kind):
        return KindClass.REPLACEABLE
    if is_ephemeral_kind(kind):
        return KindClass.EPHEMERAL
    if is_addressable_kind(kind):
        return KindClass.ADDRESSABLE
    return KindClass.REGULAR


# --- serialization -----------------------------------------------------------------------------------


def serialize_for_id(pubkey: str, created_at: int, kind: int, tags: Sequence[Sequence[str]], content: str) -> bytes:
    """UTF-8 bytes of ``[0,pubkey,created_at,kind,tags,content]`` as NIP-01 hashes them.

    No whitespace; strings are written raw except ``"`` → ``\\"``, ``\\`` → ``\\\\``, and the control
    characters NIP-01 lists (``\\n \\r \\t \\b \\f``). Non-ASCII characters, emoji, DEL, U+2028/2029 and
    ``/`` are included verbatim (no ``\\u`` escapes). The rule is applied to tag strings as to the content.

    The 27 other control characters U+0000..U+001F are written ``\\u00xx`` (lowercase hex). NIP-01's text
    says "all other characters must be included verbatim", but a raw control character is not JSON, and
    ``JSON.stringify`` (nostr-tools, JavaScript clients and workers), go-nostr and rust-nostr (serde_json)
    all emit ``\\u00xx``; NIP maintainers call these characters invalid in Nostr (nostr-protocol/nips#1403).
    Writing them raw would make the gateway reject events that those clients sign and accept.

    Raises ``ValueError`` (``UnicodeEncodeError``) if a string holds an unpaired surrogate, which UTF-8
    cannot encode; :class:`Event` rejects such strings up front.
    """
    return dumps([0, pubkey, created_at, kind, tags, content]).encode("utf-8")


def compute_id(pubkey: str, created_at: int, kind: int, tags: Sequence[Sequence[str]], content: str) -> str:
    """Lowercase hex SHA-256 of :func:`serialize_for_id`: the NIP-01 event id."""
    return hashlib.sha256(serialize_for_id(pubkey, created_at, kind, tags, content)).hexdigest()


# --- the event ---------------------------------------------------------------------------------------


def _as_json_int(value: object, name: str) -> int:
    """An integer from a JSON number. JSON has no int/float distinction and JavaScript peers hash
    ``1700000000.0`` as ``1700000000``, so integral floats are accepted; booleans are not numbers."""
    if isinstance(value, bool):
        raise InvalidEvent(f"{name} must be an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise InvalidEvent(f"{name} must be an integer")


def _tags_from_json(value: object) -> Tags:
    if not isinstance(value, list):
        raise InvalidEvent("tags must be an array of arrays of strings")
    tags: list[tuple[str, ...]] = []
    for tag in value:
        if not isinstance(tag, list):
            raise InvalidEvent("tags must be an array of arrays of strings")
        tags.append(tuple(tag))
    return tuple(tags)


@dataclass(frozen=True, slots=True)
class Event:
    """A structurally valid Nostr event (see the module docstring for what is checked).

    Construct from untrusted JSON with :meth:`from_json`; direct construction runs the same checks and
    raises :class:`~hypertuna.nostr.errors.InvalidEvent`. Tags are tuples so that events are hashable
    and cannot be mutated after validation.
    """

    id: str
    pubkey: str
    created_at: int
    kind: int
    tags: Tags
    content: str
    sig: str

    def __post_init__(self) -> None:
        if not is_hex64(self.id):
            raise InvalidEvent("id must be 64 lowercase hex characters")
        if not is_hex64(self.pubkey):
            raise InvalidEvent("pubkey must be 64 lowercase hex characters")
        if not (isinstance(self.sig, str) and _HEX128.match(self.sig)):
            raise InvalidEvent("sig must be 128 lowercase hex characters")
        if type(self.created_at) is not int:
            raise InvalidEvent("created_at must be an integer")
        if not 0 <= self.created_at <= MAX_CREATED_AT:
            raise InvalidEvent(f"created_at must be between 0 and {MAX_CREATED_AT}")
        if type(self.kind) is not int:
            raise InvalidEvent("kind must be an integer")
        if not 0 <= self.kind <= MAX_KIND:
            raise InvalidEvent(f"kind must be between 0 and {MAX_KIND}")
        if not isinstance(self.content, str):
            raise InvalidEvent("content must be a string")
        if has_lone_surrogate(self.content):
            raise InvalidEvent("content contains an unpaired UTF-16 surrogate")
        if not isinstance(self.tags, tuple):
            raise InvalidEvent("tags must be an array of arrays of strings")
        for tag in self.tags:
            if not isinstance(tag, tuple) or not all(isinstance(item, str) for item in tag):
                raise InvalidEvent("tags must be an array of arrays of strings")
            if not tag:
                # NIP-01: "Each tag is an array of one or more strings".
                raise InvalidEvent("each tag must have at least one element")
            if any(has_lone_surrogate(item) for item in tag):
                raise InvalidEvent("a tag contains an unpaired UTF-16 surrogate")

    @classmethod
    def from_json(cls, obj: object) -> Event:
        """Build an event from a decoded JSON object, checking every field strictly.

        Extra keys are ignored (they are not covered by the id, so dropping them loses nothing signed).
        Raises :class:`InvalidEvent` with an ``invalid:`` message on any problem.
        """
        if not isinstance(obj, Mapping):
            raise InvalidEvent("event must be a JSON object")
        for name in EVENT_FIELDS:
            if name not in obj:
                raise InvalidEvent(f"event is missing {name!r}")
        return cls(
            id=obj["id"],
            pubkey=obj["pubkey"],
            created_at=_as_json_int(obj["created_at"], "created_at"),
            kind=_as_json_int(obj["kind"], "kind"),
            tags=_tags_from_json(obj["tags"]),
            content=obj["content"],
            sig=obj["sig"],
        )

    def to_dict(self) -> dict[str, Any]:
        """The event as a JSON-ready dict (tags as lists), keys in NIP-01 order."""
        return {
            "id": self.id,
            "pubkey": self.pubkey,
            "created_at": self.created_at,
            "kind": self.kind,
            "tags": [list(tag) for tag in self.tags],
            "content": self.content,
            "sig": self.sig,
        }

    def to_json(self) -> str:
        """Compact JSON text of :meth:`to_dict` (raw UTF-8 characters)."""
        return dumps(self.to_dict())

    def computed_id(self) -> str:
        """The id recomputed from the content fields (compare with :attr:`id`)."""
        return compute_id(self.pubkey, self.created_at, self.kind, self.tags, self.content)

    # --- tags and kinds ---

    def tag_values(self, name: str) -> Iterable[str]:
        """The values (second elements) of every tag called ``name``, in order."""
        return (tag[1] for tag in self.tags if len(tag) >= 2 and tag[0] == name)

    @property
    def kind_class(self) -> KindClass:
        return kind_class(self.kind)

    @property
    def d_tag(self) -> str:
        """The value of the first ``d`` tag, ``""`` when there is none or it has no value.

        This is the "``d`` tag's first value" that identifies an addressable event.
        """
        for tag in self.tags:
            if tag[0] == "d":
                return tag[1] if len(tag) >= 2 else ""
        return ""

    def replacement_key(self) -> tuple[int, str, str] | None:
        """``(kind, pubkey, d)`` shared by all versions of a replaceable/addressable event, else None.

        ``d`` is ``""`` for replaceable kinds, the :attr:`d_tag` for addressable ones.
        """
        if is_replaceable_kind(self.kind):
            return (self.kind, self.pubkey, "")
        if is_addressable_kind(self.kind):
            return (self.kind, self.pubkey, self.d_tag)
        return None

    def address(self) -> str | None:
        """The NIP-01 ``a``-tag coordinate ``"<kind>:<pubkey>:<d>"`` (``d`` empty for replaceable
        kinds), or None for regular and ephemeral events."""
        key = self.replacement_key()
        if key is None:
            return None
        kind, pubkey, d = key
        return f"{kind}:{pubkey}:{d}"


def newest_first_key(event: Event) -> tuple[int, str]:
    """Sort key for NIP-01 result order: newest ``created_at`` first, ties by lowest id first."""
    return (-event.created_at, event.id)


def supersedes(candidate: Event, current: Event) -> bool:
    """True if ``candidate`` replaces ``current`` as the retained version of a replaceable event.

    NIP-01: the later ``created_at`` wins; on a tie, "the event with the lowest id (first in lexical
    order) should be retained". The caller is responsible for both having the same replacement key.
    """
    return newest_first_key(candidate) < newest_first_key(current)


# --- verification ------------------------------------------------------------------------------------


def verify_signature(event: Event) -> bool:
    """True iff ``event.sig`` is a valid BIP-340 signature of the 32 bytes ``event.id`` by ``pubkey``.

    This does **not** check that ``event.id`` matches the content; use :func:`verify_event` for that.
    """
    return crypto.schnorr_verify(bytes.fromhex(event.pubkey), bytes.fromhex(event.sig), bytes.fromhex(event.id))


def verify_event(event: Event) -> None:
    """Check that the id is the hash of the content and that the signature over it verifies.

    Raises :class:`InvalidEvent`: ``invalid: event id does not match its content`` or
    ``invalid: signature verification failed``. The id is checked first (a hash is far cheaper than a
    curve operation, and a signature over a different id proves nothing about this content).
    """
    if event.computed_id() != event.id:
        raise InvalidEvent("event id does not match its content")
    if not verify_signature(event):
        raise InvalidEvent("signature verification failed")


def validate_event(
    obj: object,
    *,
    now: int | None = None,
    max_future_seconds: int | None = None,
    max_past_seconds: int | None = None,
) -> Event:
    """Parse and fully verify an untrusted event: structure, then optional clock window, then id and
    signature. Returns the :class:`Event`; raises :class:`InvalidEvent` with an ``invalid:`` message.

    The clock window (``max_future_seconds``/``max_past_seconds`` around ``now``, default the current
    time) is off unless requested; it is checked before the cryptography because it is cheaper.
    """
    event = Event.from_json(obj)
    if max_future_seconds is not None or max_past_seconds is not None:
        current = int(time.time()) if now is None else now
        too_new = max_future_seconds is not None and event.created_at > current + max_future_seconds
        too_old = max_past_seconds is not None and event.created_at < current - max_past_seconds
        if too_new or too_old:
            raise InvalidEvent("event creation date is too far off from the current time")
    verify_event(event)
    return event


def sign_event(
    secret_key: bytes,
    *,
    kind: int,
    content: str,
    tags: Sequence[Sequence[str]] = (),
    created_at: int | None = None,
) -> Event:
    """Create and sign an event (BIP-340 over its NIP-01 id) with a 32-byte secp256k1 secret key.

    For tests, fixtures and gateway-authored events. ``created_at`` defaults to the current time.
    Raises :class:`InvalidEvent` for invalid fields and ``ValueError`` for an invalid key.
    """
    if len(secret_key) != crypto.SECRET_KEY_BYTES:
        raise ValueError("secret key must be 32 bytes")
    pubkey = crypto.public_key_for(secret_key).hex()
    stamp = int(time.time()) if created_at is None else created_at
    tag_tuple = tuple(tuple(tag) for tag in tags)
    # Validate the fields before hashing them: Event() checks everything but id and sig, which are
    # filled with well-formed placeholders here and replaced below.
    draft = Event(
        id="0" * 64,
        pubkey=pubkey,
        created_at=stamp,
        kind=kind,
        tags=tag_tuple,
        content=content,
        sig="0" * 128,
    )
    event_id = draft.computed_id()
    sig = crypto.schnorr_sign(secret_key, bytes.fromhex(event_id)).hex()
    return Event(
        id=event_id,
        pubkey=pubkey,
        created_at=stamp,
        kind=kind,
        tags=tag_tuple,
        content=content,
        sig=sig,
    )
