"""BridgeClient against an in-process fake of the bridge RPC server."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from hypertuna.bridge import (
    BridgeClient,
    BridgeError,
    BridgeEvent,
    BridgeTimeout,
    BridgeUnavailable,
    probe,
)

from .fake_bridge import FakeBridge

pytestmark = pytest.mark.asyncio


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # Unix socket paths are limited to ~107 bytes, so keep them short rather than under tmp_path.
    d = Path(tempfile.mkdtemp(prefix="htb-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
async def fake(sock_dir: Path) -> AsyncIterator[FakeBridge]:
    server = FakeBridge(str(sock_dir / "b.sock"))
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def client(fake: FakeBridge) -> AsyncIterator[BridgeClient]:
    c = BridgeClient(socket_path=fake.path, call_timeout=5, backoff_initial=0.05, backoff_max=0.2)
    await c.connect()
    yield c
    await c.close()


async def test_hello_negotiates_version_and_calls_carry_distinct_ids(client: BridgeClient, fake: FakeBridge) -> None:
    assert client.server_info["protocol"] == 1
    assert fake.hellos[0]["versions"] == [1]
    assert await client.call("echo", {"a": 1}) == {"echo": {"a": 1}}
    ids = [r["id"] for r in fake.requests]
    assert len(ids) == len(set(ids))


async def test_concurrent_calls_resolve_by_id_even_out_of_order(client: BridgeClient) -> None:
    slow = asyncio.create_task(client.call("delay", {"ms": 200, "tag": "slow"}))
    fast = asyncio.create_task(client.call("delay", {"ms": 10, "tag": "fast"}))
    done, _ = await asyncio.wait({slow, fast}, return_when=asyncio.FIRST_COMPLETED)
    assert done == {fast}
    assert (await fast)["tag"] == "fast"
    assert (await slow)["tag"] == "slow"


async def test_error_replies_raise_bridge_error_with_code(client: BridgeClient) -> None:
    with pytest.raises(BridgeError) as info:
        await client.call("fail", {"code": "peer-timeout"})
    assert info.value.code == "peer-timeout"
    assert info.value.message == "worker gone"
    with pytest.raises(BridgeError) as unknown:
        await client.call("no.such.method")
    assert unknown.value.code == "unknown-method"


async def test_timeout_raises_and_a_late_answer_is_ignored(client: BridgeClient) -> None:
    with pytest.raises(BridgeTimeout):
        await client.call("never", {"late_ms": 300}, timeout_s=0.1)
    await asyncio.sleep(0.4)
    assert await client.call("echo", {"after": True}) == {"echo": {"after": True}}


async def test_unreachable_bridge_raises_unavailable(sock_dir: Path) -> None:
    c = BridgeClient(socket_path=str(sock_dir / "missing.sock"), reconnect=False, connect_timeout=0.5)
    with pytest.raises(BridgeUnavailable):
        await c.connect()
    with pytest.raises(BridgeUnavailable):
        await c.call("ping")
    assert await c.is_ready(timeout_s=0.3) is False
    await c.close()


async def test_wrong_secret_is_refused(sock_dir: Path) -> None:
    server = FakeBridge(str(sock_dir / "s.sock"), secret="right")
    await server.start()
    try:
        bad = BridgeClient(socket_path=server.path, secret="wrong", reconnect=False)
        with pytest.raises(BridgeError) as info:
            await bad.connect()
        assert info.value.code == "unauthenticated"
        good = BridgeClient(socket_path=server.path, secret="right", reconnect=False)
        await good.connect()
        assert await good.call("echo", {}) == {"echo": {}}
        await good.close()
    finally:
        await server.stop()


async def test_lost_connection_fails_pending_calls_then_reconnects_with_subscriptions(
    client: BridgeClient, fake: FakeBridge
) -> None:
    events = client.events("peer.*")
    await asyncio.sleep(0.05)
    pending = asyncio.create_task(client.call("never", {}, timeout_s=5))
    await asyncio.sleep(0.05)
    await fake.drop_connections()
    with pytest.raises(BridgeUnavailable):
        await pending
    first = await events.get(timeout_s=2)
    assert first.name == "bridge.disconnected"
    second = await events.get(timeout_s=3)
    assert second.name == "bridge.reconnected"
    assert "peer.*" in fake.hellos[-1]["subscribe"], "the new hello renews subscriptions"
    assert await client.call("echo", {"x": 2}) == {"echo": {"x": 2}}
    await fake.push("peer.connected", {"peerKey": "k"})
    ev = await events.get(timeout_s=2)
    assert ev == BridgeEvent("peer.connected", {"peerKey": "k"}, 1, 0)
    events.close()


async def test_a_connection_made_by_a_caller_after_a_loss_is_announced(fake: FakeBridge) -> None:
    """No reconnect loop (or one that has ended): the caller that connects again still tells subscribers,
    who would otherwise wait for a reconnection that already happened."""
    client = BridgeClient(socket_path=fake.path, call_timeout=5, reconnect=False)
    await client.connect()
    events = client.events("peer.*")
    try:
        await fake.drop_connections()
        assert (await events.get(timeout_s=2)).name == "bridge.disconnected"
        await client.wait_connected(2)
        assert (await events.get(timeout_s=2)).name == "bridge.reconnected"
        await client.connect()  # already connected: nothing more to announce
        with pytest.raises(BridgeTimeout):
            await events.get(timeout_s=0.2)
    finally:
        events.close()
        await client.close()


async def test_the_reconnect_loop_outlives_an_unexpected_failure(
    client: BridgeClient, fake: FakeBridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = client.events("peer.*")
    real_open, failures = client._open, [RuntimeError("a bug in the handshake")]

    async def open_once_broken() -> Any:
        if failures:
            raise failures.pop()
        return await real_open()

    monkeypatch.setattr(client, "_open", open_once_broken)
    await fake.drop_connections()
    assert (await events.get(timeout_s=2)).name == "bridge.disconnected"
    assert (await events.get(timeout_s=3)).name == "bridge.reconnected"
    assert not failures and client.connected
    assert await client.call("echo", {"x": 1}) == {"echo": {"x": 1}}
    events.close()


async def test_the_reconnect_loop_ends_when_cancelled_as_a_connect_attempt_fails(
    sock_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cancel arrives in the same turn as the refused connection. Python 3.11's ``asyncio.wait_for``
    returned the inner failure instead and lost the cancel, so the loop kept retrying for ever (an event
    loop could not be closed: a test run hung at teardown)."""
    client = BridgeClient(socket_path=str(sock_dir / "none.sock"), backoff_initial=0.05, backoff_max=0.1)
    attempts: list[int] = []

    async def refused_while_cancelled(*args: Any, **kwargs: Any) -> Any:
        attempts.append(1)
        task = client._reconnect_task
        assert task is not None
        asyncio.get_running_loop().call_soon(task.cancel)  # runs before the failure below reaches the loop
        raise ConnectionRefusedError("nobody listens")

    monkeypatch.setattr(asyncio, "open_unix_connection", refused_while_cancelled)
    client._reconnect_task = asyncio.create_task(client._reconnect_loop())
    done, _ = await asyncio.wait({client._reconnect_task}, timeout=2)
    assert done and client._reconnect_task.cancelled()
    assert attempts == [1]
    await client.close()


