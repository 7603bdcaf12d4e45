"""Chaos: the escrow role dies while a relay's worker is offline, and comes back on the same port and database.
Real processes: the escrow (mTLS, own SQLite database), the gateway (uvicorn + coordinator), the bridge (blind
peer + leased Autobase writer) and a reference worker that deposited its gateway writer and then went away."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import pytest
import websockets

from tests.chaos.conftest import start_stack
from tests.chaos.helpers import (
    make_events,
    publish,
    recv,
    sync_until_caught_up,
    wait_listening,
    wait_readable,
)
from tests.e2e.harness import ROOT, spawn
from tests.e2e.test_escrow import _escrow_flags

ANSWER_WITHIN_S = 2.0
PEER_TIMEOUT_S = 5.0  # the harness's HYPERTUNA_PEER_REQUEST_TIMEOUT


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = start_stack(
        tmp_path_factory.mktemp("escrow-chaos"),
        escrow=True,
        env={"HYPERTUNA_ESCROW_HEARTBEAT_SILENCE": "5", "HYPERTUNA_ESCROW_ANSWER_WITHIN_MS": "1500"},
    )
    try:
        yield stack
    finally:
        stack.stop()


async def _write(url: str, event, times: int = 1) -> list[tuple[float, list]]:
    """``times`` EVENTs of ``event`` on one socket: for each, the seconds until its OK and the OK frame."""
    answers = []
    async with websockets.connect(url) as ws:
        for _ in range(times):
            started = time.monotonic()
            await ws.send(json.dumps(["EVENT", event.to_dict()]))
            while (frame := await recv(ws, 60))[0] != "OK":
                pass
            answers.append((time.monotonic() - started, frame))
    return answers


def test_escrow_down_and_back(stack, tmp_path):
    """Fault: the escrow process is SIGKILLed while the relay's only worker is offline (so a write needs a
    lease), then started again on the same port, certificates and database.

    Degraded: an EVENT is answered within ~2 s with ``OK false "blocked: … retry in N s"``; the gateway's processes keep
    running and reads are served from the replica.

    Recovery: once the escrow listens again, the next automatic lease request (after the coordinator's short
    pause) is granted and the write is ``OK true`` within 30 s.

    Nothing lost: the event written before the outage and the one written under the lease are both readable
    exactly once; ``manage.py escrow_audit verify`` on the escrow's database passes (every unlock, granted or
    not, is in an intact hash chain)."""
    signing = tmp_path / "signing.hex"
    worker = stack.start_worker(
        "escrow-chaos",
        "--blind-peer",
        "gateway",
        "--gateway-writer-out",
        str(tmp_path / "writer.json"),
        *_escrow_flags(stack, signing),
        storage=tmp_path / "worker",
    )
    relay_key = worker.markers["HYPERTUNA_WORKER_READY"]["relayKey"]
    url = f"{stack.ws_url}/{relay_key}"
    worker.wait_marker("HYPERTUNA_WORKER_ESCROW", timeout=60)
    before = make_events(1, "before escrow outage")
    publish(url, before)
    sync_until_caught_up(stack, relay_key, expected=1)
    worker.stop()
    time.sleep(6)  # longer than the escrow's heartbeat-silence rule

    escrow = next(proc for proc in stack.procs if proc.name == "escrow")
    escrow.process.kill()
    escrow.process.wait(timeout=10)
    escrow.stop()

    offline = make_events(1, "written under a lease")[0]
    # The first EVENT of a session still tries the worker the registration names (up to the peer request
    # timeout, 5 s here); once it failed, the session falls back at once and only the escrow is asked.
    answers = asyncio.run(_write(url, offline, times=2))
    assert answers[0][0] <= PEER_TIMEOUT_S + ANSWER_WITHIN_S, answers
    for took, frame in answers:
        # An unreachable escrow is an outage, not a refusal: the client is told to retry, never "read-only".
        assert frame[:3] == ["OK", offline.id, False] and frame[3].startswith("blocked:"), frame
        assert "retry in" in frame[3] and "read-only" not in frame[3], frame
    assert answers[1][0] <= ANSWER_WITHIN_S, answers
    wait_readable(url, before, timeout=10)  # reads go on from the replica
    assert all(proc.process.poll() is None for proc in stack.procs if proc is not escrow), stack.log_tail()

    stack.procs.remove(escrow)
    port = int(stack.escrow_env["HYPERTUNA_ESCROW_LISTEN_PORT"])
    stack.procs.append(
        spawn(
            "escrow-restarted",
            [sys.executable, "manage.py", "run_escrow"],
            cwd=ROOT,
            env=stack.escrow_env,
            log_dir=stack.tmp,
        )
    )
    wait_listening(port, timeout=60)

    async def write_until_granted() -> None:
        deadline = time.monotonic() + 30
        async with websockets.connect(url) as ws:
            while True:
                started = time.monotonic()
                await ws.send(json.dumps(["EVENT", offline.to_dict()]))
                while (frame := await recv(ws, 60))[0] != "OK":
                    pass
                assert time.monotonic() - started <= PEER_TIMEOUT_S + ANSWER_WITHIN_S, frame
                # A write answered "retry" may still have been appended in the background (a slow lease.open or
                # append goes on): its retry is then told "duplicate:", which is success for the client.
                if frame[:3] == ["OK", offline.id, True] and (frame[3] == "" or frame[3].startswith("duplicate:")):
                    return
                assert frame[3].startswith("blocked:"), frame
                assert time.monotonic() < deadline, (frame, stack.log_tail(60))
                await asyncio.sleep(1)

    asyncio.run(write_until_granted())
    wait_readable(url, [*before, offline], timeout=30)
    audit = stack.manage("escrow_audit", "verify", env=stack.escrow_env)
    assert audit.returncode == 0 and "OK:" in audit.stdout, audit.stdout + audit.stderr
