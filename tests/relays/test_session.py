from __future__ import annotations

import asyncio
import json

import pytest
from coincurve import PrivateKey

from hypertuna.nostr import sign_event
from relays.session import GatewaySession, SessionConfig
from tests.relays.fakes import FakeTransport, FakeWorker, RecordingHealth

FAST = SessionConfig(poll_interval=0.01, request_timeout=1, poll_timeout=1, max_queued_frames=8)
KEY = PrivateKey()


def event(content: str, created_at: int = 1_700_000_000, kind: int = 1) -> dict:
    return sign_event(KEY.secret, created_at=created_at, kind=kind, tags=[], content=content).to_dict()


class Client:
    def __init__(self) -> None:
        self.frames: list = []
        self.closed: tuple[int, str] | None = None

    async def send(self, frame: str) -> None:
        self.frames.append(json.loads(frame))

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    async def wait_for(self, predicate, timeout=2.0):
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            if predicate(self.frames):
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"timed out; frames so far: {self.frames}")


async def until(predicate, timeout=5.0):
    """Wait for a condition of the session's state (not of the wall clock)."""
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


def make_session(workers, client, peers=None, **kwargs):
    return GatewaySession(
        relay_key="a" * 64,
        peers=peers if peers is not None else list(workers),
        transport=FakeTransport(workers),
        send=client.send,
        close=client.close,
        auth_token="auth",
        health=kwargs.pop("health", RecordingHealth()),
        config=kwargs.pop("config", FAST),
        **kwargs,
    )


async def test_event_is_forwarded_and_ok_returned():
    worker = FakeWorker()
    client = Client()
    session = make_session({"p1": worker}, client)
    session.start()
    ev = event("hello")
    session.enqueue(json.dumps(["EVENT", ev]))
    await client.wait_for(lambda f: ["OK", ev["id"], True, ""] in f)
    assert worker.events == [ev]
    await session.stop()


async def test_req_gets_stored_events_then_one_eose_then_live_events():
    worker = FakeWorker(events=[event("old", 100), event("older", 50)])
    client = Client()
    session = make_session({"p1": worker}, client)
    session.start()
    session.enqueue(json.dumps(["REQ", "s1", {"kinds": [1]}]))
    await client.wait_for(lambda f: ["EOSE", "s1"] in f)
    kinds = [f[0] for f in client.frames]
    assert kinds == ["EVENT", "EVENT", "EOSE"]  # worker chatter NOTICEs are not forwarded
    live = event("live", 200)
    worker.events.append(live)
    await client.wait_for(lambda f: any(x[0] == "EVENT" and x[2]["id"] == live["id"] for x in f))
    assert [f[0] for f in client.frames].count("EOSE") == 1
    await session.stop()


async def test_malformed_frames_get_notices_and_session_continues():
    worker = FakeWorker()
    client = Client()
    session = make_session({"p1": worker}, client)
    session.start()
    for bad in ("not json", "[]", '{"a":1}', '["REQ"]', '["REQ","s"]', '["EVENT",{"id":"x"}]', "[" * 5000):
        session.enqueue(bad)
    await client.wait_for(lambda f: len(f) >= 7)
    assert all(f[0] in ("NOTICE", "CLOSED", "OK") for f in client.frames)
    assert worker.requests == []  # nothing malformed reached the worker
    ev = event("still works")
    session.enqueue(json.dumps(["EVENT", ev]))
    await client.wait_for(lambda f: ["OK", ev["id"], True, ""] in f)
    await session.stop()


async def test_bad_signature_is_refused_before_reaching_the_worker():
    worker = FakeWorker()
    client = Client()
    session = make_session({"p1": worker}, client)
    session.start()
    ev = event("x")
    ev["content"] = "tampered"
    session.enqueue(json.dumps(["EVENT", ev]))
    await client.wait_for(lambda f: any(x[0] == "OK" for x in f))
    ok = next(x for x in client.frames if x[0] == "OK")
    assert ok[1] == ev["id"] and ok[2] is False and ok[3].startswith("invalid:")
    assert worker.events == []
    await session.stop()


async def test_unknown_frame_types_are_forwarded_unchanged():
    worker = FakeWorker()
    client = Client()
    session = make_session({"p1": worker}, client)
    session.start()
    session.enqueue('["PING"]')
    await client.wait_for(lambda f: ["NOTICE", "unknown"] in f)
    await session.stop()


