"""Typed errors of the bridge client.

``BridgeUnavailable``: no usable connection to the bridge (not running, socket missing, connection
lost while a call was in flight). ``BridgeTimeout``: the bridge did not answer a call in time.
``BridgeError``: the bridge answered with an error; ``code`` is one of the stable codes listed in
``bridge/README.md`` (``peer-unavailable``, ``peer-timeout``, ``invalid-params``, ...).
"""

from __future__ import annotations

from typing import Any


class BridgeClientError(Exception):
    """Base class of every error raised by :mod:`hypertuna.bridge`."""


class BridgeUnavailable(BridgeClientError):
    """The bridge cannot be reached, or the connection was lost."""


class BridgeTimeout(BridgeClientError):
    """A call did not complete within its timeout."""


class BridgeError(BridgeClientError):
    """The bridge answered a call with an error."""

    def __init__(self, code: str, message: str, data: Any = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.data = data


class BridgeProtocolError(BridgeClientError):
    """The bridge sent something this client cannot interpret (version mismatch, bad frame)."""
