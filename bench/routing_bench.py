"""Gateway hop vs direct: what the public edge costs on top of talking to the worker through the bridge.

Both paths run in the same process, against the same reference worker, in one run:

- **direct**: Python → bridge RPC (``peer.request``) → Hyperswarm → worker, the way the gateway itself
  reaches a worker (the worker has no public socket to compare with);
- **gateway**: Nostr client → WebSocket → Daphne → ``GatewaySession`` → bridge → worker.

Measured: sequential EVENT→OK round trips (p50/p99), and EVENT throughput with concurrent clients. The
ratios (gateway / direct) are the result; absolute numbers depend on the machine. Loopback only, bounded
in time, every process stopped at the end.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import websockets
from coincurve import PrivateKey

from hypertuna.bridge import BridgeClient
from hypertuna.nostr import sign_event

SEQUENTIAL = 300
CLIENTS = 16
PER_CLIENT = 40


def _events(n: int) -> list[dict[str, Any]]:
    key = PrivateKey()
    return [sign_event(key.secret, kind=1, content=f"bench {i}", tags=[]).to_dict() for i in range(n)]


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _direct_one(client: BridgeClient, peer: str, relay_key: str, event: dict[str, Any], conn: str) -> None:
    body = json.dumps({"message": json.dumps(["EVENT", event]), "connectionKey": conn}).encode()
    response = await client.peer_request(
        peer, "POST", f"/post/relay/{relay_key}", headers={"content-type": "application/json"}, body=body
    )
    if response.status_code != 200 or b'"OK"' not in response.body:
        raise RuntimeError(f"direct EVENT failed: {response.status_code} {response.body[:200]!r}")


async def _gateway_one(ws: Any, event: dict[str, Any]) -> None:
    await ws.send(json.dumps(["EVENT", event]))
    reply = json.loads(await asyncio.wait_for(ws.recv(), 30))
    if reply[:3] != ["OK", event["id"], True]:
        raise RuntimeError(f"gateway EVENT failed: {reply}")


async def _measure(socket_path: str, peer: str, relay_key: str, url: str) -> dict[str, Any]:
    client = BridgeClient(socket_path=socket_path, client_name="bench")
    await client.connect()
    conn = "ab" * 16
    results: dict[str, Any] = {}
    try:
        # Warm both paths (dial, handshake, caches) before timing anything.
        for event in _events(20):
            await _direct_one(client, peer, relay_key, event, conn)
        async with websockets.connect(url) as ws:
            for event in _events(20):
                await _gateway_one(ws, event)

            direct_lat, gateway_lat = [], []
            for d_event, g_event in zip(_events(SEQUENTIAL), _events(SEQUENTIAL), strict=True):
                started = time.perf_counter()
                await _direct_one(client, peer, relay_key, d_event, conn)
                direct_lat.append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                await _gateway_one(ws, g_event)
                gateway_lat.append((time.perf_counter() - started) * 1000)
        results["latency"] = {
            "direct_p50_ms": statistics.median(direct_lat),
            "direct_p99_ms": _pct(direct_lat, 0.99),
            "gateway_p50_ms": statistics.median(gateway_lat),
            "gateway_p99_ms": _pct(gateway_lat, 0.99),
        }

        batches = [_events(PER_CLIENT) for _ in range(CLIENTS)]

        async def direct_worker(events: list[dict[str, Any]], idx: int) -> None:
            for event in events:
                await _direct_one(client, peer, relay_key, event, f"{idx:032x}")

        started = time.perf_counter()
        await asyncio.gather(*(direct_worker(b, i) for i, b in enumerate(batches)))
        direct_rate = CLIENTS * PER_CLIENT / (time.perf_counter() - started)

        batches = [_events(PER_CLIENT) for _ in range(CLIENTS)]

        async def gateway_worker(events: list[dict[str, Any]]) -> None:
            async with websockets.connect(url) as ws:
                for event in events:
                    await _gateway_one(ws, event)

        started = time.perf_counter()
        await asyncio.gather(*(gateway_worker(b) for b in batches))
        gateway_rate = CLIENTS * PER_CLIENT / (time.perf_counter() - started)
        results["throughput"] = {"direct_events_per_s": direct_rate, "gateway_events_per_s": gateway_rate}
    finally:
        await client.close()
    return results


def run() -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.e2e.harness import Stack

    with tempfile.TemporaryDirectory(prefix="hypertuna-bench-") as tmp:
        stack = Stack(Path(tmp), env={"HYPERTUNA_LOG_LEVEL": "WARNING"}).start()
        try:
            worker = stack.start_worker("bench")
            ready = worker.markers["HYPERTUNA_WORKER_READY"]
            url = f"{stack.ws_url}/{ready['gatewayPath']}"
            results = asyncio.run(
                _measure(stack.env["HYPERTUNA_BRIDGE_SOCKET"], ready["swarmPublicKey"], ready["relayKey"], url)
            )
        finally:
            stack.stop()
    lat, thr = results["latency"], results["throughput"]
    results["ratios"] = {
        "latency_p50_gateway_over_direct": lat["gateway_p50_ms"] / lat["direct_p50_ms"],
        "latency_p99_gateway_over_direct": lat["gateway_p99_ms"] / lat["direct_p99_ms"],
        "throughput_gateway_over_direct": thr["gateway_events_per_s"] / thr["direct_events_per_s"],
    }
    return results


def report(results: dict[str, Any]) -> str:
    lat, thr, ratios = results["latency"], results["throughput"], results["ratios"]
    return "\n".join(
        [
            "Gateway hop vs direct bridge call (same worker, same run)",
            f"  EVENT->OK latency, {SEQUENTIAL} sequential: direct p50 {lat['direct_p50_ms']:.2f} ms, "
            f"p99 {lat['direct_p99_ms']:.2f} ms | gateway p50 {lat['gateway_p50_ms']:.2f} ms, p99 {lat['gateway_p99_ms']:.2f} ms",
            f"  EVENT throughput, {CLIENTS} clients x {PER_CLIENT}: direct {thr['direct_events_per_s']:.0f}/s | "
            f"gateway {thr['gateway_events_per_s']:.0f}/s",
            f"  ratios: latency p50 x{ratios['latency_p50_gateway_over_direct']:.2f}, "
            f"p99 x{ratios['latency_p99_gateway_over_direct']:.2f}, "
            f"throughput x{ratios['throughput_gateway_over_direct']:.2f} (gateway / direct)",
        ]
    )


if __name__ == "__main__":
    print(report(run()))
