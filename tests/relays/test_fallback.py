"""Relays with no reachable worker: replica reads and leased writes, through the real ASGI stack."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import timedelta
from types import SimpleNamespace

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from coincurve import PrivateKey
from django.utils import timezone

from hypertuna.asgi import application
from hypertuna.bridge import BridgeError
from hypertuna.compat import hmac_hex
from hypertuna.nostr import Event, sign_event
from relays import fallback as fallback_module
from relays import services
from relays.consumers import RelayConsumer
from relays.fallback import LeaseWriter
from relays.models import Relay
from relays.runtime import Runtime
from tests.conftest import SECRET, hex_key, make_registration
from tests.relays.fakes import FakeTransport
from tests.replicas.helpers import ensure_replica, ingest

pytestmark = pytest.mark.django_db(transaction=True)
KEY = PrivateKey()


def signed(content: str, created_at: int) -> Event:
    return sign_event(KEY.secret, kind=1, content=content, tags=[], created_at=created_at)


EV = {name: signed(name, 1_700_000_000 + i) for i, name in enumerate(("e1", "e2", "e3", "x"))}


@pytest.fixture
def offline(monkeypatch, settings):
    settings.HYPERTUNA_POLL_INTERVAL_MS = 50
    monkeypatch.setattr(RelayConsumer, "transport_factory", staticmethod(lambda: FakeTransport({})))
    monkeypatch.setattr(Runtime, "ensure_started", lambda self: None)


def register(relay_key: str, peers: list[str]) -> None:
    reg = make_registration(relay_key, peers=peers, metadata={"requiresAuth": False})
    services.register_relay(registration=reg, signature=hmac_hex(SECRET, reg))
    services.refresh_relay_cache(relay_key)


def mirror(relay_key: str, events: list[Event]) -> None:
    ensure_replica(relay_key, "c" * 64)
    ingest(relay_key, events)


async def recv(communicator, timeout=3):
    return json.loads(await communicator.receive_from(timeout=timeout))


async def test_peerless_relay_is_read_from_its_replica_and_read_only(offline):
    key = hex_key()
    old, new = signed("old", 100), signed("new", 200)
    await database_sync_to_async(register)(key, [])
    await database_sync_to_async(mirror)(key, [old, new])
    communicator = WebsocketCommunicator(application, f"/{key}")
    assert (await communicator.connect())[0]
    await communicator.send_to(json.dumps(["REQ", "s", {"kinds": [1], "limit": 1}]))
    assert await recv(communicator) == ["EVENT", "s", new.to_dict()]
    assert await recv(communicator) == ["EOSE", "s"]
    attempt = signed("write while offline", 300)
    await communicator.send_to(json.dumps(["EVENT", attempt.to_dict()]))
    assert await recv(communicator) == ["NOTICE", "Relay is read-only while its workers are offline"]
    assert await recv(communicator) == ["OK", attempt.id, False, fallback_module.READ_ONLY]
    await communicator.disconnect()


async def test_lapsed_registration_stays_readable_when_mirrored(offline):
    key = hex_key()
    event = signed("kept", 100)
    await database_sync_to_async(register)(key, ["1" * 64])
    await database_sync_to_async(mirror)(key, [event])
    await database_sync_to_async(Relay.objects.filter(relay_key=key).update)(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    await database_sync_to_async(services.expire_registrations)()
    communicator = WebsocketCommunicator(application, f"/{key}")
    assert (await communicator.connect())[0]
    await communicator.send_to(json.dumps(["REQ", "s", {}]))
    assert await recv(communicator) == ["EVENT", "s", event.to_dict()]
    assert await recv(communicator) == ["EOSE", "s"]
    await communicator.disconnect()


async def test_events_materialized_later_arrive_live(offline):
    key = hex_key()
    await database_sync_to_async(register)(key, [])
    await database_sync_to_async(mirror)(key, [signed("first", 100)])
    communicator = WebsocketCommunicator(application, f"/{key}")
    await communicator.connect()
    await communicator.send_to(json.dumps(["REQ", "s", {"kinds": [1]}]))
    assert (await recv(communicator))[0] == "EVENT"
    assert await recv(communicator) == ["EOSE", "s"]
    later = signed("synced later", 150)
    await database_sync_to_async(ingest)(key, [later])
    assert await recv(communicator) == ["EVENT", "s", later.to_dict()]
    assert await communicator.receive_nothing(timeout=0.3)  # nothing twice
    await communicator.disconnect()


async def offline_reader_and_writer(
    monkeypatch, appended: list
) -> tuple[str, WebsocketCommunicator, WebsocketCommunicator]:
    """A peerless, mirrored relay whose lease writer accepts every event (recorded in ``appended``), and two
    sockets of it."""
    key = hex_key()
    await database_sync_to_async(register)(key, [])
    await database_sync_to_async(mirror)(key, [])

    async def accept(self, relay_key, event):
        appended.append((relay_key, event.id))
        return "accepted"

    monkeypatch.setattr(LeaseWriter, "append", accept)
    reader = WebsocketCommunicator(application, f"/{key}")
    writer = WebsocketCommunicator(application, f"/{key}")
    await reader.connect()
    await writer.connect()
    return key, reader, writer


async def test_leased_write_is_acknowledged_and_fanned_out(offline, monkeypatch):
    appended: list = []
    key, reader, writer = await offline_reader_and_writer(monkeypatch, appended)
    await reader.send_to(json.dumps(["REQ", "live", {"authors": [KEY.public_key_xonly.format().hex()]}]))
    assert await recv(reader) == ["EOSE", "live"]
    event = signed("written under a lease", 500)
    await writer.send_to(json.dumps(["EVENT", event.to_dict()]))
    assert await recv(writer) == ["OK", event.id, True, ""]
    assert appended == [(key, event.id)]
    assert await recv(reader) == ["EVENT", "live", event.to_dict()]
    assert await reader.receive_nothing(timeout=0.3)  # offered live and found in the replica: delivered once
    # Materialized at once: a new connection's REQ is answered with it.
    late = WebsocketCommunicator(application, f"/{key}")
    await late.connect()
    await late.send_to(json.dumps(["REQ", "s", {"ids": [event.id]}]))
    assert await recv(late) == ["EVENT", "s", event.to_dict()]
    assert await recv(late) == ["EOSE", "s"]
    for communicator in (reader, writer, late):
        await communicator.disconnect()


async def test_a_leased_write_reaches_live_subscribers_at_once_not_at_their_next_poll(offline, monkeypatch, settings):
    """The replica is polled once a minute here: only the live fan-out can bring the event within seconds."""
    settings.HYPERTUNA_POLL_INTERVAL_MS = 60_000
    _, reader, writer = await offline_reader_and_writer(monkeypatch, [])
    await reader.send_to(json.dumps(["REQ", "live", {"kinds": [1]}]))
    await writer.send_to(json.dumps(["REQ", "own", {"kinds": [1]}]))
    assert await recv(reader) == ["EOSE", "live"]
    assert await recv(writer) == ["EOSE", "own"]
    event = signed("written under a lease", 600)
    await writer.send_to(json.dumps(["EVENT", event.to_dict()]))
    # The writer's own subscription gets it too, as a relay would send it.
    assert sorted(map(str, [await recv(writer), await recv(writer)])) == sorted(
        map(str, [["OK", event.id, True, ""], ["EVENT", "own", event.to_dict()]])
    )
    assert await recv(reader) == ["EVENT", "live", event.to_dict()]
    # A duplicate is acknowledged but not delivered again.
    monkeypatch.setattr(LeaseWriter, "append", lambda self, relay_key, event: _returns("duplicate"))
    await writer.send_to(json.dumps(["EVENT", event.to_dict()]))
    assert (await recv(writer))[:3] == ["OK", event.id, True]
    assert await reader.receive_nothing(timeout=0.5) and await writer.receive_nothing(timeout=0.2)
    for communicator in (reader, writer):
        await communicator.disconnect()


async def _returns(value):
    return value


class FakeVault:
    def __init__(self):
        self.secret = bytearray(b"\x07" * 64)
        self.callbacks = []
        self.lease_id = "lease-1"

    def get(self, relay_key):
        return SimpleNamespace(lease_id=self.lease_id)

    def on_release(self, callback):
        self.callbacks.append(callback)

    class _Borrow:
        def __init__(self, vault):
            self.vault = vault

        def __enter__(self):
            return memoryview(self.vault.secret).toreadonly()

        def __exit__(self, *exc):
            return False

    def writer_secret(self, relay_key):
        return self._Borrow(self)


class FakeCoordinator:
    """The coordinator's interface to the leased writer, holding a lease (a grant is ``grant()``)."""

    enabled = True
    answer_within = 0.3

    def __init__(self):
        self.vault = FakeVault()
        self.fence = 3
        self.expires_at = 1_900_000_000
        self.grant_listeners = []
        self.renew_predicate = None

    def handle(self, relay_key):
        from escrow.coordinator import LeaseHandle

        return LeaseHandle(relay_key, self.vault.lease_id, self.fence, self.expires_at, "ab" * 32)

    async def ensure_write_lease(self, relay_key, healthy_peers=0):
        return self.handle(relay_key)

    def pending(self, relay_key):
        from escrow.coordinator import LeasePending

        return LeasePending(relay_key, retry_after=7)

    def on_grant(self, callback):
        self.grant_listeners.append(callback)

    def renew_while(self, predicate):
        self.renew_predicate = predicate

    def grant(self, relay_key):
        for callback in self.grant_listeners:
            callback(self.handle(relay_key))


