from __future__ import annotations

from daphne.http_protocol import HTTPFactory
from daphne.ws_protocol import WebSocketProtocol

from hypertuna.daphne_tuning import tune_daphne


class Transport:
    def __init__(self):
        self.nodelay = None

    def setTcpNoDelay(self, enabled):
        self.nodelay = enabled

    def __getattr__(self, name):
        return lambda *a, **k: None


def test_accepted_connections_disable_nagle():
    tune_daphne()

    class Server:
        pass

    factory = HTTPFactory(Server())
    protocol = factory.buildProtocol(("127.0.0.1", 1))
    transport = Transport()
    try:
        protocol.makeConnection(transport)
    except Exception:
        pass  # the fake transport is not a full Twisted transport; only the option matters here
    assert transport.nodelay is True


def test_registered_server_close_codes_reach_the_wire_and_others_stay_validated():
    tune_daphne()
    sent = []

    class Fake:
        serverClose = WebSocketProtocol.serverClose

        def sendCloseFrame(self, code, reasonUtf8, isReply):
            sent.append(code)

        def sendClose(self, code=None, reason=None):
            sent.append(("validated", code))

    fake = Fake()
    fake.serverClose(1013)
    fake.serverClose(1011)
    fake.serverClose(4403)
    fake.serverClose(None)
    assert sent == [1013, 1011, ("validated", 4403), ("validated", 1000)]


def test_frames_sent_build_no_coloured_log_arguments(monkeypatch):
    import autobahn.util
    import autobahn.websocket.protocol

    tune_daphne()
    styled = []
    monkeypatch.setattr(autobahn.util, "hl", lambda *a, **k: styled.append(a) or "")

    class Sent(autobahn.websocket.protocol.WebSocketProtocol):
        def __init__(self):
            self.send_queue = []
            self.state = self.STATE_OPEN
            self.logOctets = False
            self.written = []
            self.transport = type("T", (), {"write": lambda _, data: self.written.append(data)})()
            self.trafficStats = type("S", (), {"outgoingOctetsWireLevel": 0})()
            self.peer = "tcp:127.0.0.1:1"
            self.log = type("L", (), {"debug": lambda *a, **k: None})()

    protocol = Sent()
    protocol.sendData(b"frame")
    assert protocol.written == [b"frame"] and styled == []


def test_daphne_scans_its_connections_every_check_interval_only():
    from hypertuna import daphne_tuning

    scheduled = []

    class Reactor:
        running = True

        def callLater(self, delay, fn, *args, **kwargs):
            scheduled.append((getattr(fn, "__name__", ""), delay))

    spaced = daphne_tuning._ScanSpacingReactor(Reactor())

    def application_checker():
        pass

    def timeout_checker():
        pass

    def something_else():
        pass

    spaced.callLater(1, application_checker)
    spaced.callLater(2, timeout_checker)
    spaced.callLater(0.5, something_else)
    assert scheduled == [
        ("application_checker", daphne_tuning.CHECK_INTERVAL),
        ("timeout_checker", daphne_tuning.CHECK_INTERVAL),
        ("something_else", 0.5),
    ]
    assert spaced.running is True  # everything else is the reactor's own
