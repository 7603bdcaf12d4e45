"""Fallback: what a relay's clients see when its only worker goes away, through real processes (escrow role,
web, bridge, reference workers; loopback only).

One gateway node over a private Redis (cache, channel layer), as in production. Two relays, each mirrored to the
gateway's blind peer and materialized into the replica:

- **escrowed**: its worker deposited its gateway writer and heartbeats every second; it is SIGKILLed.
- **unescrowed**: its worker never deposited; it stops cleanly (SIGTERM). Writes to it are refused.

Figures:

1. **first replica answer**: from the worker's end (kill or stop) to the first correct REQ answer (the
   relay's known event, then EOSE), on a socket opened before and on sockets opened after. Goal (anchors
   T6): ≤ 1 s.
2. **EVENT→OK under a lease**: once the heartbeat silence has passed, the first write is retried until the
   lease is granted (time reported), then ``LEASED`` sequential writes. Goal: p99 ≤ 2 s.
3. **EVENT→OK under refusal** (no deposit): ``REFUSED`` sequential writes, each ``OK false``. Goal: p99 ≤ 2 s.
4. **escrow down** (its process SIGKILLed): the held lease keeps serving writes until it expires; refusals
   stay prompt. ``ESCROW_DOWN`` writes each. Goal: p99 ≤ 2 s, no failed write under the held lease.

``python -m bench fallback``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import websockets
from coincurve import PrivateKey

from bench import FRAME_BUDGET_PER_MINUTE
from bench.burst_bench import _private_redis
from bench.routing_bench import _events, _stats
from hypertuna.nostr import sign_event

LEASED = 200
REFUSED = 100
ESCROW_DOWN = 50
HEARTBEAT_SILENCE = 5
FIRST_ANSWER_GOAL_MS = 1000.0
# The defaults of bridge/src/config.mjs and hypertuna/settings.py, stated so the report can name them.
PRODUCTION_PROBES = {
    "HYPERTUNA_BRIDGE_HEALTH_INTERVAL_MS": "30000",
    "HYPERTUNA_BRIDGE_HEALTH_TIMEOUT_MS": "5000",
    "HYPERTUNA_BRIDGE_OVERDUE_PROBE_MS": "1000",
    "HYPERTUNA_BRIDGE_OVERDUE_PROBE_TIMEOUT_MS": "2000",
    "HYPERTUNA_PEER_REQUEST_TIMEOUT": "10",
}
EVENT_OK_P99_GOAL_MS = 2000.0


async def _recv(ws: Any, timeout: float) -> list[Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def _answered(ws: Any, sub: str, event_id: str, timeout: float = 10.0) -> bool:
    """Send a REQ for ``event_id``; True when the answer is that event then EOSE."""
    await ws.send(json.dumps(["REQ", sub, {"ids": [event_id]}]))
    ids: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        frame = await _recv(ws, max(0.01, deadline - time.monotonic()))
        if frame[:2] == ["EVENT", sub]:
            ids.append(frame[2]["id"])
        elif frame == ["EOSE", sub]:
            await ws.send(json.dumps(["CLOSE", sub]))
            return ids == [event_id]
        elif frame[:2] == ["CLOSED", sub]:
            return False


async def _first_answer_open(ws: Any, event_id: str, started: float, limit: float) -> float | None:
    """Seconds until a REQ on the already-open ``ws`` is answered correctly (None: not within ``limit``)."""
    for attempt in range(100_000):
        try:
            if await _answered(ws, f"open-{attempt}", event_id):
                return time.monotonic() - started
        except TimeoutError:
            pass
        except websockets.ConnectionClosed:
            return None  # the gateway closed it: reported as no answer
        if time.monotonic() - started > limit:
            return None
        await asyncio.sleep(0.01)
    return None


async def _first_answer_new(url: str, event_id: str, started: float, limit: float) -> float | None:
    """Seconds until a REQ on a freshly opened socket is answered correctly."""
    while time.monotonic() - started <= limit:
        with contextlib.suppress(OSError, TimeoutError, websockets.WebSocketException):
            async with websockets.connect(url, open_timeout=5) as ws:
                if await _answered(ws, "new", event_id):
                    return time.monotonic() - started
        await asyncio.sleep(0.01)
    return None


async def _failover(url: str, event_id: str, end_worker: Any) -> dict[str, Any]:
    """End the worker while a socket is open, then race that socket and new ones to a correct answer."""
    async with websockets.connect(url) as ws:
        assert await _answered(ws, "warm", event_id), "the worker did not answer before its end"
        started = time.monotonic()
        end_worker()
        opened, fresh = await asyncio.gather(
            _first_answer_open(ws, event_id, started, 30.0), _first_answer_new(url, event_id, started, 30.0)
        )
    return {"open_s": opened, "new_s": fresh, "ended_at": started}


async def _event_ok(ws: Any, event: dict[str, Any]) -> tuple[float, list[Any]]:
    started = time.perf_counter()
    await ws.send(json.dumps(["EVENT", event]))
    while True:
        frame = await _recv(ws, 30)
        if frame[0] == "OK" and frame[1] == event["id"]:
            return (time.perf_counter() - started) * 1000, frame


async def _series(url: str, events: list[dict[str, Any]]) -> dict[str, Any]:
    """Sequential EVENT→OK on one new socket: latency stats over all of them (the first, which pays for the
    session finding out that the relay's registered worker is gone, also apart), and how many were accepted."""
    samples, accepted, replies = [], 0, []
    async with websockets.connect(url) as ws:
        for event in events:
            elapsed, frame = await _event_ok(ws, event)
            samples.append(elapsed)
            accepted += frame[2] is True
            replies.append(frame[3])
    return {
        **_stats("", samples),
        "first_ms": samples[0],
        "n": len(events),
        "accepted": accepted,
        "last_reply": replies[-1],
    }


async def _first_grant(url: str, key: PrivateKey, limit: float) -> float:
    """Seconds from now until a write is accepted under a new lease (a write is retried every 0.2 s)."""
    started = time.monotonic()
    async with websockets.connect(url) as ws:
        while True:
            event = sign_event(key.secret, kind=1, content="first leased write", tags=[]).to_dict()
            _, frame = await _event_ok(ws, event)
            if frame[2] is True:
                return time.monotonic() - started
            if time.monotonic() - started > limit:
                raise RuntimeError(f"no lease within {limit:.0f} s: {frame}")
            await asyncio.sleep(0.2)


def _kill(proc: Any) -> None:
    """SIGKILL a harness process's whole group: no goodbye on any connection."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.process.pid, signal.SIGKILL)


def _publish_online(url: str) -> str:
    event = _events(1)[0]

    async def go() -> None:
        async with websockets.connect(url) as ws:
            _, frame = await _event_ok(ws, event)
            if frame[2] is not True:
                raise RuntimeError(f"the worker refused the seed event: {frame}")

    asyncio.run(go())
    return str(event["id"])


def run() -> dict[str, Any]:
    # A shared cache, as in production: the bridge event consumer's "worker unreachable" reaches the web process.
    redis_process, redis_url = _private_redis()
    try:
        return _run(redis_url)
    finally:
        redis_process.kill()
        redis_process.wait()


def _run(redis_url: str) -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.e2e.harness import Stack
    from tests.e2e.test_escrow import _escrow_flags, _sync_until_ready

    with tempfile.TemporaryDirectory(prefix="hypertuna-bench-fallback-") as tmp:
        env = {
            "REDIS_URL": redis_url,
            "HYPERTUNA_LOG_LEVEL": "WARNING",
            "HYPERTUNA_RATELIMIT_TOKEN_PER_MINUTE": FRAME_BUDGET_PER_MINUTE,
            "HYPERTUNA_ESCROW_HEARTBEAT_SILENCE": str(HEARTBEAT_SILENCE),
            # The production health sweep and peer request timeout (the test harness shortens them): a killed
            # worker is found out by the overdue probe of the request it leaves unanswered.
            **PRODUCTION_PROBES,
        }
        stack = Stack(Path(tmp), escrow=True, env=env).start()
        try:
            escrowed = stack.start_worker(
                "bench-escrowed",
                "--blind-peer",
                "gateway",
                "--gateway-writer-out",
                str(Path(tmp) / "gateway-writer.json"),
                *_escrow_flags(stack, Path(tmp) / "worker-signing.hex"),
            )
            escrowed.wait_marker("HYPERTUNA_WORKER_ESCROW", timeout=60)
            plain = stack.start_worker("bench-unescrowed", "--blind-peer", "gateway")
            urls, seeds = {}, {}
            for name, worker in (("escrowed", escrowed), ("unescrowed", plain)):
                relay_key = worker.markers["HYPERTUNA_WORKER_READY"]["relayKey"]
                urls[name] = f"{stack.ws_url}/{relay_key}"
                seeds[name] = _publish_online(urls[name])
                _sync_until_ready(stack, relay_key)

            results: dict[str, Any] = {"failover": {}, "probes": {name: stack.env[name] for name in PRODUCTION_PROBES}}
            results["failover"]["SIGKILL"] = asyncio.run(
                _failover(urls["escrowed"], seeds["escrowed"], lambda: _kill(escrowed))
            )
            killed_at = results["failover"]["SIGKILL"]["ended_at"]
            results["failover"]["clean stop"] = asyncio.run(
                _failover(urls["unescrowed"], seeds["unescrowed"], plain.stop)
            )
            escrowed.stop()

            time.sleep(max(0.0, killed_at + HEARTBEAT_SILENCE + 1 - time.monotonic()))
            author = PrivateKey()
            results["grant_s"] = asyncio.run(_first_grant(urls["escrowed"], author, 60.0))
            results["leased"] = asyncio.run(_series(urls["escrowed"], _events(LEASED, author)))
            results["refused"] = asyncio.run(_series(urls["unescrowed"], _events(REFUSED)))

            escrow = next(proc for proc in stack.procs if proc.name == "escrow")
            _kill(escrow)
            escrow.stop()
            results["escrow_down_leased"] = asyncio.run(_series(urls["escrowed"], _events(ESCROW_DOWN, author)))
            results["escrow_down_refused"] = asyncio.run(_series(urls["unescrowed"], _events(ESCROW_DOWN)))
        finally:
            stack.stop()
    return results


def _goal(value_ms: float | None, goal_ms: float) -> str:
    if value_ms is None:
        return "MISSED (no answer)"
    return f"{'met' if value_ms <= goal_ms else 'MISSED'} (x{value_ms / goal_ms:.2f} of the goal)"


def report(results: dict[str, Any]) -> str:
    probes = results["probes"]
    lines = [
        "Fallback: a relay whose only worker goes away (escrow role, web, bridge, reference workers; bridge "
        f"health sweep every {probes['HYPERTUNA_BRIDGE_HEALTH_INTERVAL_MS']} ms, timeout "
        f"{probes['HYPERTUNA_BRIDGE_HEALTH_TIMEOUT_MS']} ms; a request unanswered for "
        f"{probes['HYPERTUNA_BRIDGE_OVERDUE_PROBE_MS']} ms probes its worker, timeout "
        f"{probes['HYPERTUNA_BRIDGE_OVERDUE_PROBE_TIMEOUT_MS']} ms; peer request timeout "
        f"{probes['HYPERTUNA_PEER_REQUEST_TIMEOUT']} s: the production defaults)"
    ]
    for how, row in results["failover"].items():
        for where, key in (("already-open socket", "open_s"), ("new socket", "new_s")):
            ms = None if row[key] is None else row[key] * 1000
            shown = "none within 30 s" if ms is None else f"{ms:.0f} ms"
            lines.append(
                f"  first replica answer after the worker's {how}, {where}: {shown} | goal <= "
                f"{FIRST_ANSWER_GOAL_MS:.0f} ms: {_goal(ms, FIRST_ANSWER_GOAL_MS)}"
            )
    lines.append(
        f"  first write granted under a lease, {HEARTBEAT_SILENCE} s heartbeat silence + 1 s after the kill: "
        f"{results['grant_s'] * 1000:.0f} ms (escrow unlock + bridge lease.open; retried every 200 ms)"
    )
    rows = (
        ("under a lease", "leased", True),
        ("under refusal (no deposit)", "refused", False),
        ("escrow down, lease held", "escrow_down_leased", True),
        ("escrow down, no deposit", "escrow_down_refused", False),
    )
    for label, key, should_accept in rows:
        row = results[key]
        outcome = f"{row['accepted']}/{row['n']} accepted" if should_accept else f"{row['n'] - row['accepted']} refused"
        lines.append(
            f"  EVENT->OK {label}, {row['n']} sequential on a new socket: p50 {row['p50_ms']:.2f} ms, p99 "
            f"{row['p99_ms']:.2f} ms, first {row['first_ms']:.0f} ms ({outcome}) | goal p99 <= "
            f"{EVENT_OK_P99_GOAL_MS:.0f} ms: {_goal(row['p99_ms'], EVENT_OK_P99_GOAL_MS)}"
        )
        if should_accept and row["accepted"] < row["n"]:
            lines.append(f"    last reply: {row['last_reply']}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(run()))