class FakeBridge:
    def __init__(self, fail_append=None, duplicate=False, fail_open=None, open_delay=0.0, append_delay=0.0):
        self.calls = []
        self.fail_append = fail_append
        self.fail_open = fail_open
        self.duplicate = duplicate
        self.open_delay = open_delay
        self.append_delay = append_delay

    async def call(self, method, params=None, *, timeout_s=None):
        self.calls.append((method, dict(params or {})))
        if method == "lease.open":
            await asyncio.sleep(self.open_delay)
            if self.fail_open:
                raise BridgeError(self.fail_open, "refused")
        if method == "lease.append":
            await asyncio.sleep(self.append_delay)
        if method == "lease.append" and self.fail_append:
            raise BridgeError(self.fail_append, "refused")
        if method == "lease.append":
            return {"appended": not self.duplicate, "duplicate": self.duplicate}
        return {}


async def test_lease_writer_opens_once_appends_with_the_fence_and_closes_on_release(monkeypatch):
    coordinator = FakeCoordinator()
    monkeypatch.setattr("escrow.coordinator.get_coordinator", lambda: coordinator)
    bridge = FakeBridge()
    writer = LeaseWriter(bridge)
    assert await writer.append("r" * 64, EV["e1"]) == "accepted"
    assert await writer.append("r" * 64, EV["e2"]) == "accepted"
    methods = [m for m, _ in bridge.calls]
    assert methods == ["lease.open", "lease.append", "lease.append"]
    opened = bridge.calls[0][1]
    assert opened["writerSecretKey"] == base64.b64encode(b"\x07" * 64).decode()
    assert opened["fencing"] == 3 and opened["leaseId"] == "lease-1"
    assert [p["fencing"] for m, p in bridge.calls if m == "lease.append"] == [3, 3]
    # A renewed lease with a new fence is opened again.
    coordinator.fence = 4
    assert await writer.append("r" * 64, EV["e3"]) == "accepted"
    assert [m for m, _ in bridge.calls][-2:] == ["lease.open", "lease.append"]
    # The vault releasing the lease makes the bridge drop its copy of the key.
    coordinator.vault.callbacks[0]("r" * 64, "lease-1", "revoked")
    await asyncio.sleep(0.05)
    assert bridge.calls[-1] == ("lease.close", {"leaseId": "lease-1", "reason": "revoked"})


