"""Let Daphne send the server close codes that Nostr clients are told about.

RFC 6455 §7.4.1 defines 1011 (the server hit an unexpected condition) and the IANA registry adds 1013
(try again later); the relay protocol answers "no worker can serve this relay now" with 1013 and an
internal failure with 1011. Autobahn, which Daphne uses, only lets *applications* send 1000 and
3000-4999 and raises on anything else, which would turn a clean close into a dropped connection. This
shim lets exactly those two registered codes through to the close frame; every other code still goes
through Autobahn's validation.
"""

from __future__ import annotations

from typing import Any

SERVER_CODES = frozenset({1011, 1013})
_installed = False


def allow_server_close_codes() -> None:
    global _installed
    if _installed:
        return
    try:
        from daphne.ws_protocol import WebSocketProtocol
    except ImportError:  # not running under Daphne: nothing to adapt
        return
    original = WebSocketProtocol.serverClose

    def server_close(self: Any, code: int | None = None) -> None:
        if code in SERVER_CODES:
            self.sendCloseFrame(code=code, reasonUtf8=None, isReply=False)
            return
        original(self, code=code)

    WebSocketProtocol.serverClose = server_close
    _installed = True
