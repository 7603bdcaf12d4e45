"""A relay whose only worker goes away, end to end through real processes: the escrow role (mTLS, own
database), the gateway (uvicorn + coordinator), the bridge (blind peer + leased Autobase writer), Celery
(worker + beat: the replica sync) and a reference worker that deposits its gateway writer and heartbeats.

Worker online → mirror complete → worker stops → reads come from the replica → writes are refused while
its heartbeat is recent, then granted under an escrow lease well after the mirror age limit → the writer
and a second client read each written event at once (REQ and live) → the relay stays offline for more than
three lease TTLs with a write every two seconds, the lease renewed at least three times, no write failing →
the worker returns with every event, nothing twice, its lease revoked, the gateway knowing within 5 s → it
deposits a new writer key → ``escrow_audit verify`` passes and lists each step.

Policy durations are shortened through the environment (heartbeat silence 10 s, mirror age 3 s, lease TTL
10 s, the smallest the settings accept), so "well after the mirror age limit" takes seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import sqlite3
import threading
import time
from collections import Counter
from typing import Any

import pytest
import websockets
from coincurve import PrivateKey

from bench.routing_bench import Direct, LaunchedWorker, _flat
from hypertuna.bridge import BridgeClient, BridgeClientError
from hypertuna.nostr import sign_event
from tests.e2e.harness import Stack, node_available
from tests.e2e.test_escrow import _escrow_flags

# Reads from the replica may wait out one bridge connect timeout (5 s) first; the refusal must come before
# the silence is over.
HEARTBEAT_SILENCE = 10
# The bridge repeats the owner's mirror announcement every second while it is connected (MIRROR_ANNOUNCE_MS),
# so the mirror is observed within ~2 s of the worker's last escrow contact; writes start after more than
# three times this much silence.
MIRROR_MAX_AGE = 3
LEASE_TTL = 10
WRITE_EVERY = 2.0
OPERATOR = ("e2e-ops", "operator-secret-for-offline-flow")


@pytest.fixture(scope="module")
def flow_stack(tmp_path_factory):
    if not node_available():
        pytest.fail("end-to-end tests need Node 20 and `npm ci` in bridge/ (make test installs both)")
    env = {
        "DJANGO_SETTINGS_MODULE": "tests.e2e.fast_beat_settings",  # Celery's beat syncs replicas every second
        "HYPERTUNA_ESCROW_HEARTBEAT_SILENCE": str(HEARTBEAT_SILENCE),
        "HYPERTUNA_ESCROW_MIRROR_MAX_AGE": str(MIRROR_MAX_AGE),
        "HYPERTUNA_ESCROW_LEASE_TTL": str(LEASE_TTL),
        "HYPERTUNA_ESCROW_REQUEST_TTL": str(LEASE_TTL),
        "HYPERTUNA_BRIDGE_MIRROR_ANNOUNCE_MS": "1000",
        "HYPERTUNA_OPERATOR_KEYS": f"{OPERATOR[0]}:{OPERATOR[1]}",
    }
    stack = Stack(tmp_path_factory.mktemp("offline-flow"), escrow=True, celery=True, env=env).start()
    try:
        yield stack
    finally:
        stack.stop()


# --- reading the escrow's own records (its SQLite database) and the gateway's view ---------------------


def audit_rows(stack: Stack, relay_key: str) -> list[tuple[str, str, str, float]]:
    """(action, reason, lease id, unix time) of the relay's audit entries, in chain order."""
    path = stack.escrow_env["ESCROW_DATABASE_URL"].removeprefix("sqlite:///")
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=20)) as conn:
        rows = conn.execute(
            "SELECT action, reason, lease_id, occurred_at FROM escrow_auditentry WHERE relay_key = ? ORDER BY seq",
            (relay_key,),
        ).fetchall()
    return [(action, reason, lease, _unix(at)) for action, reason, lease, at in rows]


def _unix(stored: str) -> float:
    from datetime import UTC, datetime

    moment = datetime.fromisoformat(stored)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def gateway_leases(stack: Stack, relay_key: str) -> list[dict[str, Any]]:
    leases = stack.operator_get("/api/escrow/leases/query", OPERATOR)["leases"]
    return [lease for lease in leases if lease["relayKey"] == relay_key]


