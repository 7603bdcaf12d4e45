"""Gateway-side live fan-out: an EVENT a worker accepted reaches the relay's other sockets at once, each
matching subscription once, however the worker's own copy arrives later."""

from __future__ import annotations

import asyncio
import json

import pytest
from channels.db import database_sync_to_async

from hypertuna.nostr import Event
from relays import fanout
from relays.session import SessionConfig
from tests.conftest import hex_key
from tests.relays.fakes import FakeWorker
from tests.relays.test_consumer import P1, connect, receive_json, register
from tests.relays.test_session import Client, event, make_session, until

# An idle poll far longer than any test: whatever arrives quickly came through the fan-out.
NO_IDLE_POLL = SessionConfig(poll_interval=60, request_timeout=1, poll_timeout=1)


class Group:
    """One node's fan-out of one relay (no channel layer: a single node); counts the events published."""

    def __init__(self) -> None:
        self.sessions: list = []
        self.published: list[Event] = []
        self.fanout = fanout.NodeFanout(lambda relay_key: self.sessions, lambda: None)

    async def publish(self, event: Event) -> None:
        self.published.append(event)
        await self.fanout.publish("relay", event)

    def join(self, workers, client, **kwargs):
        session = make_session(workers, client, on_accepted=self.publish, config=NO_IDLE_POLL, **kwargs)
        self.sessions.append(session)
        session.start()
        return session


async def subscribe(session, client, sub_id, flt):
    session.enqueue(json.dumps(["REQ", sub_id, flt]))
    await client.wait_for(lambda f: ["EOSE", sub_id] in f, timeout=5)


def events_of(client, sub_id=None):
    return [f[2]["id"] for f in client.frames if f[0] == "EVENT" and (sub_id is None or f[1] == sub_id)]


async def test_accepted_event_reaches_matching_sockets_once_and_the_worker_copy_is_dropped():
    worker = FakeWorker()
    group = Group()
    reader, other, writer = Client(), Client(), Client()
    reader_session = group.join({"p": worker}, reader)
    other_session = group.join({"p": worker}, other)
    writer_session = group.join({"p": worker}, writer)
    await subscribe(reader_session, reader, "notes", {"kinds": [1]})
    await subscribe(other_session, other, "profiles", {"kinds": [0]})
    await subscribe(writer_session, writer, "mine", {"kinds": [1]})
    live = event("live", 300)
    writer_session.enqueue(json.dumps(["EVENT", live]))
    await reader.wait_for(lambda f: live["id"] in events_of(reader), timeout=5)
    await writer.wait_for(lambda f: live["id"] in events_of(writer), timeout=5)
    assert len(group.published) == 1
    assert ["OK", live["id"], True, ""] in writer.frames
    # The worker's copy arrives on the next polls of each socket: not delivered a second time.
    for session in (reader_session, writer_session):
        polls = session.stats.polls
        session._schedule.poll_now()
        session._wake.set()
        await until(lambda s=session, n=polls: s.stats.polls > n)
    assert events_of(reader) == [live["id"]] and events_of(writer) == [live["id"]]
    assert events_of(other) == []
    for session in group.sessions:
        await session.stop()


async def test_worker_copy_first_then_fanout_is_dropped_too():
    worker = FakeWorker()
    client = Client()
    session = make_session({"p": worker}, client, config=NO_IDLE_POLL)
    session.start()
    await subscribe(session, client, "s", {"kinds": [1]})
    live = event("pushed first", 400)
    await session.deliver([json.dumps(["EVENT", "s", live])])
    await session.offer_live(Event.from_json(live))
    assert events_of(client) == [live["id"]]
    await session.stop()


async def test_fanout_waits_for_eose_and_respects_filters():
    worker = FakeWorker()
    client = Client()
    session = make_session({"p": worker}, client, config=NO_IDLE_POLL)
    session.start()
    await subscribe(session, client, "since", {"kinds": [1], "since": 1000})
    old = Event.from_json(event("too old", 500))
    await session.offer_live(old)
    assert events_of(client) == []
    # A subscription still waiting for its stored events is left to the worker.
    session._subscriptions.get("since").eose_sent = False
    await session.offer_live(Event.from_json(event("new", 2000)))
    assert events_of(client) == []
    await session.stop()


async def test_a_replaced_subscription_gets_its_stored_events_again():
    stored = event("stored", 100)
    worker = FakeWorker(events=[stored])
    client = Client()
    session = make_session({"p": worker}, client, config=NO_IDLE_POLL)
    session.start()
    await subscribe(session, client, "s", {"kinds": [1]})
    await session.offer_live(Event.from_json(stored))  # already had it: dropped
    assert events_of(client) == [stored["id"]]
    worker.delivered.clear()
    client.frames.clear()
    await subscribe(session, client, "s", {"kinds": [1]})
    assert events_of(client) == [stored["id"]]
    await session.stop()


async def test_duplicate_or_refused_events_are_not_fanned_out():
    class Refusing(FakeWorker):
        def handle(self, method, path, body):
            response = super().handle(method, path, body)
            if method == "POST" and b"EVENT" in body:
                ev_id = json.loads(json.loads(body)["message"])[1]["id"]
                reply = ["OK", ev_id, True, "duplicate: already have this event"]
                return type(response)(200, {}, json.dumps(reply).encode())
            return response

    group = Group()
    client = Client()
    session = group.join({"p": Refusing()}, client)
    ev = event("dup")
    session.enqueue(json.dumps(["EVENT", ev]))
    await client.wait_for(lambda f: any(x[0] == "OK" for x in f))
    assert group.published == []
    await session.stop()