async def test_rotation_skips_a_dead_peer_and_reports_it():
    dead, alive = FakeWorker(down=True), FakeWorker()
    client = Client()
    health = RecordingHealth()
    session = make_session({"dead": dead, "alive": alive}, client, health=health)
    session.start()
    ev = event("x")
    session.enqueue(json.dumps(["EVENT", ev]))
    await client.wait_for(lambda f: ["OK", ev["id"], True, ""] in f)
    assert health.failed[0] == "dead" and "alive" in health.ok
    assert session.current_peer == "alive"
    await session.stop()


async def test_worker_error_status_is_relayed_not_retried():
    refusing, other = FakeWorker(status=403), FakeWorker()
    client = Client()
    session = make_session({"refusing": refusing, "other": other}, client)
    session.start()
    session.enqueue(json.dumps(["REQ", "s", {}]))
    await client.wait_for(lambda f: ["NOTICE", "Error: Peer returned status 403"] in f)
    assert other.requests == [] or all(m == "GET" for m, _ in other.requests)
    await session.stop()


async def test_failover_to_second_worker_resumes_subscriptions():
    shared_events = [event("a", 100)]
    first, second = FakeWorker(events=shared_events), FakeWorker(events=list(shared_events))
    client = Client()
    session = make_session({"w1": first, "w2": second}, client)
    session.start()
    session.enqueue(json.dumps(["REQ", "s", {"kinds": [1]}]))
    await client.wait_for(lambda f: ["EOSE", "s"] in f)
    first.down = True
    newer = event("b", 200)
    second.events.append(newer)
    await client.wait_for(lambda f: any(x[0] == "EVENT" and x[2]["id"] == newer["id"] for x in f))
    assert session.current_peer == "w2" and session.stats.failovers == 1
    # The replayed REQ resumed after what the client had: no duplicate of the old event, one EOSE.
    ids = [x[2]["id"] for x in client.frames if x[0] == "EVENT"]
    assert ids.count(shared_events[0]["id"]) == 1
    assert [x[0] for x in client.frames].count("EOSE") == 1
    await session.stop()


async def test_all_workers_gone_gives_notice_and_close_1013():
    worker = FakeWorker()
    client = Client()
    session = make_session({"w": worker}, client)
    session.start()
    session.enqueue(json.dumps(["REQ", "s", {}]))
    await client.wait_for(lambda f: ["EOSE", "s"] in f)
    worker.down = True
    await client.wait_for(lambda f: any(x[0] == "NOTICE" and x[1].startswith("Error:") for x in f))
    await asyncio.sleep(0.05)
    assert client.closed == (1013, "No peers available")
    await session.stop()


async def test_no_peers_at_all_closes_on_first_frame():
    client = Client()
    session = make_session({}, client, peers=[])
    session.start()
    session.enqueue(json.dumps(["REQ", "s", {}]))
    await client.wait_for(lambda f: ["NOTICE", "Error: No peers available"] in f)
    assert client.closed == (1013, "No peers available")
    await session.stop()


async def test_flooding_client_is_bounded_and_told():
    class SlowTransport(FakeTransport):
        async def request(self, *args, **kwargs):
            await asyncio.sleep(0.2)
            return await super().request(*args, **kwargs)

    client = Client()
    session = GatewaySession(
        relay_key="a" * 64,
        peers=["p"],
        transport=SlowTransport({"p": FakeWorker()}),
        send=client.send,
        close=client.close,
        auth_token=None,
        health=RecordingHealth(),
        config=FAST,
    )
    session.start()
    accepted = [session.enqueue(json.dumps(["REQ", f"s{i}", {}])) for i in range(50)]
    assert accepted.count(True) <= FAST.max_queued_frames + 1
    await client.wait_for(lambda f: any(x[0] == "NOTICE" and x[1].startswith("rate-limited:") for x in f))
    await session.stop()


async def test_stop_cancels_background_work():
    client = Client()
    session = make_session({"p": FakeWorker()}, client)
    session.start()
    await session.stop()
    assert session.closed
    sent = len(client.frames)
    await asyncio.sleep(0.05)
    assert len(client.frames) == sent


# --- poll schedule ---------------------------------------------------------------------------------


