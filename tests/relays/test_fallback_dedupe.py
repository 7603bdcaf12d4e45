"""A socket served by the replica gets each event once: an event it already got live (another node's fan-out)
is dropped when the replica's poll brings it again after the sync materialized it."""

from __future__ import annotations

import json
import random

from hypertuna.nostr import Event, eose_frame, event_frame_from_json
from relays.fallback import RECENT_IDS, _Sub
from relays.frames_filter import WorkerFrame
from replicas.queries import StoredEvent
from tests.relays.test_session import Client, event, make_session


class ReplicaFake:
    """Answers REQs with an EOSE and, once ``stored`` holds events, returns them on every poll."""

    def __init__(self) -> None:
        self.stored: list[dict] = []
        self.sub_ids: list[str] = []

    async def handle(self, message, raw):
        self.sub_ids.append(message.subscription_id)
        return [eose_frame(message.subscription_id)]

    async def poll(self):
        return [event_frame_from_json(s, json.dumps(e)) for s in self.sub_ids for e in self.stored]


async def test_an_event_got_live_is_not_sent_again_by_the_replica_poll():
    replica = ReplicaFake()
    client = Client()
    session = make_session({}, client, peers=[], fallback=replica)
    session.start()
    session.enqueue(json.dumps(["REQ", "live", {"kinds": [1]}]))
    await client.wait_for(lambda f: ["EOSE", "live"] in f)
    ev = event("fanned out by another node")
    await session.offer_live(Event.from_json(ev))
    await client.wait_for(lambda f: ["EVENT", "live", ev] in f)
    replica.stored.append(ev)  # the sync materialized it: every poll now returns it
    fresh = event("only in the replica", created_at=1_700_000_001)
    replica.stored.append(fresh)
    await client.wait_for(lambda f: ["EVENT", "live", fresh] in f)
    await session.stop()
    assert client.frames.count(["EVENT", "live", ev]) == 1
    assert client.frames.count(["EVENT", "live", fresh]) == 1


class PreReadReplica(ReplicaFake):
    """Answers a REQ as the real fallback does: pre-read EVENT frames (one of them twice), then EOSE."""

    def __init__(self, events: list[dict]) -> None:
        super().__init__()
        self.events = events

    async def handle(self, message, raw):
        sub = message.subscription_id
        self.sub_ids.append(sub)
        frames = [
            WorkerFrame(event_frame_from_json(sub, json.dumps(e)), "EVENT", sub, e["id"], e["created_at"])
            for e in [*self.events, self.events[0]]
        ]
        return [*frames, eose_frame(sub)]


async def test_a_replica_answer_goes_to_the_socket_in_one_batch_in_order_without_repeats():
    stored = [event(f"stored {i}", created_at=1_700_000_100 - i) for i in range(5)]
    client = Client()
    batches: list[list[str]] = []

    async def send_many(frames: list[str]) -> None:
        batches.append(frames)
        for frame in frames:
            await client.send(frame)

    session = make_session({}, client, peers=[], fallback=PreReadReplica(stored), send_many=send_many)
    session.start()
    session.enqueue(json.dumps(["REQ", "feed", {"kinds": [1]}]))
    await client.wait_for(lambda f: ["EOSE", "feed"] in f)
    assert client.frames == [*(["EVENT", "feed", e] for e in stored), ["EOSE", "feed"]]
    assert len(batches) == 1 and len(batches[0]) == len(stored) + 1
    assert session.stats.frames_out == len(stored) + 1
    # What the pre-read frames delivered is remembered like any frame: a live copy is not sent again.
    await session.offer_live(Event.from_json(stored[0]))
    await session.stop()
    assert client.frames.count(["EVENT", "feed", stored[0]]) == 1


def test_an_initial_answer_is_noted_as_its_events_one_by_one_would_be():
    """``_Sub.note_answer`` (the initial answer at once) leaves the state of ``note`` per event: the recent
    ids (bounded, oldest out first), the newest second and the ids seen at it; checked on random answers,
    ties at the newest second included, on fresh subscriptions and on ones with a history."""
    rng = random.Random(13)
    for _ in range(300):
        size = rng.choice([0, 1, 5, 100, RECENT_IDS - 1, RECENT_IDS + 40])
        seconds = [1_700_000_000 + rng.randrange(0, rng.choice([1, 3, 1000])) for _ in range(size)]
        ids = [f"{i:064x}" for i in rng.sample(range(10 * RECENT_IDS), size)]
        answer = sorted(
            (StoredEvent(i, t, "{}") for i, t in zip(ids, seconds, strict=True)), key=lambda e: (-e.created_at, e.id)
        )
        # A history: ids and a newest second that may tie the answer's (the subscription saw events before).
        history = [
            (f"{n:x}".rjust(64, "f"), 1_700_000_000 + rng.choice([0, 500, 2000])) for n in range(rng.choice([0, 3]))
        ]
        one_by_one, at_once = _Sub(()), _Sub(())
        for sub in (one_by_one, at_once):
            for event_id, created_at in history:
                sub.note(event_id, created_at)
        for stored in answer:
            one_by_one.note(stored.id, stored.created_at)
        at_once.note_answer(answer)
        assert list(at_once.recent) == list(one_by_one.recent)
        assert (at_once.newest, at_once.seen_at_newest) == (one_by_one.newest, one_by_one.seen_at_newest)
