"""Error types for the Nostr protocol layer, with the NIP-01 machine-readable prefixes.

NIP-01 requires the message of a negative ``OK`` and of every ``CLOSED`` to be "a machine-readable
single-word prefix followed by a ``:`` and then a human-readable message". Every error raised by this
package is a :class:`ProtocolError` whose ``str()`` is exactly that text, so the caller can put it in a
relay frame unchanged. No error message ever contains key material: events carry only public data.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from hypertuna.nostr._wire import dumps, quote_excerpt


class Prefix(StrEnum):
    """Machine-readable prefixes for ``OK``/``CLOSED`` messages (NIP-01, NIP-42)."""

    DUPLICATE = "duplicate"
    POW = "pow"
    BLOCKED = "blocked"
    RATE_LIMITED = "rate-limited"
    INVALID = "invalid"
    RESTRICTED = "restricted"
    MUTE = "mute"
    ERROR = "error"
    AUTH_REQUIRED = "auth-required"
    #: Used in NIP-01's own ``CLOSED`` examples ("filter contains unknown elements") and for frame types
    #: this package does not understand.
    UNSUPPORTED = "unsupported"


def prefixed(prefix: Prefix, reason: str) -> str:
    """Return ``"<prefix>: <reason>"``, the NIP-01 form of an ``OK``/``CLOSED`` message."""
    return f"{prefix.value}: {reason}"


class ProtocolError(Exception):
    """A protocol-level refusal: ``prefix`` says what kind, ``reason`` says why, for humans.

    ``str(error)`` (also available as :attr:`message`) is the NIP-01 prefixed message.
    """

    prefix: Prefix
    reason: str

    def __init__(self, reason: str, *, prefix: Prefix = Prefix.INVALID) -> None:
        self.prefix = prefix
        self.reason = reason
        super().__init__(prefixed(prefix, reason))

    @property
    def message(self) -> str:
        """The NIP-01 message text, e.g. ``"invalid: event id does not match its content"``."""
        return prefixed(self.prefix, self.reason)

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        # Subclasses take different constructor arguments, so the default (re-calling __init__ with
        # ``self.args``) would double the prefix; rebuild from the attributes instead.
        return (_restore_error, (type(self), dict(self.__dict__)))


def _restore_error(cls: type[ProtocolError], state: dict[str, Any]) -> ProtocolError:
    error = cls.__new__(cls)
    Exception.__init__(error, prefixed(state["prefix"], state["reason"]))
    error.__dict__.update(state)
    return error


class InvalidEvent(ProtocolError):
    """An event is malformed, its id does not match its content, or its signature does not verify.

    Always carries the ``invalid`` prefix.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason, prefix=Prefix.INVALID)


class InvalidFilter(ProtocolError):
    """A REQ/COUNT filter has a wrong type or an out-of-range value. Always ``invalid``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, prefix=Prefix.INVALID)


class FrameError(ProtocolError):
    """A client frame could not be accepted; carries what is needed to answer it.

    NIP-01 says how a refusal must be answered, depending on how far the frame could be read:

    - an ``EVENT`` (or NIP-42 ``AUTH``) whose event id could be read → ``["OK", id, false, message]``
      (``event_id`` is set);
    - a ``REQ``/``COUNT`` whose subscription id is valid → ``["CLOSED", sub_id, message]``
      (``subscription_id`` is set);
    - anything else → ``["NOTICE", message]``.

    :meth:`reply` builds that frame. ``notice`` is the bare message text for callers that only send
    NOTICEs. Messages never echo unvalidated client input except a short JSON-quoted excerpt.
    """

    event_id: str | None
    subscription_id: str | None

    def __init__(
        self,
        reason: str,
        *,
        prefix: Prefix = Prefix.INVALID,
        event_id: str | None = None,
        subscription_id: str | None = None,
    ) -> None:
        super().__init__(reason, prefix=prefix)
        self.event_id = event_id
        self.subscription_id = subscription_id

    @property
    def notice(self) -> str:
        """The text to send in a ``NOTICE`` (identical to :attr:`message`)."""
        return self.message

    def reply(self) -> str:
        """The relay frame answering the refused client frame, as compact JSON text."""
        if self.event_id is not None:
            return dumps(["OK", self.event_id, False, self.message])
        if self.subscription_id is not None:
            return dumps(["CLOSED", self.subscription_id, self.message])
        return dumps(["NOTICE", self.message])


class UnknownMessageType(FrameError):
    """The frame is a well-formed JSON array whose first element is not a type this package parses.

    A separate type so that a gateway may forward such frames unchanged to a worker (the reference
    gateway forwards ``PING``/``PONG`` and unknown types) instead of answering with a NOTICE.
    ``message_type`` is the received type string.
    """

    message_type: str

    def __init__(self, message_type: str) -> None:
        super().__init__(f"unknown message type {quote_excerpt(message_type)}", prefix=Prefix.UNSUPPORTED)
        self.message_type = message_type
