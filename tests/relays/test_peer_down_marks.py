"""A worker whose connection this node's bridge saw close is not tried by new sockets of a replicated relay
(the registry's cached snapshot may still list it as healthy for a while), until the bridge sees it again or
the mark ages out."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from hypertuna.asgi import application
from relays import consumers
from relays import runtime as runtime_module
from relays.consumers import RelayConsumer
from relays.runtime import Runtime
from tests.conftest import hex_key
from tests.relays.test_fallback import mirror, recv, register, signed
from tests.relays.test_peer_changes import HangingTransport, HangingWorker

A, B = "aa" * 32, "bb" * 32


def test_a_closed_connection_marks_the_peer_down_until_it_connects_again(monkeypatch):
    now = [1_000.0]
    monkeypatch.setattr(runtime_module.time, "monotonic", lambda: now[0])
    rt = Runtime()
    rt.peer_changed("peer.disconnected", {"peerKey": A, "reason": "error"})
    assert rt.peer_down(A) and not rt.peer_down(B)
    rt.peer_changed("peer.connected", {"peerKey": A})
    assert not rt.peer_down(A)


def test_a_benign_close_is_no_mark_and_a_mark_ages_out(monkeypatch, settings):
    settings.HYPERTUNA_PEER_DOWN_MARK_SECONDS = 45
    now = [1_000.0]
    monkeypatch.setattr(runtime_module.time, "monotonic", lambda: now[0])
    rt = Runtime()
    rt.peer_changed("peer.disconnected", {"peerKey": A, "reason": next(iter(runtime_module.BENIGN_CLOSES))})
    assert not rt.peer_down(A)
    rt.peer_changed("peer.disconnected", {"peerKey": A, "reason": "error"})
    now[0] += 44
    assert rt.peer_down(A)
    now[0] += 2
    assert not rt.peer_down(A) and A not in rt.down_peers


@pytest.mark.django_db
async def test_the_peers_a_replica_session_reloads_leave_out_the_ones_seen_down(monkeypatch):
    snapshot = SimpleNamespace(peers=(A, B))
    monkeypatch.setattr(consumers.selectors, "live_relay", lambda key: snapshot)
    rt = consumers.runtime()
    monkeypatch.setattr(rt, "down_peers", {})
    assert await consumers.healthy_peers("rk") == [A, B]
    rt.peer_changed("peer.disconnected", {"peerKey": A, "reason": "error"})
    assert await consumers.healthy_peers("rk") == [B]


@pytest.mark.django_db(transaction=True)
async def test_a_new_socket_of_a_replicated_relay_skips_a_worker_seen_gone(monkeypatch, settings):
    """The registry still lists the worker (cached), but this node's bridge saw its connection close: the
    first REQ is answered from the replica at once, not after the worker's request timeout."""
    settings.HYPERTUNA_PEER_REQUEST_TIMEOUT = 30
    peer = "cd" * 32
    dead = HangingWorker()
    dead.hanging = True
    monkeypatch.setattr(RelayConsumer, "transport_factory", staticmethod(lambda: HangingTransport({peer: dead})))
    monkeypatch.setattr(Runtime, "ensure_started", lambda self: None)
    key = hex_key()
    kept = signed("kept while the worker is away", 100)
    await database_sync_to_async(register)(key, [peer])
    await database_sync_to_async(mirror)(key, [kept])
    rt = consumers.runtime()
    monkeypatch.setattr(rt, "down_peers", {})
    rt.peer_changed("peer.disconnected", {"peerKey": peer, "reason": "error"})
    communicator = WebsocketCommunicator(application, f"/{key}")
    assert (await communicator.connect())[0]
    await communicator.send_to(json.dumps(["REQ", "s", {}]))
    assert await recv(communicator, timeout=2) == ["EVENT", "s", kept.to_dict()]
    assert await recv(communicator, timeout=2) == ["EOSE", "s"]
    await communicator.disconnect()
