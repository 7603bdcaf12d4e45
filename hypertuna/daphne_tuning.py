"""Daphne adjustments: server close codes Nostr clients are told about, failing cleanly, TCP_NODELAY, and no
log formatting per frame.

TCP_NODELAY: every accepted connection (HTTP and WebSocket) disables Nagle's algorithm, so a small frame
(an OK, an EOSE) is not held back waiting for the client's delayed ACK.

Close codes:

RFC 6455 §7.4.1 defines 1011 (the server hit an unexpected condition) and the IANA registry adds 1013
(try again later); the relay protocol answers "no worker can serve this relay now" with 1013 and an
internal failure with 1011. Autobahn, which Daphne uses, only lets *applications* send 1000 and
3000-4999 and raises on anything else, which would turn a clean close into a dropped connection. This
shim lets exactly those two registered codes through to the close frame; every other code still goes
through Autobahn's validation.

Failing cleanly: Autobahn's default (``failByDrop``) answers a protocol failure by dropping the TCP
connection, so a client that sends a frame over Daphne's size limit or a text frame that is not UTF-8 sees
a reset and no reason. With ``failByDrop`` off it sends the close frame RFC 6455 asks for instead (1009
"message too big", 1007 "invalid payload", with Autobahn's reason) and ends the connection after the close
handshake (or its timeout).

Log formatting: Autobahn builds the arguments of its debug log lines before the logger decides to drop them,
and for every frame sent (``sendData``) that means colouring the peer, the length and the method name through
``click.style`` — measured at about a tenth of the web process's time serving a 100-event replica answer.
The highlighting helpers its WebSocket modules call are replaced by ones that return the value as is (debug
logs, when enabled, read the same without colour).

Periodic scans: Daphne walks every open connection once a second (reaping finished application instances) and
every two seconds (timeouts and keepalive pings) — work per idle socket, every second. Both scans run every
``CHECK_INTERVAL`` seconds instead; what they enforce keeps its meaning at that granularity (a ping is sent at
most that much after its interval, the 30 s handshake limit and the application close timeout are seconds).
"""

from __future__ import annotations

import sys
from typing import Any

SERVER_CODES = frozenset({1011, 1013})
CHECK_INTERVAL = 5.0
_SCANS = frozenset({"application_checker", "timeout_checker"})
_installed = False


def tune_daphne() -> None:
    global _installed
    if _installed:
        return
    try:
        from daphne.http_protocol import HTTPFactory
        from daphne.ws_protocol import WebSocketFactory, WebSocketProtocol
    except ImportError:  # not running under Daphne: nothing to adapt
        return
    original = WebSocketProtocol.serverClose
    build_protocol = HTTPFactory.buildProtocol

    def build_with_nodelay(self: Any, addr: Any) -> Any:
        protocol = build_protocol(self, addr)
        if protocol is not None:
            make_connection = protocol.makeConnection

            def make_connection_nodelay(transport: Any) -> Any:
                if hasattr(transport, "setTcpNoDelay"):
                    transport.setTcpNoDelay(True)
                return make_connection(transport)

            protocol.makeConnection = make_connection_nodelay
        return protocol

    HTTPFactory.buildProtocol = build_with_nodelay

    def server_close(self: Any, code: int | None = None) -> None:
        if code in SERVER_CODES:
            self.sendCloseFrame(code=code, reasonUtf8=None, isReply=False)
            return
        original(self, code=code)

    WebSocketProtocol.serverClose = server_close

    factory_init = WebSocketFactory.__init__

    def factory_init_failing_cleanly(self: Any, *args: Any, **kwargs: Any) -> None:
        factory_init(self, *args, **kwargs)
        self.setProtocolOptions(failByDrop=False)

    WebSocketFactory.__init__ = factory_init_failing_cleanly  # type: ignore[method-assign]
    _plain_log_values()
    _slower_scans()
    _installed = True


class _ScanSpacingReactor:
    """Daphne's view of the reactor: its two connection scans are scheduled ``CHECK_INTERVAL`` apart."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def callLater(self, delay: float, callable: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(callable, "__name__", "") in _SCANS:
            delay = max(delay, CHECK_INTERVAL)
        return self._reactor.callLater(delay, callable, *args, **kwargs)


def _slower_scans() -> None:
    # Only under Daphne's server (its CLI imports it before the application): importing it elsewhere would
    # install a Twisted reactor in a process that has none.
    server = sys.modules.get("daphne.server")
    reactor = getattr(server, "reactor", None)
    if server is not None and reactor is not None and not isinstance(reactor, _ScanSpacingReactor):
        server.reactor = _ScanSpacingReactor(reactor)  # type: ignore[attr-defined]


def _plain(value: Any, *args: Any, **kwargs: Any) -> Any:
    return value


def _plain_log_values() -> None:
    import autobahn.twisted.websocket
    import autobahn.websocket.protocol

    for module in (autobahn.websocket.protocol, autobahn.twisted.websocket):
        for name in ("hltype", "hlval", "hlid", "hluserid"):
            if hasattr(module, name):
                setattr(module, name, _plain)
