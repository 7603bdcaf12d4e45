"""A socket served by the replica gets each event once: an event it already got live (another node's fan-out)
is dropped when the replica's poll brings it again after the sync materialized it."""

from __future__ import annotations

import json

from hypertuna.nostr import Event, eose_frame, event_frame_from_json
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
