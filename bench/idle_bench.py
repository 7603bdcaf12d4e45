"""Idle WebSockets on one node: memory per socket and CPU while nothing happens.

One gateway stack (web, bridge, event consumer; loopback only) and a push-capable reference worker.
``sockets`` clients each open a WebSocket to the relay and hold one subscription (a REQ answered by its
EOSE), then stay silent. Per process of the stack (from ``/proc``): resident memory before the sockets and
with them open — the web process's growth divided by the sockets is the **memory per socket** — and the
**CPU % of a core** over an idle window (default 20 s). Goals (issue rows): ≤ 48 KiB per socket at 10,000
sockets, ≤ 5 % of a core for 10,000 idle sockets on push-capable workers. ``python -m bench idle
--sockets N``.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import websockets

from bench import FRAME_BUDGET_PER_MINUTE
from bench.procstat import CpuWindow, raise_open_files_limit, rss_kib
from bench.routing_bench import ReferenceWorkerLauncher, _recv_until

RSS_GOAL_KIB = 48.0
CPU_GOAL_PERCENT = 5.0
GOAL_SOCKETS = 10_000


async def _hold(url: str, sockets: int, idle_s: float, pids: dict[str, int]) -> dict[str, Any]:
    """Open the sockets (a bounded number of handshakes at a time), subscribe, then measure the idle window."""
    before = {name: rss_kib(pid) for name, pid in pids.items()}
    nobody = {"authors": [secrets.token_hex(32)], "limit": 1}
    opened: list[Any] = []
    gate = asyncio.Semaphore(64)

    async def one(n: int) -> None:
        async with gate:
            ws = await websockets.connect(url, open_timeout=60, ping_interval=None, compression=None)
            opened.append(ws)
            await ws.send(json.dumps(["REQ", f"idle{n}", nobody]))
            await _recv_until(ws, lambda f, n=n: f == ["EOSE", f"idle{n}"])

    started = time.monotonic()
    results = await asyncio.gather(*(one(n) for n in range(sockets)), return_exceptions=True)
    open_s = time.monotonic() - started
    failed = sum(isinstance(r, BaseException) for r in results)
    await asyncio.sleep(2)  # let the handshakes' garbage settle before the window
    with CpuWindow(pids) as window:
        await asyncio.sleep(idle_s)
    during = {name: rss_kib(pid) for name, pid in pids.items()}
    await asyncio.gather(*(ws.close() for ws in opened), return_exceptions=True)
    held = sockets - failed
    return {
        "sockets": sockets,
        "failed": failed,
        "open_s": round(open_s, 2),
        "idle_window_s": round(window.seconds, 1),
        "rss_before_kib": before,
        "rss_open_kib": during,
        "web_kib_per_socket": round((during["web"] - before["web"]) / held, 2) if held else None,
        "cpu_percent_of_a_core": window.percent,
    }


def run(sockets: int = 1000, idle_s: float = 20.0) -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.e2e.harness import Stack

    # Each socket is one descriptor here and one in the web process (which inherits the limit), plus headroom.
    raise_open_files_limit(sockets + 1024)
    with tempfile.TemporaryDirectory(prefix="hypertuna-bench-idle-") as tmp:
        env = {"HYPERTUNA_LOG_LEVEL": "WARNING", "HYPERTUNA_RATELIMIT_TOKEN_PER_MINUTE": FRAME_BUDGET_PER_MINUTE}
        stack = Stack(Path(tmp), env=env).start()
        try:
            worker = ReferenceWorkerLauncher(push=True).start(stack)
            pids = {proc.name: proc.process.pid for proc in stack.procs + stack.workers}
            pids["web"] = next(proc.process.pid for proc in stack.procs if proc.name == "web")
            result = asyncio.run(_hold(worker.url, sockets, idle_s, pids))
            if worker.stop is not None:
                worker.stop()
        finally:
            stack.stop()
    return result


def report(result: dict[str, Any]) -> str:
    per_socket = result["web_kib_per_socket"]
    web_cpu = result["cpu_percent_of_a_core"]["web"]
    lines = [
        f"Idle WebSockets ({result['sockets']} held, one subscription each, push-capable reference worker; "
        f"{result['failed']} failed to open; opened in {result['open_s']} s)",
        f"  web process memory per socket: {per_socket} KiB | goal <= {RSS_GOAL_KIB:.0f} KiB (at "
        f"{GOAL_SOCKETS:,} sockets): {_verdict(per_socket, RSS_GOAL_KIB)}",
        f"  web process CPU over {result['idle_window_s']} s idle: {web_cpu} % of a core | goal <= "
        f"{CPU_GOAL_PERCENT:.0f} % (at {GOAL_SOCKETS:,} sockets): {_verdict(web_cpu, CPU_GOAL_PERCENT)}",
        "  per process (RSS before -> open KiB, CPU % idle): "
        + ", ".join(
            f"{name} {result['rss_before_kib'][name]}->{result['rss_open_kib'][name]}, "
            f"{result['cpu_percent_of_a_core'][name]} %"
            for name in result["rss_before_kib"]
        ),
    ]
    return "\n".join(lines)


def _verdict(value: float | None, goal: float) -> str:
    if value is None:
        return "MISSED (no socket held)"
    return f"{'met' if value <= goal else 'MISSED'} (x{value / goal:.2f} of the goal)"


if __name__ == "__main__":
    print(report(run(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)))
