"""Leased writes are visible at once on every node, are not duplicated when the view brings them, and are
answered within a bound whatever the escrow or the bridge does."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest
from channels.db import database_sync_to_async

from escrow.coordinator import EscrowCoordinator
from escrow.transport import EscrowHTTPError, EscrowUnavailable
from hypertuna.nostr import Event, parse_client_message, sign_event
from relays import fallback as fallback_module
from relays.fallback import LeaseWriter, ReplicaFallback
from relays.frames_filter import frame_text
from replicas.models import ReplicaEvent
from tests.relays.test_fallback import KEY, FakeBridge, FakeCoordinator, signed
from tests.replicas.helpers import ensure_replica, ingest

pytestmark = pytest.mark.django_db(transaction=True)
RELAY = "ab" * 32
# answer_within (0.3 s in the fakes) + fallback.LAST_STEP_S + scheduling slack: the functional deadline.
BOUND = 1.0


def node(writer: LeaseWriter) -> ReplicaFallback:
    """One gateway node's fallback for one socket."""
    return ReplicaFallback(relay_key=RELAY, writer=writer)


async def send(fallback: ReplicaFallback, frame: list) -> list:
    raw = json.dumps(frame)
    return [json.loads(frame_text(f)) for f in await fallback.handle(parse_client_message(raw), raw)]


async def publish(fallback: ReplicaFallback, event: Event) -> list:
    return await send(fallback, ["EVENT", event.to_dict()])


async def polled(fallback: ReplicaFallback) -> list:
    return [json.loads(frame_text(f)) for f in await fallback.poll()]


@pytest.fixture
def leased(monkeypatch):
    coordinator = FakeCoordinator()
    monkeypatch.setattr("escrow.coordinator.get_coordinator", lambda: coordinator)
    return coordinator


@pytest.fixture
def replica():
    return database_sync_to_async(ensure_replica)(RELAY)


async def test_a_leased_write_reaches_reqs_and_live_subscribers_on_another_node_once(leased, replica):
    await replica
    node_a, node_b = node(LeaseWriter(FakeBridge())), node(LeaseWriter(FakeBridge()))
    assert await send(node_a, ["REQ", "mine", {"kinds": [1]}]) == [["EOSE", "mine"]]
    assert await send(node_b, ["REQ", "live", {"kinds": [1]}]) == [["EOSE", "live"]]
    event = signed("written on node A under a lease", 1_700_000_100)
    assert await publish(node_a, event) == [["OK", event.id, True, ""]]
    # Node B has no link to node A's sockets: its poll finds the event in the replica.
    assert await polled(node_b) == [["EVENT", "live", event.to_dict()]]
    assert await send(node_b, ["REQ", "again", {"ids": [event.id]}]) == [
        ["EVENT", "again", event.to_dict()],
        ["EOSE", "again"],
    ]
    # Node A's own subscription finds it in the replica too (its session had it at once from the live fan-out,
    # and drops this copy by id); a second poll does not send it again.
    assert await polled(node_a) == [["EVENT", "mine", event.to_dict()]]
    assert await polled(node_a) == []
    # A worker returns and the sync reads the same event from the view: one row, linearized, no delivery.
    await database_sync_to_async(ingest)(RELAY, [signed("older, from the view", 1_700_000_050), event])
    rows = await database_sync_to_async(list)(ReplicaEvent.objects.filter(eid=bytes.fromhex(event.id)))
    assert len(rows) == 1 and rows[0].pending is False
    assert await polled(node_a) == [] and await polled(node_b) == []


async def test_a_deletion_under_a_lease_hides_its_target_on_every_node(leased, replica):
    await replica
    node_a, node_b = node(LeaseWriter(FakeBridge())), node(LeaseWriter(FakeBridge()))
    target = signed("to be deleted", 1_700_000_000)
    await database_sync_to_async(ingest)(RELAY, [target])
    deletion = sign_event(KEY.secret, kind=5, content="", tags=[["e", target.id]], created_at=1_700_000_010)
    assert (await publish(node_a, deletion))[0][2] is True
    assert await send(node_b, ["REQ", "s", {}]) == [["EVENT", "s", deletion.to_dict()], ["EOSE", "s"]]


async def test_a_retry_of_a_pending_write_is_a_duplicate_and_stays_one_row(leased, replica):
    await replica
    bridge = FakeBridge()
    fallback = node(LeaseWriter(bridge))
    event = signed("once", 1_700_000_200)
    assert (await publish(fallback, event))[0][2] is True
    bridge.duplicate = True  # the bridge finds it in the relay's view
    assert await publish(fallback, event) == [["OK", event.id, True, "duplicate: the relay already has this event"]]
    assert await ReplicaEvent.objects.filter(eid=bytes.fromhex(event.id)).acount() == 1


