"""Frames a NIP-01 client expects from a gateway in front of real workers: no worker chatter, nothing for
subscriptions the socket has not opened, and one clear end when the worker refuses the credentials."""

from __future__ import annotations

import asyncio
import json

from relays.forwarding import PeerResponse, parse_ndjson, parse_poll
from relays.frames_filter import DeliveredIds, accepted_event, read_frame
from relays.session import CLOSE_AUTH_REJECTED, SessionConfig
from tests.relays.fakes import FakeWorker
from tests.relays.test_session import Client, event, make_session, until

SLOW_IDLE = SessionConfig(poll_interval=0.05, request_timeout=1, poll_timeout=1)


class RealTextWorker(FakeWorker):
    """Answers a REQ with the published worker runtime's literal notice."""

    def handle(self, method, path, body):
        response = super().handle(method, path, body)
        if method == "POST" and json.loads(json.loads(body)["message"])[0] == "REQ":
            sub_id = json.loads(json.loads(body)["message"])[1]
            text = json.dumps(["NOTICE", f"Subscription {sub_id} created/updated successfully"])
            return PeerResponse(200, {}, text.encode())
        return response


def test_subscription_chatter_of_real_workers_is_hidden():
    for sub_id in ("s", "sub with spaces", "x" * 64):
        body = json.dumps(["NOTICE", f"Subscription {sub_id} created/updated successfully"]).encode()
        assert parse_ndjson(body) == []
        assert parse_poll(b"[" + body + b"]") == []
    kept = ["NOTICE", "Subscription limit reached"]
    (frame,) = parse_ndjson(json.dumps(kept).encode())
    assert (frame.text, frame.kind, frame.notice) == (json.dumps(kept, separators=(",", ":")), "NOTICE", kept[1])
    # Read once from the decoded reply: an EVENT arrives with what admission needs, no parse left to do.
    (event_frame,) = parse_poll(b'[["EVENT","s",{"id":"ab","created_at":5}]]')
    assert (event_frame.kind, event_frame.subscription_id, event_frame.event_id, event_frame.created_at) == (
        "EVENT",
        "s",
        "ab",
        5,
    )


def test_read_frame_classifies_once():
    frame = read_frame('["EVENT","s",{"id":"ab","created_at":5}]')
    assert (frame.kind, frame.subscription_id, frame.event_id, frame.created_at) == ("EVENT", "s", "ab", 5)
    assert read_frame('["NOTICE","Invalid authentication"]').is_auth_rejection
    assert not read_frame('["NOTICE","Invalid authentication, try again"]').is_auth_rejection
    assert read_frame("not json").kind == ""
    assert read_frame('["EVENT",7,{}]').subscription_id is None
    assert read_frame('["EVENT","s",{"created_at":true}]').created_at is None
    # What admission reads of an event is taken only where it has the type NIP-01 gives it.
    odd = read_frame('["EVENT","s",{"id":7,"created_at":"5"}]')
    assert (odd.kind, odd.subscription_id, odd.event_id, odd.created_at) == ("EVENT", "s", None, None)
    assert read_frame('["EVENT","s","not an event"]')[2:5] == ("s", None, None)
    assert read_frame('["EOSE","s",{"id":"ab","created_at":5}]')[2:5] == ("s", None, None)


def test_accepted_event_ignores_duplicates_and_refusals():
    eid = "e" * 64
    assert accepted_event([json.dumps(["OK", eid, True, ""])], eid)
    assert not accepted_event([json.dumps(["OK", eid, True, "duplicate: already have this event"])], eid)
    assert not accepted_event([json.dumps(["OK", eid, False, "blocked: no"])], eid)
    assert not accepted_event([json.dumps(["OK", "f" * 64, True, ""])], eid)
    assert not accepted_event(['["NOTICE","x"]'], eid)


def test_delivered_ids_are_bounded_and_forgotten_per_subscription():
    ids = DeliveredIds(size=3)
    for n in range(5):
        ids.add("s", str(n))
    assert len(ids) == 3 and not ids.seen("s", "0") and ids.seen("s", "4")
    ids.add("t", "4")
    ids.forget("s")
    assert not ids.seen("s", "4") and ids.seen("t", "4")
    assert len(ids) == 1
    ids.forget("s")  # forgetting twice, or a subscription never seen, is nothing
    ids.forget("never")
    assert len(ids) == 1 and ids.seen("t", "4")


def test_delivered_ids_evict_the_oldest_across_subscriptions_and_refresh_a_repeat():
    ids = DeliveredIds(size=3)
    ids.add("a", "1")
    ids.add("b", "1")
    ids.add("a", "2")
    ids.add("a", "1")  # seen again: now the youngest
    ids.add("c", "1")  # evicts the oldest: ("b", "1")
    assert not ids.seen("b", "1") and ids.seen("a", "1") and ids.seen("a", "2") and ids.seen("c", "1")
    assert len(ids) == 3
    ids.add("c", "2")  # evicts ("a", "2")
    ids.add("c", "3")  # evicts ("a", "1"): "a" has nothing left
    assert len(ids) == 3 and not ids.seen("a", "1") and not ids.seen("a", "2")
    ids.forget("a")
    ids.forget("c")
    assert len(ids) == 0 and not ids.seen("c", "3")
    ids.add("a", "1")  # a forgotten subscription starts afresh
    assert ids.seen("a", "1") and len(ids) == 1