def test_idle_schedule_polls_once_per_interval():
    from relays.poll_schedule import PollSchedule

    schedule = PollSchedule(idle=1.0)
    schedule.polled(10.0)
    assert schedule.next_delay(10.0) == 1.0
    assert schedule.next_delay(10.4) == pytest.approx(0.6)
    schedule.polled(11.0)
    assert schedule.next_delay(11.0) == 1.0


def test_awaited_eose_polls_at_once_then_at_growing_gaps_until_it_arrives():
    from relays.poll_schedule import PollSchedule

    schedule = PollSchedule(idle=1.0, min_gap=0.002, growth=0.25, bound=5.0)
    schedule.polled(0.0)
    schedule.await_eose("s", 100.0)
    assert schedule.next_delay(100.0) == 0.0
    now, gaps = 100.0, []
    for _ in range(40):
        schedule.polled(now)
        delay = schedule.next_delay(now)
        if delay >= 0.99:  # back at the idle rhythm
            break
        gaps.append(delay)
        now += delay
    assert gaps[0] == pytest.approx(0.002)
    assert gaps == sorted(gaps) and gaps[-1] < 1.0
    assert len(gaps) < 40  # bounded: a worker that never answers costs a few dozen polls, then idle
    assert schedule.awaiting == frozenset()


def test_eose_ends_fast_polling():
    from relays.poll_schedule import PollSchedule

    schedule = PollSchedule(idle=1.0)
    schedule.await_eose("a", 0.0)
    schedule.await_eose("b", 0.0)
    schedule.polled(0.01)
    schedule.settled("a")
    assert schedule.next_delay(0.01) < 0.01  # still waiting for b
    schedule.settled("b")
    assert schedule.next_delay(0.01) == pytest.approx(1.0)


def test_poll_now_is_one_poll():
    from relays.poll_schedule import PollSchedule

    schedule = PollSchedule(idle=1.0)
    schedule.polled(5.0)
    schedule.poll_now()
    assert schedule.next_delay(5.1) == 0.0
    schedule.polled(5.1)
    assert schedule.next_delay(5.1) == pytest.approx(1.0)


async def test_req_on_a_poll_only_worker_gets_its_eose_without_waiting_for_the_idle_poll():
    worker = FakeWorker(events=[event("stored", 100)])  # answers REQ with a notice only, like real workers
    client = Client()
    config = SessionConfig(poll_interval=60, request_timeout=1, poll_timeout=1)
    session = make_session({"p1": worker}, client, config=config)
    session.start()
    session.enqueue(json.dumps(["REQ", "s", {"kinds": [1]}]))
    await client.wait_for(lambda f: ["EOSE", "s"] in f, timeout=10)
    assert [f[0] for f in client.frames] == ["EVENT", "EOSE"]
    # The EOSE was available on the first poll after the REQ: that poll is the only one.
    assert session.stats.polls == 1
    await session.stop()


async def test_idle_socket_does_not_poll_more_than_before():
    worker = FakeWorker()
    client = Client()
    config = SessionConfig(poll_interval=60, request_timeout=1, poll_timeout=1)
    session = make_session({"p1": worker}, client, config=config)
    session.start()
    session.enqueue(json.dumps(["REQ", "s", {"kinds": [1]}]))
    await client.wait_for(lambda f: ["EOSE", "s"] in f)
    polls = session.stats.polls
    await asyncio.sleep(0.3)
    assert session.stats.polls == polls  # nothing pending: no poll before the idle interval
    await session.stop()


async def test_fast_polling_stops_at_its_bound_for_a_worker_that_never_answers():
    class Silent(FakeWorker):
        def handle(self, method, path, body):
            self.requests.append((method, path))
            from relays.forwarding import PeerResponse

            return PeerResponse(200, {}, b"[]")

    worker = Silent()
    client = Client()
    config = SessionConfig(poll_interval=60, request_timeout=1, poll_timeout=1, fast_poll_bound=0.2)
    session = make_session({"p1": worker}, client, config=config)
    session.start()
    session.enqueue(json.dumps(["REQ", "s", {"kinds": [1]}]))
    await until(lambda: worker.requests and not session._schedule.awaiting)
    polls = session.stats.polls
    await asyncio.sleep(0.3)
    assert session.stats.polls == polls and 1 <= polls < 40
    await session.stop()