async def test_a_write_that_cannot_be_materialized_is_still_acknowledged(leased, replica, monkeypatch, caplog):
    await replica

    def broken(**kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr("replicas.pending.store_leased_event", broken)
    event = signed("in the Autobase, not yet in the replica", 1_700_000_300)
    with caplog.at_level(logging.WARNING, logger="relays.fallback"):
        assert await publish(node(LeaseWriter(FakeBridge())), event) == [["OK", event.id, True, ""]]
    assert "replica sync will bring it" in caplog.text


class Escrow:
    """An escrow client that takes ``delay`` s, then raises ``error``."""

    def __init__(self, delay: float, error: Exception) -> None:
        self.delay, self.error, self.calls = delay, error, 0

    def request(self, method, path, body=None):
        self.calls += 1
        time.sleep(self.delay)
        raise self.error


@pytest.mark.parametrize(
    ("escrow", "answer"),
    [
        (Escrow(1.0, EscrowUnavailable("connect timeout")), "blocked: the relay's workers are offline"),
        # Down is an outage, not a refusal: retry, never "read-only".
        (Escrow(0.0, EscrowUnavailable("connection refused")), "blocked: the relay's workers are offline"),
        (Escrow(0.0, EscrowHTTPError(412, {"error": "policy-refused", "reasons": ["x"]})), fallback_module.READ_ONLY),
    ],
    ids=["slow", "down", "refusing"],
)
async def test_a_write_is_answered_within_the_bound_whatever_the_escrow_does(monkeypatch, escrow, answer):
    coordinator = EscrowCoordinator(escrow, answer_within=0.3)
    monkeypatch.setattr("escrow.coordinator.get_coordinator", lambda: coordinator)
    event = signed("offline write", 1_700_000_400)
    started = time.monotonic()
    frames = await publish(node(LeaseWriter(FakeBridge())), event)
    assert time.monotonic() - started < BOUND
    assert frames[-1][:3] == ["OK", event.id, False] and frames[-1][3].startswith(answer)
    if escrow.delay:
        assert frames[-1][3].endswith("retry in 1 s")  # the coordinator's figure
        await asyncio.sleep(escrow.delay + 0.2)  # let the background request finish before the test ends
    coordinator.shutdown()


async def test_a_slow_open_is_started_at_the_grant_and_never_holds_a_write(leased, replica):
    await replica
    bridge = FakeBridge(open_delay=0.8)
    writer = LeaseWriter(bridge)
    fallback = node(writer)
    first = signed("while the relay is being opened", 1_700_000_500)
    started = time.monotonic()
    assert await publish(fallback, first) == [
        ["OK", first.id, False, fallback_module.LEASE_PENDING.format(7)]  # the coordinator's figure only
    ]
    assert time.monotonic() - started < BOUND
    await asyncio.sleep(0.9)
    second = signed("once it is open", 1_700_000_501)
    started = time.monotonic()
    assert await publish(fallback, second) == [["OK", second.id, True, ""]]
    assert time.monotonic() - started < BOUND
    assert [m for m, _ in bridge.calls] == ["lease.open", "lease.append"]
    # A renewal (new expiry) announced by the coordinator is passed to the bridge with no write waiting.
    leased.expires_at += 300
    leased.grant(RELAY)
    await asyncio.sleep(1.0)
    assert [m for m, _ in bridge.calls] == ["lease.open", "lease.append", "lease.open"]
    assert bridge.calls[-1][1]["expiresAt"] == leased.expires_at * 1000
    assert leased.renew_predicate is fallback_module.relay_still_offline


async def test_a_failed_open_is_not_retried_for_every_frame(leased, replica):
    await replica
    bridge = FakeBridge(fail_open="not-a-writer")
    fallback = node(LeaseWriter(bridge))
    for n in range(3):
        event = signed(f"attempt {n}", 1_700_000_600 + n)
        assert (await publish(fallback, event))[-1][:3] == ["OK", event.id, False]
    assert [m for m, _ in bridge.calls] == ["lease.open"]


async def test_a_slow_append_is_answered_retry_and_still_made_visible(leased, replica):
    await replica
    bridge = FakeBridge(append_delay=0.8)
    fallback = node(LeaseWriter(bridge))
    event = signed("slow to store", 1_700_000_700)
    started = time.monotonic()
    frames = await publish(fallback, event)
    assert time.monotonic() - started < BOUND
    assert frames == [["OK", event.id, False, fallback_module.LEASE_PENDING.format(7)]]
    await asyncio.sleep(0.9)  # the append completes in the background and is materialized
    assert await send(node(LeaseWriter(FakeBridge())), ["REQ", "s", {"ids": [event.id]}]) == [
        ["EVENT", "s", event.to_dict()],
        ["EOSE", "s"],
    ]


async def test_a_lease_is_renewed_only_while_no_worker_answered_lately():
    from datetime import timedelta

    from django.utils import timezone

    from relays.models import Peer
    from tests.relays.test_fallback import register

    key = "cd" * 32
    await database_sync_to_async(register)(key, ["1" * 64])
    # Registered, listed, but it has not answered anyone: the lease is still needed.
    assert await database_sync_to_async(fallback_module.relay_still_offline)(key) is True
    await Peer.objects.filter(relay__relay_key=key).aupdate(last_healthy_at=timezone.now())
    assert await database_sync_to_async(fallback_module.relay_still_offline)(key) is False
    await Peer.objects.filter(relay__relay_key=key).aupdate(last_healthy_at=timezone.now() - timedelta(minutes=5))
    assert await database_sync_to_async(fallback_module.relay_still_offline)(key) is True