def test_delivered_ids_against_a_plain_model():
    """Random adds and forgets give the same answers as a list kept in age order (the old implementation)."""
    import random

    rng = random.Random(7)
    ids, model, size = DeliveredIds(size=20), [], 20
    for _ in range(5000):
        subscription, event_id = rng.choice("abcd"), str(rng.randrange(15))
        if rng.random() < 0.05:
            ids.forget(subscription)
            model = [entry for entry in model if entry[0] != subscription]
        else:
            ids.add(subscription, event_id)
            if (subscription, event_id) in model:
                model.remove((subscription, event_id))
            model.append((subscription, event_id))
            del model[: max(0, len(model) - size)]
        assert len(ids) == len(model)
        probe = (rng.choice("abcd"), str(rng.randrange(15)))
        assert ids.seen(*probe) == (probe in model)


async def test_real_worker_notice_never_reaches_the_client():
    worker = RealTextWorker(events=[event("stored", 100)])
    client = Client()
    session = make_session({"p": worker}, client, config=SLOW_IDLE)
    session.start()
    session.enqueue(json.dumps(["REQ", "s", {"kinds": [1]}]))
    await client.wait_for(lambda f: ["EOSE", "s"] in f)
    assert [f[0] for f in client.frames] == ["EVENT", "EOSE"]
    await session.stop()


class ReattachingWorker(FakeWorker):
    """Delivers frames for subscriptions of an earlier connection of the same client on every poll."""

    def handle(self, method, path, body):
        response = super().handle(method, path, body)
        if method == "GET":
            ghost = [["EVENT", "old-sub", event("for the old socket")], ["EOSE", "old-sub"], ["CLOSED", "gone", "x"]]
            return PeerResponse(200, {}, json.dumps(ghost + json.loads(response.body)).encode())
        return response


async def test_frames_for_subscriptions_the_socket_never_opened_are_dropped():
    worker = ReattachingWorker(events=[event("mine", 100)])
    client = Client()
    session = make_session({"p": worker}, client, config=SLOW_IDLE)
    session.start()
    session.enqueue(json.dumps(["REQ", "mine", {"kinds": [1]}]))
    await client.wait_for(lambda f: ["EOSE", "mine"] in f)
    polls = session.stats.polls
    await until(lambda: session.stats.polls >= polls + 2)
    assert {f[1] for f in client.frames} == {"mine"}
    await session.stop()


async def test_frames_of_a_closed_subscription_are_dropped():
    worker = FakeWorker()
    client = Client()
    session = make_session({"p": worker}, client, config=SLOW_IDLE)
    session.start()
    session.enqueue(json.dumps(["REQ", "s", {"kinds": [1]}]))
    await client.wait_for(lambda f: ["EOSE", "s"] in f)
    session.enqueue(json.dumps(["CLOSE", "s"]))
    await until(lambda: not worker.subs.get(session.connection_key, {}).get("s"))
    # The worker still answers for the closed id (a late frame): the client must not see it.
    await session.deliver([json.dumps(["EVENT", "s", event("late", 200)]), json.dumps(["EOSE", "s"])])
    assert [f[0] for f in client.frames] == ["EOSE"]
    await session.stop()


class RejectingWorker(FakeWorker):
    """A worker that refuses the forwarded credentials: on every poll, and with 403 on a REQ."""

    def __init__(self, *, on_post: bool, **kwargs):
        super().__init__(**kwargs)
        self.on_post = on_post

    def handle(self, method, path, body):
        self.requests.append((method, path))
        if method == "GET":
            return PeerResponse(200, {}, b'[["NOTICE","Invalid authentication"]]')
        if self.on_post:
            return PeerResponse(403, {}, b'[["NOTICE","Invalid authentication"]]')
        return PeerResponse(200, {}, b'["NOTICE","Subscription s created/updated successfully"]')


async def test_worker_rejecting_the_credentials_on_polls_ends_the_socket_once():
    worker = RejectingWorker(on_post=False)
    client = Client()
    session = make_session({"p": worker}, client, config=SLOW_IDLE)
    session.start()
    session.enqueue(json.dumps(["REQ", "s", {"kinds": [1]}]))
    await client.wait_for(lambda f: len(f) >= 1)
    await asyncio.sleep(0.2)  # four idle intervals: a repeating NOTICE would show here
    assert len(client.frames) == 1
    assert client.frames[0][0] == "NOTICE" and client.frames[0][1].startswith("restricted:")
    assert "Invalid authentication" in client.frames[0][1]
    assert client.closed == (CLOSE_AUTH_REJECTED, "Authentication rejected by the relay host")
    polls = len([r for r in worker.requests if r[0] == "GET"])
    await asyncio.sleep(0.15)
    assert len([r for r in worker.requests if r[0] == "GET"]) == polls  # the session stopped polling
    await session.stop()


async def test_worker_refusing_a_req_with_403_ends_the_socket_with_4403():
    worker = RejectingWorker(on_post=True)
    client = Client()
    session = make_session({"p": worker}, client, config=SLOW_IDLE)
    session.start()
    session.enqueue(json.dumps(["REQ", "s", {"kinds": [1]}]))
    await client.wait_for(lambda f: len(f) >= 1)
    assert client.closed is not None and client.closed[0] == 4403
    assert len(client.frames) == 1 and client.frames[0][1].startswith("restricted:")
    await session.stop()


async def test_other_worker_refusals_stay_a_notice():
    worker = FakeWorker(status=403)
    client = Client()
    session = make_session({"p": worker}, client, config=SLOW_IDLE)
    session.start()
    session.enqueue(json.dumps(["REQ", "s", {}]))
    await client.wait_for(lambda f: ["NOTICE", "Error: Peer returned status 403"] in f)
    assert client.closed is None
    await session.stop()