async def test_events_are_filtered_by_topic_and_callbacks_fire(client: BridgeClient, fake: FakeBridge) -> None:
    seen: list[str] = []
    remove = client.on_event(lambda e: seen.append(e.name), "peer.health")
    sub = client.events("peer.register")
    await asyncio.sleep(0.1)
    await fake.push("peer.health", {"ok": True})
    await fake.push("peer.register", {"registerId": "r1"})
    ev = await sub.get(timeout_s=2)
    assert ev.name == "peer.register"
    assert ev.data["registerId"] == "r1"
    await asyncio.sleep(0.05)
    assert seen == ["peer.health"]
    remove()
    await fake.push("peer.health", {"ok": True})
    await asyncio.sleep(0.05)
    assert seen == ["peer.health"]
    sub.close()


async def test_slow_subscriber_overflow_is_reported(client: BridgeClient, fake: FakeBridge) -> None:
    sub = client.events("peer.telemetry", maxsize=2)
    await asyncio.sleep(0.1)
    for i in range(5):
        await fake.push("peer.telemetry", {"i": i}, seq=i)
    await asyncio.sleep(0.1)
    dropped = await sub.get(timeout_s=1)
    assert dropped.name == "events.dropped"
    assert dropped.data == {"count": 3}
    assert [(await sub.get(timeout_s=1)).data["i"] for _ in range(2)] == [3, 4]
    sub.close()


