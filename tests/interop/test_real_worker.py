"""The published worker runtime behind the real gateway, scenario by scenario.

The tests of this module share one stack and one mirrored worker (``alpha``) and run in file order: the
worker registers and serves clients (1), mirrors into the blind peer and stays alive (2), stops while the
replica answers (3), comes back (4), and finally has its tokens and registration managed through the
runtime's own registrar (5).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from datetime import timedelta

import pytest
import websockets
from coincurve import PrivateKey

from hypertuna.nostr import Event, Filter, apply_query, sign_event
from tests.interop.conftest import OPERATOR

OWNER = PrivateKey()
OWNER_HEX = OWNER.public_key_xonly.format().hex()


async def _recv(ws, timeout: float = 20.0):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def _req(ws, sub: str, *filters: dict, timeout: float = 20.0, others: list | None = None) -> list[dict]:
    """One REQ to EOSE; the events in arrival order. Live events of the socket's other subscriptions go to
    ``others`` when given; any other frame fails."""
    await ws.send(json.dumps(["REQ", sub, *filters]))
    events = []
    while True:
        frame = await _recv(ws, timeout)
        if frame == ["EOSE", sub]:
            return events
        if others is not None and frame[0] == "EVENT" and frame[1] != sub:
            others.append(frame)
            continue
        assert frame[0] == "EVENT" and frame[1] == sub, f"unexpected frame {frame}"
        events.append(frame[2])


def _signed(content: str, *, kind: int = 1, created_at: int | None = None, tags=None) -> Event:
    return sign_event(OWNER.secret, kind=kind, content=content, tags=tags or [["t", "interop"]], created_at=created_at)


@pytest.fixture(scope="module")
def alpha(stack, workers):
    worker = workers("alpha", owner_secret=OWNER.secret.hex(), register_as="hex", mirror=True)
    worker.start()
    return worker


@pytest.fixture(scope="module")
def token(alpha) -> str:
    return alpha.command("issue-token", pubkey=OWNER_HEX)["token"]


@pytest.fixture(scope="module")
def published(alpha) -> list[Event]:
    """Every event the tests publish to alpha, in order."""
    return []


@pytest.fixture(scope="module")
def had(alpha) -> list[Event]:
    """Every event the worker held when it stopped (scenario 3)."""
    return []


def _urls(stack, ready: dict, token: str) -> dict[str, str]:
    return {
        "path": f"{stack.ws_url}/{ready['gatewayPath']}?token={token}",
        "colon": f"{stack.ws_url}/{ready['publicIdentifier']}?token={token}",
        "hex": f"{stack.ws_url}/{ready['relayKey']}?token={token}",
    }


# --- 1. register, token, publish / read back / live ------------------------------------------------


def test_1_registered_by_hex_key_a_real_client_publishes_reads_back_and_gets_live_events(
    stack, alpha, token, published
):
    from nostr_sdk import Client, EventBuilder, Keys, Kind, RelayUrl, ReqTarget, Tag
    from nostr_sdk import Filter as SdkFilter

    urls = _urls(stack, alpha.ready, token)

    async def publish_and_read(url: str, content: str) -> str:
        keys = Keys.parse(OWNER.secret.hex())
        client = Client()
        relay = RelayUrl.parse(url)
        await client.add_relay(relay)
        await client.connect()
        event = EventBuilder(Kind(1), content).tags([Tag.parse(["t", "interop"])]).finalize(keys)
        output = await client.send_event(event)
        assert output.success == [relay], output.failed
        found = await client.fetch_events(ReqTarget.single(relay, [SdkFilter().id(event.id())]), timedelta(seconds=15))
        assert [e.id().to_hex() for e in found] == [event.id().to_hex()]
        await client.shutdown()
        published.append(Event.from_json(json.loads(event.as_json())))
        return event.id().to_hex()

    for form, url in urls.items():
        asyncio.run(publish_and_read(url, f"through the {form} path"))

    async def live():
        async with websockets.connect(urls["path"]) as reader, websockets.connect(urls["hex"]) as writer:
            assert await _req(reader, "live", {"kinds": [1], "since": int(time.time()) + 1}) == []
            event = _signed("live through the gateway", created_at=int(time.time()) + 2)
            await writer.send(json.dumps(["EVENT", event.to_dict()]))
            assert await _recv(writer) == ["OK", event.id, True, ""]
            while True:
                frame = await _recv(reader)
                if frame[0] == "EVENT":
                    assert frame[1] == "live" and frame[2]["id"] == event.id
                    break
                assert frame[0] != "EOSE", "a second EOSE"
            published.append(event)

    asyncio.run(live())


def test_1_events_up_to_the_frame_limit_are_accepted_and_read_back(stack, alpha, token, published):
    """Large EVENTs (the gateway's frame limit is ``HYPERTUNA_MAX_FRAME_BYTES``, 128 KiB by default) cross the
    gateway, the bridge and the worker protocol to the runtime and back, with the worker marked healthy."""
    limit = 131072
    base = len(json.dumps(["EVENT", _signed("").to_dict()], separators=(",", ":")))
    sizes = [36_600, 40_000, 100_000, limit - base - 64]
    urls = _urls(stack, alpha.ready, token)

    async def scenario():
        async with websockets.connect(urls["hex"], max_size=2**21) as ws:
            for size in sizes:
                event = _signed("x" * size)
                frame = json.dumps(["EVENT", event.to_dict()], separators=(",", ":"))
                assert len(frame) <= limit
                await ws.send(frame)
                assert await _recv(ws) == ["OK", event.id, True, ""], size
                back = await _req(ws, f"big{size}", {"ids": [event.id]})
                assert [e["id"] for e in back] == [event.id] and len(back[0]["content"]) == size
                published.append(event)

    asyncio.run(scenario())


def test_1_registered_by_npub_identifier_key(stack, workers):
    """A worker that registers its relay under ``npub…:name`` (not hex) is reachable the same way. (Its own
    owner: the runtime derives its swarm identity from the owner's key, one worker process per user.)"""
    owner = PrivateKey()
    owner_hex = owner.public_key_xonly.format().hex()
    beta = workers("beta", owner_secret=owner.secret.hex(), register_as="identifier", mirror=False)
    ready = beta.start()
    registered = beta.proc.wait_event("HYPERTUNA_INTEROP_REGISTERED", lambda d: d["success"])
    assert registered["relayKey"] == ready["publicIdentifier"]
    token = beta.command("issue-token", relayKey=ready["publicIdentifier"], pubkey=owner_hex)["token"]

    async def roundtrip():
        url = f"{stack.ws_url}/{ready['gatewayPath']}?token={token}"
        async with websockets.connect(url) as ws:
            event = sign_event(owner.secret, kind=1, content="registered by identifier", tags=[])
            await ws.send(json.dumps(["EVENT", event.to_dict()]))
            assert await _recv(ws) == ["OK", event.id, True, ""]
            assert [e["id"] for e in await _req(ws, "back", {"ids": [event.id]})] == [event.id]

    asyncio.run(roundtrip())
    beta.stop()


# --- 2. mirrors into the blind peer, stays alive, replica catches up -------------------------------


def _replica_row(stack, relay_key: str) -> dict | None:
    rows = stack.operator_get("/api/blind-peer/replicas?cores=true", OPERATOR)["replicas"]
    return next((r for r in rows if r["relayKey"] == relay_key), None)


def _wait_replica(stack, relay_key: str, events: int, worker=None) -> dict:
    """Wait until the relay's replica is ready, without lag, and holds at least ``events`` events."""
    deadline = time.monotonic() + 120
    row = None
    while time.monotonic() < deadline:
        if worker is not None:
            assert worker.proc.process.poll() is None, f"the worker died; see {worker.log_path()}"
        row = _replica_row(stack, relay_key)
        if row and row["state"] == "ready" and row["lagEntries"] == 0 and row["events"] >= events:
            return row
        time.sleep(0.5)
    pytest.fail(f"replica never caught up: {row}\n{stack.log_tail()}")


def test_2_worker_mirrors_stays_alive_and_its_replica_catches_up(stack, alpha, published):
    row = _wait_replica(stack, alpha.ready["relayKey"], len(published), worker=alpha)

    types = {core["type"] for core in row["cores"]}
    assert {"autobase-view", "autobase-system"} <= types, row["cores"]
    assert "unknown" not in types, row["cores"]
    assert row["viewCoreKey"] in {c["coreKey"] for c in row["cores"] if c["type"] == "autobase-view"}
    # Still alive after the mirror (a refused add-core would have killed it through an unhandled rejection).
    assert alpha.proc.process.poll() is None


# --- 3. the worker stops: the replica answers ------------------------------------------------------


def test_3_worker_stops_and_the_replica_answers_exactly_what_the_worker_had(stack, alpha, token, published, had):
    urls = _urls(stack, alpha.ready, token)
    filters_cases = [
        [{}],
        [{"kinds": [1], "limit": 2}],
        [{"authors": [OWNER_HEX], "#t": ["interop"]}],
        [{"ids": [published[0].id, published[-1].id]}],
    ]

    async def scenario():
        async with websockets.connect(urls["path"]) as ws:
            # The socket is served by the worker first; what it answers is what the worker had (the runtime
            # also stores its own relay bootstrap events).
            online = await _req(ws, "before", {"since": 0})
            assert {e["id"] for e in online} >= {e.id for e in published}
            had.extend(Event.from_json(e) for e in online)
            # The mirror must hold all of it before the worker goes (a worker stopping mid-sync is another
            # story: lag is reported, not hidden).
            await asyncio.to_thread(_wait_replica, stack, alpha.ready["relayKey"], len(had))
            alpha.stop()
            stopped_at = time.monotonic()
            first = await _req(ws, "after", {"limit": 1})
            assert time.monotonic() - stopped_at <= 2.0, "first replica answer later than 2 s"
            assert [e["id"] for e in first] == [e.id for e in apply_query(had, [Filter.from_json({"limit": 1})])]
            for n, raw in enumerate(filters_cases):
                got = [e["id"] for e in await _req(ws, f"s{n}", *raw)]
                expected = [e.id for e in apply_query(had, [Filter.from_json(f) for f in raw])]
                assert got == expected, raw

    asyncio.run(scenario())


# --- 4. the worker restarts: served by it again, nothing lost or duplicated -------------------------


def test_4_worker_restarts_and_serves_the_same_socket_again_with_nothing_lost_or_duplicated(
    stack, alpha, token, published, had
):
    urls = _urls(stack, alpha.ready, token)

    async def scenario():
        async with websockets.connect(urls["path"]) as ws:
            # Opened while the worker is away: the replica serves it, and a live subscription stays open.
            horizon = int(time.time()) + 30  # later than anything published so far
            assert await _req(ws, "live", {"kinds": [1], "since": horizon}) == []
            ready = await asyncio.to_thread(alpha.start)
            assert ready["relayKey"] == alpha.runs[0].markers["HYPERTUNA_INTEROP_READY"]["relayKey"]
            # Writes need the worker: once the session is back on it, an EVENT is accepted, not refused.
            event = _signed("after the restart", created_at=horizon + 1)
            live: list = []
            deadline = time.monotonic() + 90
            while True:
                await ws.send(json.dumps(["EVENT", event.to_dict()]))
                reply = await _recv(ws)
                # The live subscription may see it first; the replica says why it refuses before its OK.
                while reply[0] in ("EVENT", "NOTICE"):
                    if reply[0] == "EVENT":
                        live.append(reply)
                    reply = await _recv(ws)
                if reply == ["OK", event.id, True, ""]:
                    break
                assert reply[0] == "OK" and reply[2] is False, reply
                assert time.monotonic() < deadline, f"the worker never took writes again: {reply}"
                await asyncio.sleep(1)
            published.append(event)
            got = await _req(ws, "all", {"since": 0}, others=live)
            ids = [e["id"] for e in got]
            assert len(ids) == len(set(ids)), "duplicated events"
            assert {e.id for e in published} <= set(ids), "a client's event was lost"
            # Everything else the worker had is still there, except what its own newer replaceable events
            # superseded: the runtime publishes a fresh kind-0 "Relay initialized" each time it opens a relay.
            newest = {(e["pubkey"], e["kind"]) for e in got if e["kind"] == 0}
            missing = [e for e in had if e.id not in set(ids)]
            assert all(e.kind == 0 and (e.pubkey, 0) in newest for e in missing), missing
            extra = [e for e in got if e["id"] not in {h.id for h in had} | {event.id}]
            assert all(e["kind"] == 0 and e["content"] == "Relay initialized" for e in extra), extra
            # The open subscription, re-opened on the returning worker, got the new event exactly once.
            deadline = time.monotonic() + 10
            while not live and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    live.append(await _recv(ws, 1))
            assert [f[2]["id"] for f in live if f[1] == "live"] == [event.id]

    asyncio.run(scenario())


# --- 5. tokens and registration through the runtime's registrar ------------------------------------


def test_5_token_refresh_revoke_and_unregister_through_the_real_registrar(stack, alpha, token):
    urls = _urls(stack, alpha.ready, token)
    refreshed = alpha.command("refresh-token", token=token)["token"]
    assert refreshed != token

    async def still_served(url: str) -> None:
        async with websockets.connect(url) as ws:
            assert isinstance(await _req(ws, "ok", {"limit": 1}), list)

    asyncio.run(still_served(urls["path"].replace(token, refreshed)))

    async def revoked_while_open():
        async with websockets.connect(urls["path"].replace(token, refreshed)) as ws:
            await _req(ws, "open", {"limit": 1})
            alpha.command("revoke-token", pubkey=OWNER_HEX)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    await _recv(ws)
            assert closed.value.rcvd.code == 4403

    asyncio.run(revoked_while_open())

    assert alpha.command("unregister") == {"unregistered": True}
    # An unregistered relay gets no tokens until its worker registers again.
    with pytest.raises(RuntimeError, match="issue|40"):
        alpha.command("issue-token", pubkey=OWNER_HEX)
