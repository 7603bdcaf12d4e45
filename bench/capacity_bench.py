"""EVENT→OK capacity of one gateway node: how many accepted writes per second one web process passes when
the writes are spread over several workers, so that no worker is the bottleneck. Each worker is a
push-capable reference worker hosting its own relay; by default it runs with ``--memory-store`` (events kept
in memory, answered at once: the same worker protocol, registration and push over the testnet swarm, without
the Autobase append and update that make a reference worker take ~8 ms per write), so the figure is the
gateway's. ``store="autobase"`` (``python -m bench capacity --store autobase``) measures with Autobase-backed
workers instead.

Clients (the lean client of :mod:`bench.wsclient`) hold one WebSocket each and send signed EVENTs back to
back, one in flight each; the figure is accepted OKs per second over the whole run, with each process's CPU %
of a core and CPU ms per accepted EVENT over the same window (``bench-client`` is this process: the clients
share the host's cores). On a shared host the busiest process may get less than a core, so its CPU ms per
EVENT is the steadier figure:
1000 / that is what it would pass with a core to itself. The same clients then send as many EVENTs straight
to the workers through the bridge (no gateway session): when that rate is as low, the time goes in the
workers (or the bridge), not in the gateway.

Clients: 16 per worker (48 with 3 workers). Measured with 3 in-memory workers on a 2-core host: 6 clients
257/s, 24 clients 275/s, 48 clients 357-374/s, 96 clients 333/s, 192 clients 278/s through the gateway — the
rate stops growing past 48 while the web process stays the busiest; and at the goal rate 48 closed-loop
clients leave each EVENT a 24 ms round trip, several times the unloaded EVENT→OK, so the clients are not
what limits the figure. Goal (issue row): ≥ 2,000 EVENT→OK/s through one node. Loopback only.
``python -m bench capacity [--workers N] [--store memory|autobase]``.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import FRAME_BUDGET_PER_MINUTE
from bench.procstat import CpuWindow
from bench.routing_bench import Direct, LaunchedWorker, ReferenceWorkerLauncher, _events, _gateway_event
from bench.wsclient import LeanWebSocket
from hypertuna.bridge import BridgeClient

GOAL_PER_S = 2000.0
CLIENTS_PER_WORKER = 16
EVENTS_PER_CLIENT = 60
STORES = ("memory", "autobase")
WORKER_KINDS = {"memory": "in-memory reference workers", "autobase": "Autobase reference workers"}


async def _load(urls: list[str], pids: dict[str, int], per_worker: int) -> dict[str, Any]:
    batches = [(url, _events(EVENTS_PER_CLIENT)) for url in urls for _ in range(per_worker)]
    sockets = [await LeanWebSocket.open(url) for url, _ in batches]
    try:
        for ws in sockets:  # warm every route before timing
            await _gateway_event(ws, _events(1)[0])

        async def client(ws: Any, events: list[dict[str, Any]]) -> None:
            for event in events:
                await _gateway_event(ws, event)

        started = time.perf_counter()
        with CpuWindow(pids) as window:
            await asyncio.gather(*(client(ws, events) for ws, (_, events) in zip(sockets, batches, strict=True)))
        elapsed = time.perf_counter() - started
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    total = len(batches) * EVENTS_PER_CLIENT
    return {
        "workers": len(urls),
        "clients": len(batches),
        "events": total,
        "seconds": round(elapsed, 2),
        "events_per_s": round(total / elapsed, 1),
        "cpu_percent_of_a_core": window.percent,
        "cpu_ms_per_event": {name: round(10 * pct * window.seconds / total, 3) for name, pct in window.percent.items()},
    }


async def _direct(socket_path: str, launched: list[LaunchedWorker], per_worker: int) -> dict[str, Any]:
    """The same load sent straight to the workers through the bridge: the workers' and bridge's own rate."""
    client = BridgeClient(socket_path=socket_path, client_name="bench-capacity")
    await client.connect()
    try:
        routes = [(Direct(client, w), secrets.token_hex(16)) for w in launched for _ in range(per_worker)]
        batches = [_events(EVENTS_PER_CLIENT) for _ in routes]

        async def one(direct: Direct, conn: str, events: list[dict[str, Any]]) -> None:
            for event in events:
                await direct.event(event, conn)

        started = time.perf_counter()
        await asyncio.gather(*(one(d, c, b) for (d, c), b in zip(routes, batches, strict=True)))
        elapsed = time.perf_counter() - started
    finally:
        await client.close()
    return {"seconds": round(elapsed, 2), "events_per_s": round(len(routes) * EVENTS_PER_CLIENT / elapsed, 1)}


def run(workers: int = 3, store: str = "memory", per_worker: int = CLIENTS_PER_WORKER) -> dict[str, Any]:
    if store not in STORES:
        raise ValueError(f"store must be one of {', '.join(STORES)}")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.e2e.harness import Stack

    with tempfile.TemporaryDirectory(prefix="hypertuna-bench-capacity-") as tmp:
        env = {"HYPERTUNA_LOG_LEVEL": "WARNING", "HYPERTUNA_RATELIMIT_TOKEN_PER_MINUTE": FRAME_BUDGET_PER_MINUTE}
        stack = Stack(Path(tmp), env=env).start()
        try:
            launcher = ReferenceWorkerLauncher(push=True, memory=store == "memory")
            launched = [launcher.start_named(stack, f"bench-capacity-{i}") for i in range(workers)]
            pids = {proc.name: proc.process.pid for proc in stack.procs + stack.workers}
            pids["bench-client"] = os.getpid()
            result = {"store": store, **asyncio.run(_load([w.url for w in launched], pids, per_worker))}
            result["direct"] = asyncio.run(_direct(stack.env["HYPERTUNA_BRIDGE_SOCKET"], launched, per_worker))
            return result
        finally:
            stack.stop()


def report(result: dict[str, Any]) -> str:
    rate = result["events_per_s"]
    busiest = max(result["cpu_percent_of_a_core"].items(), key=lambda item: item[1])
    per_event = result.get("cpu_ms_per_event", {})
    return "\n".join(
        [
            f"EVENT->OK capacity of one node ({result['workers']} {WORKER_KINDS[result.get('store', 'autobase')]}, "
            f"{result['clients']} clients, "
            f"{result['events']} events in {result['seconds']} s)",
            f"  accepted EVENT->OK/s: {rate} | goal >= {GOAL_PER_S:.0f}/s: "
            f"{'met' if rate >= GOAL_PER_S else 'MISSED'} (x{rate / GOAL_PER_S:.2f} of the goal)",
            f"  the same load straight to the workers through the bridge (no gateway): "
            f"{result['direct']['events_per_s']}/s",
            f"  busiest process: {busiest[0]} at {busiest[1]} % of a core; all: "
            + ", ".join(f"{name} {pct} %" for name, pct in result["cpu_percent_of_a_core"].items()),
            "  CPU ms per accepted EVENT: " + ", ".join(f"{name} {ms}" for name, ms in per_event.items()),
        ]
    )


if __name__ == "__main__":
    print(report(run(int(sys.argv[1]) if len(sys.argv) > 1 else 3, sys.argv[2] if len(sys.argv) > 2 else "memory")))