async def test_lease_writer_reports_refusals(monkeypatch):
    coordinator = FakeCoordinator()
    monkeypatch.setattr("escrow.coordinator.get_coordinator", lambda: coordinator)
    assert await LeaseWriter(FakeBridge(fail_append="stale-fencing")).append("r" * 64, EV["x"]) == "error"

    class Refusing(FakeCoordinator):
        async def ensure_write_lease(self, relay_key, healthy_peers=0):
            return None

    monkeypatch.setattr("escrow.coordinator.get_coordinator", lambda: Refusing())
    assert await LeaseWriter(FakeBridge()).append("r" * 64, EV["x"]) == "readonly"


async def test_a_renewed_lease_reaches_the_bridge_before_its_old_expiry(monkeypatch):
    """The escrow extended the lease: the bridge must hold the new expiry too, or it closes the lease at the old
    one ("expired") while the gateway still believes it may write."""
    coordinator = FakeCoordinator()
    monkeypatch.setattr("escrow.coordinator.get_coordinator", lambda: coordinator)
    bridge = FakeBridge()
    writer = LeaseWriter(bridge)
    assert await writer.append("r" * 64, EV["e1"]) == "accepted"
    coordinator.expires_at += 300  # renewed at the escrow, same lease and fence
    assert await writer.append("r" * 64, EV["e2"]) == "accepted"
    opens = [p for m, p in bridge.calls if m == "lease.open"]
    assert [(p["leaseId"], p["fencing"], p["expiresAt"]) for p in opens] == [
        ("lease-1", 3, 1_900_000_000_000),
        ("lease-1", 3, 1_900_000_300_000),
    ]
    assert await writer.append("r" * 64, EV["e3"]) == "accepted"
    assert len([m for m, _ in bridge.calls if m == "lease.open"]) == 2  # nothing new: no new open


async def test_a_duplicate_under_a_lease_says_so(monkeypatch):
    coordinator = FakeCoordinator()
    monkeypatch.setattr("escrow.coordinator.get_coordinator", lambda: coordinator)
    assert await LeaseWriter(FakeBridge(duplicate=True)).append("r" * 64, EV["x"]) == "duplicate"


async def test_a_write_while_the_lease_is_being_requested_is_answered_retry_at_once(monkeypatch):
    from escrow.coordinator import LeasePending

    class Asking(FakeCoordinator):
        async def ensure_write_lease(self, relay_key, healthy_peers=0):
            raise LeasePending(relay_key, retry_after=2)

    monkeypatch.setattr("escrow.coordinator.get_coordinator", lambda: Asking())
    with pytest.raises(LeasePending) as pending:
        await LeaseWriter(FakeBridge()).append("r" * 64, EV["x"])
    assert pending.value.retry_after == 2