class LeaseWatch(threading.Thread):
    """Polls the gateway's lease list (4 times a second) and notes when the relay's lease disappears."""

    def __init__(self, stack: Stack, relay_key: str) -> None:
        super().__init__(daemon=True)
        self.stack, self.relay_key = stack, relay_key
        self.gone_at: float | None = None
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set() and self.gone_at is None:
            with contextlib.suppress(OSError, ValueError):
                if not gateway_leases(self.stack, self.relay_key):
                    self.gone_at = time.time()
            self.stopping.wait(0.25)


def wait_mirror_complete(stack: Stack, relay_key: str, timeout: float = 90) -> None:
    """Wait until the blind peer holds all the worker announced and Celery's beat has materialized it."""
    deadline = time.monotonic() + timeout
    while True:
        rows = stack.operator_get("/api/blind-peer/replicas", OPERATOR)["replicas"]
        row = next((r for r in rows if r["relayKey"] == relay_key), None)
        evidence = (row or {}).get("mirrorEvidence") or {}
        if row and row["state"] == "ready" and row["lagEntries"] == 0 and row["materializedLength"] > 0:
            if evidence and evidence["mirroredLength"] >= evidence["announcedLength"] > 0:
                return
        assert time.monotonic() < deadline, f"mirror never complete: {row}\n{stack.log_tail()}"
        time.sleep(0.5)


# --- a Nostr client's view ------------------------------------------------------------------------------


