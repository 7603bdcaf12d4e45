"""A socket holds at most ``max_subscriptions`` open REQs (NIP-11 ``limitation.max_subscriptions``): one more is
answered CLOSED and never reaches the worker; replacing an open id or closing one first is always allowed."""

from __future__ import annotations

import dataclasses
import json

from tests.relays.fakes import FakeWorker
from tests.relays.test_session import FAST, Client, make_session

CAPPED = dataclasses.replace(FAST, max_subscriptions=2)


async def test_one_subscription_over_the_cap_is_closed_and_not_forwarded():
    worker = FakeWorker()
    client = Client()
    session = make_session({"p1": worker}, client, config=CAPPED)
    session.start()
    for sub in ("a", "b"):
        session.enqueue(json.dumps(["REQ", sub, {"kinds": [1]}]))
        await client.wait_for(lambda f, sub=sub: ["EOSE", sub] in f)
    session.enqueue(json.dumps(["REQ", "c", {"kinds": [1]}]))
    await client.wait_for(lambda f: any(x[:2] == ["CLOSED", "c"] for x in f))
    closed = next(x for x in client.frames if x[:2] == ["CLOSED", "c"])
    assert closed[2].startswith("error: too many open subscriptions (at most 2)")
    assert set(next(iter(worker.subs.values()))) == {"a", "b"}  # the worker never saw "c"
    # Replacing an open id is not one more; closing one makes room.
    session.enqueue(json.dumps(["REQ", "a", {"kinds": [2]}]))
    session.enqueue(json.dumps(["CLOSE", "b"]))
    session.enqueue(json.dumps(["REQ", "c", {"kinds": [1]}]))
    await client.wait_for(lambda f: ["EOSE", "c"] in f)
    assert sum(x[:2] == ["CLOSED", "c"] for x in client.frames) == 1
    await session.stop()