pytestmark_db = pytest.mark.django_db(transaction=True)


@pytestmark_db
async def test_fanout_through_the_channel_layer_between_two_sockets(monkeypatch, settings):
    from relays.consumers import RelayConsumer
    from relays.runtime import Runtime
    from tests.relays.fakes import FakeTransport

    settings.HYPERTUNA_POLL_INTERVAL_MS = 60_000  # only the fan-out can deliver in time
    pool = {P1: FakeWorker()}
    monkeypatch.setattr(RelayConsumer, "transport_factory", staticmethod(lambda: FakeTransport(pool)))
    monkeypatch.setattr(Runtime, "ensure_started", lambda self: None)
    key = hex_key()
    await database_sync_to_async(register)(key, [P1], requires_auth=False)
    reader = await connect(f"/{key}")
    writer = await connect(f"/{key}")
    await reader.send_to(json.dumps(["REQ", "live", {"kinds": [1]}]))
    assert await receive_json(reader, timeout=5) == ["EOSE", "live"]
    ev = event("across sockets", 500)
    await writer.send_to(json.dumps(["EVENT", ev]))
    assert await receive_json(writer) == ["OK", ev["id"], True, ""]
    got = await receive_json(reader, timeout=5)
    assert got[:2] == ["EVENT", "live"] and got[2]["id"] == ev["id"]
    assert await reader.receive_nothing(timeout=0.2)
    await reader.disconnect()
    await writer.disconnect()


class LiveSink:
    """A session stand-in that records the live events offered to it."""

    def __init__(self) -> None:
        self.closed = False
        self.got: list[str] = []

    async def offer_live(self, ev: Event) -> None:
        self.got.append(ev.id)


async def test_two_nodes_each_deliver_once_with_one_message_per_batch():
    from channels.layers import InMemoryChannelLayer

    layer = InMemoryChannelLayer()
    here, there = [LiveSink(), LiveSink()], [LiveSink()]
    node_a = fanout.NodeFanout(lambda key: here if key == "r" else [], lambda: layer)
    node_b = fanout.NodeFanout(lambda key: there if key == "r" else [], lambda: layer)
    await node_a.attach("r")
    await node_b.attach("r")
    await until(lambda: node_a.others_present("r") and node_b.others_present("r"))  # the hellos crossed
    sent = [Event.from_json(event(f"n{i}", 100 + i)) for i in range(20)]
    before = fanout.fanout_messages.labels(direction="out")._value.get()
    for ev in sent:
        await node_a.publish("r", ev)
    ids = [ev.id for ev in sent]
    assert [s.got for s in here] == [ids, ids]  # this node's sockets: at once, in order
    await until(lambda: there[0].got == ids)
    messages = fanout.fanout_messages.labels(direction="out")._value.get() - before
    assert 1 <= messages < len(sent)  # batched while a message was on its way
    # Node A's own message came back to it too: skipped, nothing delivered twice.
    for _ in range(5):
        await asyncio.sleep(0.02)
    assert [s.got for s in here] == [ids, ids] and there[0].got == ids
    await node_a.close()
    await node_b.close()


async def test_a_node_without_sockets_of_a_relay_leaves_its_group_at_the_next_refresh():
    from channels.layers import InMemoryChannelLayer

    layer = InMemoryChannelLayer()
    sockets: list[LiveSink] = [LiveSink()]
    node = fanout.NodeFanout(lambda key: sockets, lambda: layer)
    await node.attach("r")
    assert node.channel in layer.groups[fanout.node_group("r")]
    assert await node.refresh() == 1
    sockets.clear()
    assert await node.refresh() == 0
    assert node.channel not in layer.groups.get(fanout.node_group("r"), {})
    await node.attach("r")  # a socket of the relay again: back in the group
    assert node.channel in layer.groups[fanout.node_group("r")]
    await node.close()


def test_node_group_names_are_valid_for_any_relay_key():
    from channels.layers import BaseChannelLayer

    layer = BaseChannelLayer()
    for key in ("a" * 64, "npub1venxvenx:demo", "ä/ö relay " * 20):
        assert layer.require_valid_group_name(fanout.node_group(key))


async def test_a_node_alone_with_a_relay_sends_nothing_through_the_channel_layer():
    from channels.layers import InMemoryChannelLayer

    layer = InMemoryChannelLayer()
    sockets = [LiveSink()]
    node = fanout.NodeFanout(lambda key: sockets, lambda: layer, presence_s=0.3)
    await node.attach("r")
    before = fanout.fanout_messages.labels(direction="out")._value.get()
    ev = Event.from_json(event("alone", 100))
    await node.publish("r", ev)
    assert sockets[0].got == [ev.id]
    for _ in range(5):
        await asyncio.sleep(0.02)
    assert fanout.fanout_messages.labels(direction="out")._value.get() == before
    # A second node joins: from its hello on, the first sends; once it is not heard of any more, it stops.
    other = [LiveSink()]
    joining = fanout.NodeFanout(lambda key: other, lambda: layer, presence_s=0.3)
    await joining.attach("r")
    await until(lambda: node.others_present("r"))
    second = Event.from_json(event("two nodes", 101))
    await node.publish("r", second)
    await until(lambda: other[0].got == [second.id])
    await joining.close()
    await until(lambda: not node.others_present("r"))
    await node.publish("r", Event.from_json(event("alone again", 102)))
    assert fanout.fanout_messages.labels(direction="out")._value.get() == before + 1
    # The lapsed presence is forgotten at the next refresh, not kept for every relay ever heard of.
    assert "r" in node._others
    await node.refresh()
    assert "r" not in node._others
    await node.close()
