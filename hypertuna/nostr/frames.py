"""Client → relay frame parsing and relay → client frame emission (NIP-01, NIP-42 AUTH, NIP-45 COUNT).

:func:`parse_client_message` turns one raw WebSocket text frame into a typed message or raises
:class:`~hypertuna.nostr.errors.FrameError` — and nothing else, whatever the input (a Hypothesis fuzz
test holds it to that), so one bad frame can never tear down a connection handler. The error knows how
to answer (``OK false`` / ``CLOSED`` / ``NOTICE``, see :meth:`FrameError.reply`).

Parsing checks structure only: an ``EVENT`` is checked field by field (:meth:`Event.from_json`), but
its id and signature are verified by the caller with :func:`~hypertuna.nostr.events.verify_event`,
which costs a hash and a curve operation that a frame forwarded unchanged to a worker does not need.

Emitted frames are compact JSON text (no whitespace, raw UTF-8 characters, ``ensure_ascii=False``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn, TypeGuard

from hypertuna.nostr._wire import clean_text, dumps, has_lone_surrogate, quote_excerpt
from hypertuna.nostr.errors import FrameError, InvalidEvent, InvalidFilter, UnknownMessageType
from hypertuna.nostr.events import Event, is_hex64
from hypertuna.nostr.filters import DEFAULT_FILTER_LIMITS, Filter, FilterLimits

MAX_SUBSCRIPTION_ID_LENGTH = 64


@dataclass(frozen=True, slots=True)
class FrameLimits:
    """Bounds for client frames.

    ``max_frame_bytes``: UTF-8 size of one frame (strfry's default WebSocket payload limit is 128 KiB).
    ``max_filters``: filters in one REQ/COUNT. ``filter_limits``: per-filter bounds.
    """

    max_frame_bytes: int = 131_072
    max_filters: int = 20
    filter_limits: FilterLimits = DEFAULT_FILTER_LIMITS


DEFAULT_FRAME_LIMITS = FrameLimits()


# --- client messages ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventMessage:
    """``["EVENT", <event>]``: publish an event (structurally valid, not yet verified)."""

    event: Event


@dataclass(frozen=True, slots=True)
class ReqMessage:
    """``["REQ", <subscription_id>, <filter>, ...]``: at least one filter, at most ``max_filters``."""

    subscription_id: str
    filters: tuple[Filter, ...]


@dataclass(frozen=True, slots=True)
class CloseMessage:
    """``["CLOSE", <subscription_id>]``."""

    subscription_id: str


@dataclass(frozen=True, slots=True)
class AuthMessage:
    """``["AUTH", <signed event>]`` (NIP-42; structurally valid, not yet verified)."""

    event: Event


@dataclass(frozen=True, slots=True)
class CountMessage:
    """``["COUNT", <subscription_id>, <filter>, ...]`` (NIP-45), same rules as REQ."""

    subscription_id: str
    filters: tuple[Filter, ...]


ClientMessage = EventMessage | ReqMessage | CloseMessage | AuthMessage | CountMessage


def is_valid_subscription_id(value: object) -> TypeGuard[str]:
    """NIP-01: "an arbitrary, non-empty string of max length 64 chars" (code points), and encodable as
    UTF-8 (no unpaired surrogates) so that it can be echoed back."""
    return isinstance(value, str) and 0 < len(value) <= MAX_SUBSCRIPTION_ID_LENGTH and not has_lone_surrogate(value)


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _decode(raw: str | bytes, limits: FrameLimits) -> object:
    too_large = FrameError(f"message too large (max {limits.max_frame_bytes} bytes)")
    if isinstance(raw, bytes):
        if len(raw) > limits.max_frame_bytes:
            raise too_large
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise FrameError("message is not valid UTF-8") from None
    else:
        text = raw
        # A code point is 1..4 UTF-8 bytes: only encode when the length alone cannot decide.
        if len(text) > limits.max_frame_bytes or (
            len(text) * 4 > limits.max_frame_bytes
            and len(text.encode("utf-8", "surrogatepass")) > limits.max_frame_bytes
        ):
            raise too_large
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except ValueError:
        # JSONDecodeError, NaN/Infinity and integers too long to convert.
        raise FrameError("message is not valid JSON") from None
    except RecursionError:
        # Valid JSON nested deeper than the decoder recurses (no NIP-01 message nests more than four levels).
        raise FrameError("message nests too deeply") from None


def _subscription_id(frame: list[Any], kind: str) -> str:
    if len(frame) < 2:
        raise FrameError(f"{kind} message has no subscription id")
    sub_id = frame[1]
    if not is_valid_subscription_id(sub_id):
        raise FrameError(
            f"subscription id must be a non-empty string of at most {MAX_SUBSCRIPTION_ID_LENGTH} characters"
        )
    return sub_id


def _filters(frame: list[Any], kind: str, sub_id: str, limits: FrameLimits) -> tuple[Filter, ...]:
    raw_filters = frame[2:]
    if not raw_filters:
        raise FrameError(f"{kind} message must have at least one filter", subscription_id=sub_id)
    if len(raw_filters) > limits.max_filters:
        raise FrameError(f"too many filters (max {limits.max_filters})", subscription_id=sub_id)
    try:
        return tuple(Filter.from_json(item, limits.filter_limits) for item in raw_filters)
    except InvalidFilter as exc:
        raise FrameError(exc.reason, prefix=exc.prefix, subscription_id=sub_id) from None


def _event(frame: list[Any], kind: str) -> Event:
    payload = frame[1] if len(frame) > 1 else None
    # Answer with OK whenever the event's id can be read, as NIP-01 wants every EVENT answered by OK.
    event_id = None
    if isinstance(payload, Mapping):
        candidate = payload.get("id")
        if is_hex64(candidate):
            event_id = candidate
    if len(frame) != 2:
        raise FrameError(f'{kind} message must be ["{kind}", <event>]', event_id=event_id)
    try:
        return Event.from_json(payload)
    except InvalidEvent as exc:
        raise FrameError(exc.reason, prefix=exc.prefix, event_id=event_id) from None


def parse_client_message(raw: str | bytes, limits: FrameLimits = DEFAULT_FRAME_LIMITS) -> ClientMessage:
    """Parse one client frame. Raises :class:`FrameError` (only) when it cannot be accepted;
    :class:`UnknownMessageType` (a subclass) for a well-formed frame of a type not handled here."""
    frame = _decode(raw, limits)
    if not isinstance(frame, list) or not frame:
        raise FrameError("message must be a non-empty JSON array")
    kind = frame[0]
    if not isinstance(kind, str):
        raise FrameError("message type must be a string")
    if kind == "EVENT":
        return EventMessage(_event(frame, kind))
    if kind == "REQ":
        sub_id = _subscription_id(frame, kind)
        return ReqMessage(sub_id, _filters(frame, kind, sub_id, limits))
    if kind == "CLOSE":
        sub_id = _subscription_id(frame, kind)
        if len(frame) != 2:
            raise FrameError('CLOSE message must be ["CLOSE", <subscription_id>]')
        return CloseMessage(sub_id)
    if kind == "AUTH":
        return AuthMessage(_event(frame, kind))
    if kind == "COUNT":
        sub_id = _subscription_id(frame, kind)
        return CountMessage(sub_id, _filters(frame, kind, sub_id, limits))
    raise UnknownMessageType(kind)


# --- relay messages ----------------------------------------------------------------------------------


def _checked_subscription_id(subscription_id: str) -> str:
    if not is_valid_subscription_id(subscription_id):
        raise ValueError("invalid subscription id")
    return subscription_id


def event_frame(subscription_id: str, event: Event | Mapping[str, Any]) -> str:
    """``["EVENT", sub_id, event]``. A mapping is written as given (e.g. a stored event dict)."""
    body = event.to_dict() if isinstance(event, Event) else event
    return dumps(["EVENT", _checked_subscription_id(subscription_id), body])


def event_frame_from_json(subscription_id: str, event_json: str) -> str:
    """``["EVENT", sub_id, event]`` around an already serialized event (no re-encoding).

    The caller vouches that ``event_json`` is one JSON object (e.g. a replica row written from
    :meth:`Event.to_json`); it is inserted verbatim.
    """
    return event_frame_head(subscription_id) + event_json + "]"


def event_frame_head(subscription_id: str) -> str:
    """``["EVENT",<sub_id>,`` — the part of every EVENT frame of one subscription before the event: an answer
    of many events checks and encodes the subscription id once (``head + event_json + "]"``)."""
    return '["EVENT",' + dumps(_checked_subscription_id(subscription_id)) + ","


def ok_frame(event_id: str, accepted: bool, message: str = "") -> str:
    """``["OK", event_id, accepted, message]``. NIP-01: when refusing, ``message`` must be prefixed
    (``"invalid: …"``; see :func:`~hypertuna.nostr.errors.prefixed`)."""
    if not is_hex64(event_id):
        raise ValueError("event id must be 64 lowercase hex characters")
    return dumps(["OK", event_id, bool(accepted), clean_text(message)])


def eose_frame(subscription_id: str) -> str:
    """``["EOSE", sub_id]``: end of stored events."""
    return dumps(["EOSE", _checked_subscription_id(subscription_id)])


def closed_frame(subscription_id: str, message: str) -> str:
    """``["CLOSED", sub_id, message]``; ``message`` is NIP-01 prefixed (``"error: …"``)."""
    return dumps(["CLOSED", _checked_subscription_id(subscription_id), clean_text(message)])


def notice_frame(message: str) -> str:
    """``["NOTICE", message]``: human-readable."""
    return dumps(["NOTICE", clean_text(message)])


def auth_challenge_frame(challenge: str) -> str:
    """``["AUTH", challenge]`` (NIP-42 relay → client)."""
    return dumps(["AUTH", clean_text(challenge)])


def count_frame(subscription_id: str, count: int) -> str:
    """``["COUNT", sub_id, {"count": n}]`` (NIP-45)."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError("count must be a non-negative integer")
    return dumps(["COUNT", _checked_subscription_id(subscription_id), {"count": count}])


def unsupported_frame(raw: str, when: str) -> str:
    """The answer to a client frame this relay cannot serve ``when`` (e.g. "while …offline"): ``CLOSED`` for a
    ``COUNT`` (it names a subscription, NIP-45), else a ``NOTICE`` naming the verb; both ``unsupported:``."""
    try:
        frame = json.loads(raw)
    except ValueError:
        frame = None
    verb = frame[0] if isinstance(frame, list) and frame and isinstance(frame[0], str) else ""
    if verb == "COUNT" and len(frame) > 1 and isinstance(frame[1], str):
        return closed_frame(frame[1], f"unsupported: COUNT is not served {when}")
    return notice_frame(f"unsupported: {quote_excerpt(verb)} is not served {when}")
