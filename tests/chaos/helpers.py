"""Helpers for the chaos suite: private Redis servers, Nostr clients over the stack's WebSocket, signed worker
API calls, replica sync runs and database probes in the stack's own environment.

Every process started here goes through the harness's ``spawn`` (own process group, dies with the run)."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from email.message import Message
from pathlib import Path
from typing import Any

import websockets
from coincurve import PrivateKey

from hypertuna.compat import hmac_hex
from hypertuna.nostr import Event, sign_event
from tests.e2e.harness import ROOT, Proc, Stack, free_port, spawn

OPERATOR = ("chaos-ops", "operator-secret-for-chaos")
OPERATOR_ENV = {"HYPERTUNA_OPERATOR_KEYS": f"{OPERATOR[0]}:{OPERATOR[1]}"}


class PrivateRedis:
    """A ``redis-server`` of the test's own on a fixed port, which the test may kill and start again."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.log_dir = log_dir
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = spawn("redis", argv, cwd=self.log_dir, env={"PATH": "/usr/bin:/bin"}, log_dir=self.log_dir)
        wait_listening(self.port, timeout=10)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.process.kill()
            self.proc.process.wait(timeout=10)
            self.proc.stop()
            self.proc = None


def wait_listening(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s") from None
            time.sleep(0.05)


# --- Nostr over the stack's WebSocket ---------------------------------------------------------------------


def make_events(count: int, label: str, *, created_at: int | None = None) -> list[Event]:
    key = PrivateKey()
    base = created_at or int(time.time())
    return [sign_event(key.secret, kind=1, content=f"{label} {i}", tags=[], created_at=base + i) for i in range(count)]


async def recv(ws: Any, timeout: float = 20.0) -> list[Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def send_event(ws: Any, event: Event, timeout: float = 20.0) -> list[Any]:
    """Send one EVENT and return its OK frame (NOTICEs before it are skipped)."""
    await ws.send(json.dumps(["EVENT", event.to_dict()]))
    while True:
        frame = await recv(ws, timeout)
        if frame[0] == "OK" and frame[1] == event.id:
            return frame


def publish(url: str, events: list[Event], *, window: int = 1) -> None:
    """Publish ``events`` and assert each is OK'd; ``window`` EVENTs are in flight at a time."""

    async def run() -> None:
        async with websockets.connect(url, max_size=None) as ws:
            for start in range(0, len(events), window):
                chunk = events[start : start + window]
                for event in chunk:
                    await ws.send(json.dumps(["EVENT", event.to_dict()]))
                waiting = {event.id for event in chunk}
                while waiting:
                    frame = await recv(ws, 60)
                    if frame[0] == "OK":
                        assert frame[2] is True, frame
                        waiting.discard(frame[1])

    asyncio.run(run())


async def query_ids(url: str, ids: list[str], timeout: float = 20.0) -> list[str]:
    """The ids a REQ for ``ids`` returns (in order, duplicates kept), up to its EOSE."""
    got: list[str] = []
    async with websockets.connect(url, max_size=None) as ws:
        for start in range(0, len(ids), 500):
            sub = f"q{start}"
            await ws.send(json.dumps(["REQ", sub, {"ids": ids[start : start + 500]}]))
            while True:
                frame = await recv(ws, timeout)
                if frame == ["EOSE", sub]:
                    break
                assert frame[0] in ("EVENT", "NOTICE"), frame
                if frame[0] == "EVENT":
                    got.append(frame[2]["id"])
            await ws.send(json.dumps(["CLOSE", sub]))
    return got


def wait_readable(url: str, events: list[Event], timeout: float = 60.0) -> None:
    """Every one of ``events`` comes back from a REQ, exactly once, within ``timeout``."""
    ids = [event.id for event in events]
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = asyncio.run(query_ids(url, ids))
        except (OSError, TimeoutError, websockets.WebSocketException) as exc:
            got = [f"error: {exc}"]
        if sorted(got) == sorted(ids):
            return
        assert time.monotonic() < deadline, f"{len(set(ids) - set(got))} of {len(ids)} events missing: {got[:5]}"
        time.sleep(1)


async def expect_notice_then_1013(ws: Any, timeout: float = 15.0) -> None:
    """The outage answer on a socket: a NOTICE saying to try again later, then close code 1013."""
    notice = await recv(ws, timeout)
    assert notice[0] == "NOTICE" and "try again later" in notice[1], notice
    try:
        await asyncio.wait_for(ws.recv(), timeout)
    except websockets.ConnectionClosed as closed:
        assert closed.rcvd is not None and closed.rcvd.code == 1013, closed
    else:
        raise AssertionError("socket stayed open after the outage NOTICE")


# --- Worker APIs (HMAC-signed with the stack's registration secret) ---------------------------------------


def post_json(stack: Stack, path: str, body: Any, *, raw: bytes | None = None) -> tuple[int, Message, Any]:
    """POST to the gateway; returns (status, headers, decoded JSON body or the raw text). Header names are
    matched without regard to case, as HTTP says (the web server sends them in lower case)."""
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(
        stack.base_url + path, data=data, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            status, headers, text = response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        status, headers, text = error.code, error.headers, error.read()
    try:
        return status, headers, json.loads(text)
    except ValueError:
        return status, headers, text.decode("utf-8", "replace")


def signed_body(stack: Stack, payload: dict[str, Any]) -> dict[str, Any]:
    return {"payload": payload, "signature": hmac_hex(stack.secret, payload)}


def register(stack: Stack, relay_key: str) -> tuple[int, dict[str, str], Any]:
    """A fresh signed registration of ``relay_key`` (as a worker sends it)."""
    from tests.conftest import make_registration

    registration = make_registration(relay_key, metadata={"name": "chaos", "requiresAuth": False})
    return post_json(
        stack, "/api/relays", {"registration": registration, "signature": hmac_hex(stack.secret, registration)}
    )


def issue_token(stack: Stack, relay_key: str) -> tuple[int, dict[str, str], Any]:
    payload = {"relayKey": relay_key, "relayAuthToken": "chaos-auth", "pubkey": "f" * 64}
    return post_json(stack, "/api/relay-tokens/issue", signed_body(stack, payload))


# --- Replica sync and database probes in the stack's environment -----------------------------------------


def probe(stack: Stack, code: str, timeout: float = 60) -> Any:
    """Run ``code`` (which assigns ``result``) with Django set up on the stack's database; returns ``result``."""
    script = f"import django, json\ndjango.setup()\n{code}\nprint('PROBE ' + json.dumps(result))\n"
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**stack.env, "DJANGO_SETTINGS_MODULE": "hypertuna.settings"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("PROBE "))
    return json.loads(line[len("PROBE ") :])


def replica_ids(stack: Stack, relay_key: str) -> list[str]:
    """Every materialized event id of the relay's replica (duplicates kept, so a double shows)."""
    return probe(
        stack,
        "from replicas.models import ReplicaEvent\n"
        f"rows = ReplicaEvent.objects.filter(replica__relay_key={relay_key!r}).values_list('eid', flat=True)\n"
        "result = [bytes(eid).hex() for eid in rows]",
    )


def replica_row(stack: Stack, relay_key: str) -> dict[str, Any] | None:
    rows = {r["relayKey"]: r for r in stack.operator_get("/api/blind-peer/replicas", OPERATOR)["replicas"]}
    return rows.get(relay_key)


# One process runs ``replicas_sync`` until the replica is caught up (a Django start-up per attempt is seconds on
# a busy machine); it prints the materialized event ids, duplicates kept, so a double shows.
SYNC_LOOP = """
import json, sys, time
from io import StringIO
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone
from replicas.models import Replica, ReplicaEvent
from replicas.readiness import derive_state

relay, expected, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
transient = ("no replica for", "replica-not-found", "core-unavailable")
deadline = time.monotonic() + timeout
while True:
    err = StringIO()
    try:
        call_command("replicas_sync", "--relay", relay, stdout=StringIO(), stderr=err)
    except CommandError as exc:
        failure = f"{exc}: {err.getvalue()}"
        if not any(t in failure for t in transient):
            print("SYNC " + json.dumps({"error": failure}))
            break
    else:
        replica = Replica.objects.get(relay_key=relay)
        rows = ReplicaEvent.objects.filter(replica=replica).values_list("eid", flat=True)
        ids = [bytes(eid).hex() for eid in rows]
        if derive_state(replica, timezone.now()) == "ready" and replica.lag_entries == 0 and len(ids) >= expected:
            print("SYNC " + json.dumps({"ids": ids}))
            break
    if time.monotonic() > deadline:
        state = Replica.objects.filter(relay_key=relay).values().first()
        print("SYNC " + json.dumps({"error": f"never caught up: {state}"}, default=str))
        break
    time.sleep(0.5)
"""


def sync_until_caught_up(stack: Stack, relay_key: str, expected: int, timeout: float = 90) -> dict[str, Any]:
    """Run ``replicas_sync`` until the replica is ready, has no lag and holds ``expected`` events; returns its
    ``/api/blind-peer/replicas`` row (checked: ready, no lag) with ``eventIds``, every materialized event id."""
    done = subprocess.run(
        [sys.executable, "-c", "import django\ndjango.setup()\n" + SYNC_LOOP, relay_key, str(expected), str(timeout)],
        cwd=ROOT,
        env={**stack.env, "DJANGO_SETTINGS_MODULE": "hypertuna.settings"},
        capture_output=True,
        text=True,
        timeout=timeout + 60,
    )
    line = next((line for line in done.stdout.splitlines() if line.startswith("SYNC ")), None)
    assert line is not None, done.stderr[-3000:]
    outcome = json.loads(line[len("SYNC ") :])
    assert "ids" in outcome, f"{outcome['error']}\n{stack.log_tail()}"
    row = replica_row(stack, relay_key)
    assert row and row["state"] == "ready" and row["lagEntries"] == 0, row
    return {**row, "eventIds": outcome["ids"]}