async def recv(ws: Any, timeout: float = 30.0) -> list[Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def publish(ws: Any, event: Any) -> list[Any]:
    """Send an EVENT and return its OK (NOTICEs before it are skipped)."""
    await ws.send(json.dumps(["EVENT", event.to_dict()]))
    while True:
        frame = await recv(ws)
        if frame[0] == "OK" and frame[1] == event.id:
            return frame


async def query(ws: Any, sub: str, flt: dict[str, Any]) -> list[str] | None:
    """The ids a REQ answers before its EOSE (then CLOSE), or None when it is CLOSED instead."""
    await ws.send(json.dumps(["REQ", sub, flt]))
    ids = []
    while True:
        frame = await recv(ws)
        if frame[:2] == ["EVENT", sub]:
            ids.append(frame[2]["id"])
        elif frame == ["EOSE", sub]:
            await ws.send(json.dumps(["CLOSE", sub]))
            return ids
        elif frame[:2] == ["CLOSED", sub]:
            return None


class LiveReader:
    """A second client holding one open subscription; records every event id it is sent, in order."""

    def __init__(self, ws: Any, sub: str) -> None:
        self.ws, self.sub = ws, sub
        self.ids: list[str] = []
        self.eose = asyncio.Event()
        self._arrived = asyncio.Condition()
        self._task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for text in self.ws:
                frame = json.loads(text)
                async with self._arrived:
                    if frame[:2] == ["EVENT", self.sub]:
                        self.ids.append(frame[2]["id"])
                    elif frame == ["EOSE", self.sub]:
                        self.eose.set()
                    self._arrived.notify_all()

    async def wait_for(self, event_id: str, timeout: float) -> None:
        async with self._arrived:
            await asyncio.wait_for(self._arrived.wait_for(lambda: event_id in self.ids), timeout)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def worker_has(stack: Stack, worker: LaunchedWorker, author: str, expected: set[str], timeout: float) -> list:
    """The worker's own answer (worker protocol through the bridge, no gateway session) for ``author``'s
    events, once it holds every ``expected`` id or the time is up."""
    client = BridgeClient(socket_path=stack.env["HYPERTUNA_BRIDGE_SOCKET"], client_name="offline-flow")
    await client.connect()
    direct = Direct(client, worker)
    deadline, error = time.monotonic() + timeout, None
    try:
        for attempt in range(10_000):
            conn, sub, ids = secrets.token_hex(8), f"direct-{attempt}", []
            try:
                frames = _flat(await direct.post(["REQ", sub, {"authors": [author]}], conn))
                while ["EOSE", sub] not in frames and time.monotonic() < deadline:
                    ids += [f[2]["id"] for f in frames if f[:2] == ["EVENT", sub]]
                    frames = _flat(await direct.poll(conn))
                ids += [f[2]["id"] for f in frames if f[:2] == ["EVENT", sub]]
                if expected <= set(ids) or time.monotonic() >= deadline:
                    return ids
            except (BridgeClientError, RuntimeError) as exc:  # the bridge has no connection to it yet
                error = exc
            assert time.monotonic() < deadline, f"the returned worker never answered: {error}\n{stack.log_tail()}"
            await asyncio.sleep(1)
    finally:
        await client.close()
    raise AssertionError("unreachable")


def test_offline_relay_reads_writes_under_renewed_leases_and_the_worker_takes_over_again(flow_stack, tmp_path):
    stack = flow_stack
    storage, signing = tmp_path / "worker-storage", tmp_path / "worker-signing.hex"
    worker_args = (
        "--blind-peer",
        "gateway",
        "--gateway-writer-out",
        str(tmp_path / "gateway-writer.json"),
        *_escrow_flags(stack, signing),
    )
    worker = stack.start_worker("offline", *worker_args, storage=storage)
    ready = worker.markers["HYPERTUNA_WORKER_READY"]
    relay_key, url = ready["relayKey"], f"{stack.ws_url}/{ready['relayKey']}"
    deposited = worker.wait_marker("HYPERTUNA_WORKER_ESCROW", timeout=60)

    author = PrivateKey()
    author_hex = author.public_key_xonly.format().hex()
    online = sign_event(author.secret, kind=1, content="written while the worker is online", tags=[])

    async def offline_flow() -> None:
        async with websockets.connect(url) as ws:
            assert (await publish(ws, online))[:3] == ["OK", online.id, True]
        wait_mirror_complete(stack, relay_key)

        worker.stop()
        stopped = time.monotonic()
        async with websockets.connect(url) as writer, websockets.connect(url) as reader_ws:
            # Reads come from the replica as soon as the gateway noticed the worker is gone.
            while (answer := await query(writer, "replica", {"ids": [online.id]})) != [online.id]:
                assert time.monotonic() - stopped < 15, (answer, stack.log_tail())
                await asyncio.sleep(0.5)

            # The worker signed a heartbeat moments ago: the escrow refuses to unlock its writer.
            refused = sign_event(author.secret, kind=1, content="refused: the worker may still be alive", tags=[])
            reply = await publish(writer, refused)
            assert reply[2] is False and reply[3].startswith("blocked:"), reply

            reader = LiveReader(reader_ws, "live")
            await reader_ws.send(json.dumps(["REQ", "live", {"authors": [author_hex]}]))
            await asyncio.wait_for(reader.eose.wait(), 30)
            assert reader.ids == [online.id]

            # Once the heartbeat silence is over (over three times the mirror age limit), writes are granted.
            assert HEARTBEAT_SILENCE > 3 * MIRROR_MAX_AGE
            await asyncio.sleep(max(0.0, stopped + HEARTBEAT_SILENCE - time.monotonic()))
            written: list[Any] = []
            first = sign_event(author.secret, kind=1, content="offline write 0", tags=[])
            while (reply := await publish(writer, first))[2] is not True:
                # Only until the first grant: "blocked: … a write lease is being requested; retry".
                assert reply[3].startswith("blocked:"), reply
                assert time.monotonic() - stopped < 40, (reply, audit_rows(stack, relay_key), stack.log_tail())
                await asyncio.sleep(1)
            granted = time.monotonic()
            event, failed = first, []
            while True:
                if reply != ["OK", event.id, True, ""]:
                    failed.append(reply)
                written.append(event)
                # The writer reads its event back at once, and the second client receives it live.
                assert await query(writer, f"back-{len(written)}", {"ids": [event.id]}) == [event.id]
                await reader.wait_for(event.id, timeout=3)
                renewals = [row for row in audit_rows(stack, relay_key) if row[0] == "renew"]
                if time.monotonic() - granted >= 3 * LEASE_TTL and len(renewals) >= 3:
                    break
                assert time.monotonic() - granted < 6 * LEASE_TTL, (renewals, stack.log_tail())
                await asyncio.sleep(WRITE_EVERY)
                event = sign_event(author.secret, kind=1, content=f"offline write {len(written)}", tags=[])
                reply = await publish(writer, event)
            assert not failed, failed

            # One lease the whole time, renewed, never re-granted.
            rows = audit_rows(stack, relay_key)
            grants = [row for row in rows if row[0] == "unlock-granted"]
            assert len(grants) == 1, rows
            lease_id = grants[0][2]
            assert [lease["leaseId"] for lease in gateway_leases(stack, relay_key)] == [lease_id]
            assert {row[2] for row in rows if row[0] == "renew"} == {lease_id}

            # The worker returns on the same storage, just after a renewal: the lease it ends has most of its
            # life left (one that lapsed first would end by expiry, another path).
            renewed = len(renewals)
            while len([row for row in audit_rows(stack, relay_key) if row[0] == "renew"]) == renewed:
                assert time.monotonic() - granted < 8 * LEASE_TTL, (audit_rows(stack, relay_key), stack.log_tail())
                await asyncio.sleep(0.2)
            watch = LeaseWatch(stack, relay_key)
            watch.start()
            try:
                returned = stack.start_worker("offline", *worker_args, storage=storage)
                assert returned.markers["HYPERTUNA_WORKER_READY"]["relayKey"] == relay_key
                rotated = returned.wait_event(
                    "HYPERTUNA_WORKER_ESCROW", lambda d: d["writerPublicKey"] != deposited["writerPublicKey"], 60
                )
                watch.join(timeout=15)
            finally:
                watch.stopping.set()

            # Its escrow contact revoked the lease, and the gateway dropped its copy within 5 s.
            revoked = [row for row in audit_rows(stack, relay_key) if row[0] == "rotation" and row[2] == lease_id]
            assert revoked and revoked[0][1] == "worker-reconnected", audit_rows(stack, relay_key)
            assert watch.gone_at is not None, "the gateway kept the revoked lease"
            assert watch.gone_at - revoked[0][3] <= 5.0, (watch.gone_at, revoked)

            # It has every event, each once, and not the refused one.
            expected = {online.id, *(e.id for e in written)}
            back = LaunchedWorker(returned.markers["HYPERTUNA_WORKER_READY"]["swarmPublicKey"], relay_key, url)
            own = await worker_has(stack, back, author_hex, expected, timeout=60)
            assert set(own) == expected and len(own) == len(expected), (Counter(own), expected)
            # Through the gateway too, and the second client, still subscribed, got nothing twice.
            async with websockets.connect(url) as ws:
                through = await query(ws, "after", {"authors": [author_hex]})
            assert through is not None and sorted(through) == sorted(expected), through
            await asyncio.sleep(2)
            await reader.close()
            assert sorted(reader.ids) == sorted(expected), Counter(reader.ids)

        # A new deposit, with a new writer key, supersedes the released one.
        assert rotated["relayKey"] == relay_key and rotated["workerKey"] == deposited["workerKey"]
        assert rotated["depositId"] != deposited["depositId"]

    asyncio.run(offline_flow())

    # The escrow's audit chain verifies, and lists each step of the flow in order.
    result = stack.manage("escrow_audit", "verify", "--relay", relay_key, env=stack.escrow_env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK:" in result.stdout, result.stdout
    steps = [line.split()[2:4] for line in result.stdout.splitlines() if line.startswith("  #")]
    actions = [action for action, _ in steps]
    assert steps[0] == ["deposit", "[first-deposit]"], result.stdout
    assert "worker-heartbeat-recent" in steps[actions.index("unlock-refused")][1], result.stdout
    granted_at = actions.index("unlock-granted")
    assert actions.count("unlock-granted") == 1 and actions.index("unlock-refused") < granted_at, result.stdout
    renew_steps = [i for i, action in enumerate(actions) if action == "renew"]
    assert len(renew_steps) >= 3 and min(renew_steps) > granted_at, result.stdout
    assert steps[-2:] == [["rotation", "[worker-reconnected]"], ["deposit", "[re-deposit]"]], result.stdout
    assert max(renew_steps) < len(steps) - 2, result.stdout