async def test_stream_flow_control_bounds_chunks_in_flight(client: BridgeClient, fake: FakeBridge) -> None:
    chunks: list[bytes] = []
    async with client.stream("blob", {"count": 20}, window=3) as s:
        assert s.head == {"count": 20}
        async for chunk in s:
            await asyncio.sleep(0.005)
            chunks.append(chunk)
    assert len(chunks) == 20
    assert chunks[5] == bytes([5]) * 100
    assert s.result == {"done": True, "chunks": 20}
    assert 1 <= fake.max_outstanding <= 3


async def test_leaving_a_stream_early_cancels_it(client: BridgeClient, fake: FakeBridge) -> None:
    async with client.stream("blob", {"count": 1000}, window=2) as s:
        async for _chunk in s:
            break
    await asyncio.sleep(0.1)
    assert fake.conns[0].cancelled
    assert await client.call("echo", {}) == {"echo": {}}


async def test_peer_request_decodes_the_body(client: BridgeClient) -> None:
    res = await client.peer_request("ab" * 32, "POST", "/post/relay/x", body={"message": "[]", "connectionKey": "aa"})
    assert res.status_code == 200
    assert res.json() == {"method": "POST", "path": "/post/relay/x", "body": {"message": "[]", "connectionKey": "aa"}}


async def test_ping_and_is_ready(client: BridgeClient) -> None:
    assert await client.ping() >= 0
    assert await client.is_ready() is True


async def test_sync_probe_for_the_ready_endpoint(fake: FakeBridge, sock_dir: Path) -> None:
    ok, detail = await asyncio.to_thread(probe, socket_path=fake.path, timeout=2)
    assert ok, detail
    assert detail.startswith("ping ")
    bad_ok, bad_detail = await asyncio.to_thread(probe, socket_path=str(sock_dir / "none.sock"), timeout=0.5)
    assert bad_ok is False
    assert bad_detail.startswith("unreachable")


async def test_from_env_uses_the_bridge_variables() -> None:
    c = BridgeClient.from_env({"HYPERTUNA_BRIDGE_SOCKET": "/run/x.sock", "HYPERTUNA_BRIDGE_SECRET": "s"})
    assert c.socket_path == "/run/x.sock"
    assert c.secret == "s"
    t = BridgeClient.from_env({"HYPERTUNA_BRIDGE_SOCKET": "off", "HYPERTUNA_BRIDGE_TCP": "127.0.0.1:7411"})
    assert t.tcp == ("127.0.0.1", 7411)
    assert t.socket_path is None
    d = BridgeClient.from_env({})
    assert d.socket_path is not None
    assert d.socket_path.endswith("/var/bridge.sock")
    with pytest.raises(ValueError):
        BridgeClient.from_env({"HYPERTUNA_BRIDGE_SOCKET": "off"})


async def test_a_stream_that_fails_before_its_head_raises_the_error(client: BridgeClient) -> None:
    with pytest.raises(BridgeError) as info:
        async with client.stream("fail", {"code": "peer-unavailable"}):
            pass
    assert info.value.code == "peer-unavailable"


async def test_calls_beyond_the_bridge_in_flight_limit_wait_for_a_slot(fake: FakeBridge) -> None:
    fake.max_in_flight = 2
    c = BridgeClient(socket_path=fake.path, call_timeout=5)
    await c.connect()
    try:
        results = await asyncio.gather(*[c.call("delay", {"ms": 50, "tag": str(i)}) for i in range(6)])
        assert [r["tag"] for r in results] == [str(i) for i in range(6)]
        assert fake.delay_peak == 2
        # A call that timed out keeps its slot until the bridge answers, then frees it.
        with pytest.raises(BridgeTimeout):
            await c.call("never", {"late_ms": 200}, timeout_s=0.05)
        assert (await c.call("delay", {"ms": 1, "tag": "after"}))["tag"] == "after"
    finally:
        await c.close()
