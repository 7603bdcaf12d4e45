"""A session while this node's bridge is away and after it is back: the socket stays open, the client is told,
nothing counts against the workers, and the subscriptions are re-opened on the worker afterwards."""

from __future__ import annotations

import json

from relays.bridge_outage import BRIDGE_BACK_NOTICE, BRIDGE_DOWN_NOTICE, BridgeDown
from relays.runtime import Runtime
from tests.relays.fakes import FakeTransport, FakeWorker, RecordingHealth
from tests.relays.test_session import Client, event, make_session


class BridgeSwitch(FakeTransport):
    """The fake workers behind a bridge that can be killed: while it is down every request fails like
    ``relays.bridge`` fails them (``BridgeDown``)."""

    def __init__(self, workers: dict[str, FakeWorker]) -> None:
        super().__init__(workers)
        self.down = False

    async def request(self, peer_key, method, path, *, headers, body, timeout):
        if self.down:
            raise BridgeDown("gateway bridge unavailable")
        return await super().request(peer_key, method, path, headers=headers, body=body, timeout=timeout)


def session_on(bridge: BridgeSwitch, client: Client, health: RecordingHealth):
    session = make_session(bridge.workers, client, health=health)
    session.transport = bridge
    return session


async def test_socket_survives_a_bridge_outage_and_resumes_its_subscription():
    worker = FakeWorker()
    bridge = BridgeSwitch({"p1": worker})
    client, health = Client(), RecordingHealth()
    session = session_on(bridge, client, health)
    session.start()
    session.enqueue(json.dumps(["REQ", "live", {"kinds": [1]}]))
    await client.wait_for(lambda f: ["EOSE", "live"] in f)

    bridge.down = True
    await session.bridge_changed(up=False)
    assert client.frames[-1] == ["NOTICE", BRIDGE_DOWN_NOTICE]
    refused = event("while the bridge is away")
    session.enqueue(json.dumps(["EVENT", refused]))
    session.enqueue(json.dumps(["REQ", "late", {"kinds": [1]}]))
    await client.wait_for(lambda f: any(x[0] == "CLOSED" and x[1] == "late" for x in f))
    ok = next(f for f in client.frames if f[0] == "OK")
    assert ok[:3] == ["OK", refused["id"], False] and ok[3].startswith("error:") and "try again" in ok[3]
    closed = next(f for f in client.frames if f[0] == "CLOSED")
    assert closed[2].startswith("error:") and "try again" in closed[2]

    # The worker lost the connection's subscriptions with the bridge (a restarted bridge is a new connection).
    worker.subs.clear()
    bridge.down = False
    await session.bridge_changed(up=True)
    assert ["NOTICE", BRIDGE_BACK_NOTICE] in client.frames
    await client.wait_for(lambda f: "live" in {s for subs in worker.subs.values() for s in subs})
    after = event("after the bridge is back", created_at=1_700_000_100)
    worker.events.append(after)
    await client.wait_for(lambda f: ["EVENT", "live", after] in f)

    assert client.closed is None
    assert health.failed == []
    assert session.current_peer == "p1"
    assert "late" not in {s for subs in worker.subs.values() for s in subs}, "a refused REQ must not be re-opened"
    assert worker.events == [after], "the refused EVENT never reached the worker"
    await session.stop()


async def test_a_request_failing_on_the_lost_bridge_is_not_the_workers_fault():
    """The bridge fails a request before the runtime has told the session (the loss is seen by the call
    first): the client still gets a retry answer, the socket stays, and no worker is reported failed."""
    bridge = BridgeSwitch({"p1": FakeWorker(), "p2": FakeWorker()})
    bridge.down = True
    client, health = Client(), RecordingHealth()
    session = session_on(bridge, client, health)
    session.start()
    ev = event("too early")
    session.enqueue(json.dumps(["EVENT", ev]))
    await client.wait_for(lambda f: any(x[0] == "OK" for x in f))
    assert client.frames[0][:3] == ["OK", ev["id"], False] and "try again" in client.frames[0][3]
    assert client.closed is None and health.failed == []
    await session.stop()


class FakeBridgeClient:
    def __init__(self) -> None:
        self.dialled: list[str] = []
        self.connected = True

    async def peer_connect(self, peer_key: str, *, timeout_ms: int | None = None) -> dict:
        self.dialled.append(peer_key)
        return {"peerKey": peer_key}


def runtime_with_a_session() -> tuple[Runtime, Client]:
    """A runtime holding one session of a relay whose worker is ``p1``."""
    client = Client()
    rt = Runtime()
    rt.add(session_on(BridgeSwitch({"p1": FakeWorker()}), client, RecordingHealth()))
    return rt, client


async def test_runtime_tells_sessions_and_redials_their_workers_before_they_resume():
    rt, client = runtime_with_a_session()
    await rt.bridge_lost()
    assert client.frames == [["NOTICE", BRIDGE_DOWN_NOTICE]] and not rt.bridge_up
    fake = FakeBridgeClient()
    await rt._redial_then_resume(fake)  # type: ignore[arg-type]
    assert fake.dialled == ["p1"]
    assert rt.bridge_up and client.frames[-1] == ["NOTICE", BRIDGE_BACK_NOTICE]


async def test_a_bridge_connected_again_resumes_the_sessions_even_without_its_event(monkeypatch):
    """The check by state: the sessions were told the bridge went away, the client is connected again, and
    the ``bridge.reconnected`` event never came; the next check resumes them all the same."""
    import asyncio

    from relays import runtime as runtime_module

    rt, client = runtime_with_a_session()
    fake = FakeBridgeClient()
    fake.connected = False
    monkeypatch.setattr(runtime_module, "get_bridge", lambda: fake)
    await rt.bridge_lost()
    await rt._check_bridge()  # still away: nothing to do
    assert rt._restore is None and client.frames == [["NOTICE", BRIDGE_DOWN_NOTICE]]
    fake.connected = True
    await rt._check_bridge()
    assert rt._restore is not None
    await asyncio.wait_for(rt._restore, 2)
    assert fake.dialled == ["p1"] and rt.bridge_up
    assert client.frames[-1] == ["NOTICE", BRIDGE_BACK_NOTICE]
    await rt._check_bridge()  # up: nothing more
    assert client.frames.count(["NOTICE", BRIDGE_BACK_NOTICE]) == 1


async def test_a_resume_that_fails_is_logged_and_tried_again_by_the_next_check(monkeypatch, caplog):
    import asyncio

    from relays import runtime as runtime_module

    rt, client = runtime_with_a_session()
    fake = FakeBridgeClient()
    monkeypatch.setattr(runtime_module, "get_bridge", lambda: fake)
    await rt.bridge_lost()
    tell = rt._tell_sessions
    failures = iter([RuntimeError("sessions could not be told")])

    async def tell_once_failing(*, up: bool) -> None:
        if up and (failure := next(failures, None)) is not None:
            raise failure
        await tell(up=up)

    monkeypatch.setattr(rt, "_tell_sessions", tell_once_failing)
    await rt._check_bridge()
    with caplog.at_level("WARNING", logger="relays.runtime"):
        await asyncio.gather(rt._restore, return_exceptions=True)
        await asyncio.sleep(0)  # the done callback runs on the next turn of the loop
    assert "resuming sessions after the bridge came back failed; retrying" in caplog.text
    assert not rt.bridge_up and client.frames == [["NOTICE", BRIDGE_DOWN_NOTICE]]

    await rt._check_bridge()
    await asyncio.wait_for(rt._restore, 2)
    assert rt.bridge_up and client.frames[-1] == ["NOTICE", BRIDGE_BACK_NOTICE]
