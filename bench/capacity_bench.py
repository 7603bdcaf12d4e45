"""EVENT→OK capacity of one gateway node: how many accepted writes per second one web process passes when
the writes are spread over several workers (each a push-capable reference worker hosting its own relay),
so that no single worker is the bottleneck. Clients hold one WebSocket each and send signed EVENTs back to
back; the figure is accepted OKs per second over the whole run, with each process's CPU % of a core over
the same window (the process near 100 % is the bottleneck). The same clients then send as many EVENTs
straight to the workers through the bridge (no gateway session): when that rate is as low, the time goes in
the workers (or the bridge), not in the gateway. Goal (issue row): ≥ 2,000 EVENT→OK/s through
one node. Loopback only. ``python -m bench capacity [--workers N]``.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import websockets

from bench.procstat import CpuWindow
from bench.routing_bench import Direct, LaunchedWorker, ReferenceWorkerLauncher, _events, _gateway_event
from hypertuna.bridge import BridgeClient

GOAL_PER_S = 2000.0
CLIENTS_PER_WORKER = 8
EVENTS_PER_CLIENT = 60


async def _load(urls: list[str], pids: dict[str, int]) -> dict[str, Any]:
    batches = [(url, _events(EVENTS_PER_CLIENT)) for url in urls for _ in range(CLIENTS_PER_WORKER)]
    sockets = [await websockets.connect(url, compression=None) for url, _ in batches]
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
    }


async def _direct(socket_path: str, launched: list[LaunchedWorker]) -> dict[str, Any]:
    """The same load sent straight to the workers through the bridge: the workers' and bridge's own rate."""
    client = BridgeClient(socket_path=socket_path, client_name="bench-capacity")
    await client.connect()
    try:
        routes = [(Direct(client, w), secrets.token_hex(16)) for w in launched for _ in range(CLIENTS_PER_WORKER)]
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


def run(workers: int = 3) -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.e2e.harness import Stack

    with tempfile.TemporaryDirectory(prefix="hypertuna-bench-capacity-") as tmp:
        env = {"HYPERTUNA_LOG_LEVEL": "WARNING", "HYPERTUNA_RATELIMIT_TOKEN_PER_MINUTE": "0"}
        stack = Stack(Path(tmp), env=env).start()
        try:
            launched = []
            for i in range(workers):
                launcher = ReferenceWorkerLauncher(push=True)
                launched.append(launcher.start_named(stack, f"bench-capacity-{i}"))
            pids = {proc.name: proc.process.pid for proc in stack.procs + stack.workers}
            result = asyncio.run(_load([w.url for w in launched], pids))
            result["direct"] = asyncio.run(_direct(stack.env["HYPERTUNA_BRIDGE_SOCKET"], launched))
            return result
        finally:
            stack.stop()


def report(result: dict[str, Any]) -> str:
    rate = result["events_per_s"]
    busiest = max(result["cpu_percent_of_a_core"].items(), key=lambda item: item[1])
    return "\n".join(
        [
            f"EVENT->OK capacity of one node ({result['workers']} reference workers, {result['clients']} clients, "
            f"{result['events']} events in {result['seconds']} s)",
            f"  accepted EVENT->OK/s: {rate} | goal >= {GOAL_PER_S:.0f}/s: "
            f"{'met' if rate >= GOAL_PER_S else 'MISSED'} (x{rate / GOAL_PER_S:.2f} of the goal)",
            f"  the same load straight to the workers through the bridge (no gateway): "
            f"{result['direct']['events_per_s']}/s",
            f"  busiest process: {busiest[0]} at {busiest[1]} % of a core; all: "
            + ", ".join(f"{name} {pct} %" for name, pct in result["cpu_percent_of_a_core"].items()),
        ]
    )


if __name__ == "__main__":
    print(report(run(int(sys.argv[1]) if len(sys.argv) > 1 else 3)))
