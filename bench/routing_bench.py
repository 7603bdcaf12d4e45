"""Gateway hop vs direct: what the public edge costs on top of talking to the worker through the bridge.

Both paths run in the same process, against the same worker, in one run:

- **direct**: Python → bridge RPC (``peer.request``) → Hyperswarm → worker, the way the gateway itself
  reaches a worker (the worker has no public socket to compare with);
- **gateway**: Nostr client → WebSocket → uvicorn → ``GatewaySession`` → bridge → worker.

One row set per worker kind (a :class:`WorkerLauncher`, listed in :func:`default_launchers`): the reference
worker pushing live frames, the same with its events in memory (``--memory-store``: it answers at once, so
what remains is the gateway's and the bridge's share), the reference worker polled only (``--no-ws-push``, as
real workers are) and the published worker runtime. Per worker kind:

- **EVENT→OK**: sequential round trips, p50/p99, gateway / direct;
- **REQ→EOSE** of a REQ that matches nothing: through the gateway vs the worker's own answer time (direct
  ``POST /post/relay`` then ``GET /get/relay`` at once until the EOSE is there). Goal: the gateway adds
  ≤ 0.3 ms at p50 and ≤ 1.5 ms at p99 to the worker's own answer;
- **live delivery**: an EVENT published through the gateway on one socket until a second socket's
  subscription receives it. Goal: p50 ≤ 5 ms. It cannot beat the worker's own EVENT→OK (an event is
  fanned out once the worker accepted it), so the figure is also given relative to the sender's EVENT→OK;
- **EVENT throughput** with concurrent clients, gateway / direct (first worker kind only: it measures the
  gateway, not the worker).

The gateway runs with the production idle poll (1 s), so a goal can only be met by the fast paths. The Nostr
client is the lean one of :mod:`bench.wsclient` (frames split from the byte stream), so that its own cost,
like the bridge client's on the direct path, stays small beside what is measured. Loopback only, bounded in
time, every process stopped at the end.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from coincurve import PrivateKey

from bench import FRAME_BUDGET_PER_MINUTE
from bench.wsclient import LeanWebSocket
from hypertuna.bridge import BridgeClient
from hypertuna.nostr import sign_event

SEQUENTIAL = 150
REQ_SAMPLES = 100
LIVE_SAMPLES = 100
CLIENTS = 16
PER_CLIENT = 30
IDLE_POLL_MS = 1000
# Issue goals: an EOSE-only REQ costs at most this much over the worker's own answer; live delivery p50.
REQ_GOAL_P50_MARGIN_MS = 0.3
REQ_GOAL_P99_MARGIN_MS = 1.5
LIVE_GOAL_MS = 5.0
# Workers re-register and report telemetry at their production cadence (the test harness makes them do it
# every few seconds), so that the gateway handling those requests does not show up in the timings.
PRODUCTION_CADENCE = ("--register-interval-ms", "60000", "--telemetry-interval-ms", "15000")


@dataclass
class LaunchedWorker:
    """A running worker hosting one relay, reachable through the stack's gateway and bridge."""

    peer_key: str
    relay_key: str
    url: str  # the relay's WebSocket URL on the gateway (with a token if the relay needs one)
    auth_token: str | None = None  # x-auth-token for direct requests
    stop: Callable[[], None] | None = None
    # The key events must be signed with (a worker that binds writes to the token's pubkey); None: any key.
    signing_key: PrivateKey | None = None


class WorkerLauncher(Protocol):
    """Starts one kind of worker beside a running :class:`tests.e2e.harness.Stack`."""

    label: str

    def start(self, stack: Any) -> LaunchedWorker: ...


@dataclass
class ReferenceWorkerLauncher:
    push: bool = True
    # Events in memory (``--memory-store``): the worker answers at once, so the figures are the gateway's.
    memory: bool = False
    label: str = field(init=False)

    def __post_init__(self) -> None:
        self.label = "reference worker, ws push" if self.push else "reference worker, poll only"
        if self.memory:
            self.label += ", in-memory store"

    def start(self, stack: Any) -> LaunchedWorker:
        return self.start_named(stack, f"bench-{'push' if self.push else 'poll'}{'-mem' if self.memory else ''}")

    def start_named(self, stack: Any, name: str) -> LaunchedWorker:
        """A worker hosting the relay ``name`` (several may run beside one stack)."""
        args = (() if self.push else ("--no-ws-push",)) + (("--memory-store",) if self.memory else ())
        args += PRODUCTION_CADENCE
        worker = stack.start_worker(name, *args)
        ready = worker.markers["HYPERTUNA_WORKER_READY"]
        return LaunchedWorker(
            ready["swarmPublicKey"], ready["relayKey"], f"{stack.ws_url}/{ready['gatewayPath']}", stop=worker.stop
        )


@dataclass
class RealWorkerLauncher:
    """The published worker runtime (``interop/``, see interop/README.md), which never pushes and binds
    writes to the token's pubkey. Needs ``npm ci`` in ``interop/`` (``make test`` or ``make bench``)."""

    label: str = "published worker runtime (@squip/hyperpipe-core)"

    def start(self, stack: Any) -> LaunchedWorker:
        from tests.interop.realworker import RealWorker, runtime_version

        version = runtime_version()
        if version is None:
            raise RuntimeError("the worker runtime is not installed: run `npm ci` in interop/ (make bench does)")
        self.label = f"published worker runtime {version}"
        owner = PrivateKey()
        worker = RealWorker(stack, "bench-real", owner_secret=owner.secret.hex(), mirror=False)
        ready = worker.start()
        token = worker.command("issue-token", pubkey=owner.public_key_xonly.format().hex())["token"]
        return LaunchedWorker(
            ready["swarmPublicKey"],
            ready["relayKey"],
            f"{stack.ws_url}/{ready['gatewayPath']}?token={token}",
            auth_token=ready["authToken"],
            stop=worker.stop,
            signing_key=owner,
        )


def default_launchers() -> list[WorkerLauncher]:
    """The worker kinds measured by ``make bench``; add a launcher here to get one more row set."""
    return [
        ReferenceWorkerLauncher(push=True),
        ReferenceWorkerLauncher(push=True, memory=True),
        ReferenceWorkerLauncher(push=False),
        RealWorkerLauncher(),
    ]


def _events(n: int, key: PrivateKey | None = None) -> list[dict[str, Any]]:
    key = key or PrivateKey()
    return [sign_event(key.secret, kind=1, content=f"bench {i}", tags=[]).to_dict() for i in range(n)]


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _stats(prefix: str, samples: list[float]) -> dict[str, float]:
    return {f"{prefix}p50_ms": statistics.median(samples), f"{prefix}p99_ms": _pct(samples, 0.99)}


class Direct:
    """The worker protocol spoken straight to the worker through the bridge (no gateway session)."""

    def __init__(self, client: BridgeClient, worker: LaunchedWorker) -> None:
        self.client, self.worker = client, worker
        self.headers = {"content-type": "application/json"}
        if worker.auth_token:
            self.headers["x-auth-token"] = worker.auth_token

    async def post(self, frame: list[Any], conn: str) -> list[Any]:
        body = json.dumps({"message": json.dumps(frame), "connectionKey": conn}).encode()
        response = await self.client.peer_request(
            self.worker.peer_key, "POST", f"/post/relay/{self.worker.relay_key}", headers=self.headers, body=body
        )
        if response.status_code != 200:
            raise RuntimeError(f"direct {frame[0]} failed: {response.status_code} {response.body[:200]!r}")
        return [json.loads(line) for line in response.body.decode().splitlines() if line.strip()]

    async def poll(self, conn: str) -> list[Any]:
        response = await self.client.peer_request(
            self.worker.peer_key, "GET", f"/get/relay/{self.worker.relay_key}/{conn}", headers=self.headers
        )
        value = json.loads(response.body or b"[]")
        return value if isinstance(value, list) else []

    async def event(self, event: dict[str, Any], conn: str) -> None:
        reply = await self.post(["EVENT", event], conn)
        if not any(f[:3] == ["OK", event["id"], True] for f in _flat(reply)):
            raise RuntimeError(f"direct EVENT refused: {reply}")

    async def req_until_eose(self, sub_id: str, flt: dict[str, Any], conn: str) -> None:
        """The worker's own answer: the REQ, then polls back to back until the EOSE is there."""
        frames = _flat(await self.post(["REQ", sub_id, flt], conn))
        for _ in range(10_000):
            if ["EOSE", sub_id] in frames:
                return
            frames = _flat(await self.poll(conn))
        raise RuntimeError("the worker never sent the EOSE")


def _flat(value: list[Any]) -> list[Any]:
    """NDJSON lines or poll replies: frames, or arrays of frames."""
    out: list[Any] = []
    for item in value:
        if isinstance(item, list) and item and all(isinstance(x, list) for x in item):
            out.extend(item)
        elif isinstance(item, list):
            out.append(item)
    return out


async def _recv_until(ws: Any, predicate: Callable[[list[Any]], bool]) -> list[Any]:
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
        if predicate(frame):
            return frame


async def _gateway_event(ws: Any, event: dict[str, Any]) -> None:
    await ws.send(json.dumps(["EVENT", event]))
    reply = await _recv_until(ws, lambda f: f[0] == "OK")
    if reply[:3] != ["OK", event["id"], True]:
        raise RuntimeError(f"gateway EVENT failed: {reply}")


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


async def _event_latency(direct: Direct, url: str) -> dict[str, float]:
    conn = secrets.token_hex(16)
    key = direct.worker.signing_key
    direct_lat, gateway_lat = [], []
    async with LeanWebSocket.connect(url) as ws:
        for event in _events(10, key):  # warm both paths (dial, handshake, caches) before timing anything
            await direct.event(event, conn)
        for event in _events(10, key):
            await _gateway_event(ws, event)
        for d_event, g_event in zip(_events(SEQUENTIAL, key), _events(SEQUENTIAL, key), strict=True):
            started = time.perf_counter()
            await direct.event(d_event, conn)
            direct_lat.append(_ms(started))
            started = time.perf_counter()
            await _gateway_event(ws, g_event)
            gateway_lat.append(_ms(started))
    return {**_stats("direct_", direct_lat), **_stats("gateway_", gateway_lat)}


async def _req_latency(direct: Direct, url: str) -> dict[str, float]:
    """EOSE-only REQs (an author nobody writes as), each closed before the next."""
    conn = secrets.token_hex(16)
    nobody = {"authors": [secrets.token_hex(32)], "limit": 10}
    direct_lat, gateway_lat = [], []
    async with LeanWebSocket.connect(url) as ws:
        for n in range(REQ_SAMPLES + 5):
            started = time.perf_counter()
            await direct.req_until_eose(f"d{n}", nobody, conn)
            took = _ms(started)
            await direct.post(["CLOSE", f"d{n}"], conn)
            if n >= 5:
                direct_lat.append(took)
            started = time.perf_counter()
            await ws.send(json.dumps(["REQ", f"g{n}", nobody]))
            await _recv_until(ws, lambda f, n=n: f == ["EOSE", f"g{n}"])
            took = _ms(started)
            await ws.send(json.dumps(["CLOSE", f"g{n}"]))
            if n >= 5:
                gateway_lat.append(took)
    return {**_stats("worker_", direct_lat), **_stats("gateway_", gateway_lat)}


async def _live_latency(url: str, key: PrivateKey | None = None) -> dict[str, float]:
    """Per sample, from the EVENT sent on one socket: when the sender has its OK, and when a second socket's
    subscription has the event. The second socket cannot have it before the worker accepted it (the
    gateway fans out only accepted events), so ``after_ok`` is the gateway's own share."""
    key = key or PrivateKey()
    pubkey = _events(1, key)[0]["pubkey"]
    total, after_ok = [], []
    async with LeanWebSocket.connect(url) as reader, LeanWebSocket.connect(url) as writer:
        await reader.send(json.dumps(["REQ", "live", {"authors": [pubkey]}]))
        await _recv_until(reader, lambda f: f[0] == "EOSE")
        for n, event in enumerate(_events(LIVE_SAMPLES + 5, key)):

            async def arrival(ws: Any, predicate: Callable[[list[Any]], bool]) -> float:
                await _recv_until(ws, predicate)
                return time.perf_counter()

            started = time.perf_counter()
            await writer.send(json.dumps(["EVENT", event]))
            ok_at, live_at = await asyncio.gather(
                arrival(writer, lambda f, e=event: f[0] == "OK" and f[1] == e["id"]),
                arrival(reader, lambda f, e=event: f[0] == "EVENT" and f[2]["id"] == e["id"]),
            )
            if n >= 5:
                total.append((live_at - started) * 1000)
                after_ok.append((live_at - ok_at) * 1000)
    return {**_stats("", total), **_stats("after_ok_", after_ok)}


async def _throughput(direct: Direct, url: str) -> dict[str, float]:
    key = direct.worker.signing_key
    batches = [_events(PER_CLIENT, key) for _ in range(CLIENTS)]

    async def direct_worker(events: list[dict[str, Any]], idx: int) -> None:
        for event in events:
            await direct.event(event, f"{idx:032x}")

    started = time.perf_counter()
    await asyncio.gather(*(direct_worker(b, i) for i, b in enumerate(batches)))
    direct_rate = CLIENTS * PER_CLIENT / (time.perf_counter() - started)
    batches = [_events(PER_CLIENT, key) for _ in range(CLIENTS)]

    async def gateway_worker(events: list[dict[str, Any]]) -> None:
        async with LeanWebSocket.connect(url) as ws:
            for event in events:
                await _gateway_event(ws, event)

    started = time.perf_counter()
    await asyncio.gather(*(gateway_worker(b) for b in batches))
    gateway_rate = CLIENTS * PER_CLIENT / (time.perf_counter() - started)
    return {"direct_events_per_s": direct_rate, "gateway_events_per_s": gateway_rate}


async def measure_worker(socket_path: str, worker: LaunchedWorker, *, throughput: bool) -> dict[str, Any]:
    """Every figure of one worker kind (see the module docstring)."""
    client = BridgeClient(socket_path=socket_path, client_name="bench")
    await client.connect()
    direct = Direct(client, worker)
    try:
        results: dict[str, Any] = {
            "event": await _event_latency(direct, worker.url),
            "req": await _req_latency(direct, worker.url),
            "live": await _live_latency(worker.url, worker.signing_key),
        }
        if throughput:
            results["throughput"] = await _throughput(direct, worker.url)
    finally:
        await client.close()
    return results


def run(launchers: Sequence[WorkerLauncher] | None = None) -> dict[str, Any]:
    """One gateway stack, each worker kind started beside it in turn and measured; returns the figures."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.e2e.harness import Stack

    launchers = list(launchers) if launchers is not None else default_launchers()
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="hypertuna-bench-") as tmp:
        env = {
            "HYPERTUNA_LOG_LEVEL": "WARNING",
            "HYPERTUNA_POLL_INTERVAL_MS": str(IDLE_POLL_MS),
            # Every bench socket comes from 127.0.0.1: the per-address frame budget would throttle the run.
            "HYPERTUNA_RATELIMIT_TOKEN_PER_MINUTE": FRAME_BUDGET_PER_MINUTE,
        }
        stack = Stack(Path(tmp), env=env)
        # The worker runtime routes its relays by the gateway origin the bridge announces.
        stack.env["HYPERTUNA_PUBLIC_URL"] = stack.base_url
        stack.start()
        try:
            for i, launcher in enumerate(launchers):
                worker = launcher.start(stack)
                try:
                    rows[launcher.label] = asyncio.run(
                        measure_worker(stack.env["HYPERTUNA_BRIDGE_SOCKET"], worker, throughput=i == 0)
                    )
                finally:
                    if worker.stop is not None:
                        worker.stop()
        finally:
            stack.stop()
    return {"workers": rows}


def _goal(ok: bool) -> str:
    return "met" if ok else "MISSED"


def report(results: dict[str, Any]) -> str:
    lines = [f"Gateway hop vs direct bridge call (same worker, same run; gateway idle poll {IDLE_POLL_MS} ms)"]
    for label, row in results["workers"].items():
        ev, req, live = row["event"], row["req"], row["live"]
        extra_p50 = req["gateway_p50_ms"] - req["worker_p50_ms"]
        extra_p99 = req["gateway_p99_ms"] - req["worker_p99_ms"]
        lines += [
            f"  [{label}]",
            f"    EVENT->OK, {SEQUENTIAL} sequential: direct p50 {ev['direct_p50_ms']:.2f} ms, "
            f"p99 {ev['direct_p99_ms']:.2f} ms | gateway p50 {ev['gateway_p50_ms']:.2f} ms, "
            f"p99 {ev['gateway_p99_ms']:.2f} ms | ratio p50 x{ev['gateway_p50_ms'] / ev['direct_p50_ms']:.2f}",
            f"    REQ->EOSE (EOSE only), {REQ_SAMPLES}: gateway p50 {req['gateway_p50_ms']:.2f} ms | worker's own "
            f"answer p50 {req['worker_p50_ms']:.2f} ms | ratio x{req['gateway_p50_ms'] / req['worker_p50_ms']:.2f} "
            f"| gateway's extra p50 {extra_p50:+.2f} ms, goal <= +{REQ_GOAL_P50_MARGIN_MS} ms: "
            f"{_goal(extra_p50 <= REQ_GOAL_P50_MARGIN_MS)}; extra p99 {extra_p99:+.2f} ms (gateway p99 "
            f"{req['gateway_p99_ms']:.2f}, worker p99 {req['worker_p99_ms']:.2f}), goal <= "
            f"+{REQ_GOAL_P99_MARGIN_MS} ms: {_goal(extra_p99 <= REQ_GOAL_P99_MARGIN_MS)}",
            f"    live delivery to a second socket, {LIVE_SAMPLES}: from the EVENT p50 {live['p50_ms']:.2f} ms, "
            f"p99 {live['p99_ms']:.2f} ms (the worker's own EVENT->OK is the floor) | after the sender's OK "
            f"p50 {live['after_ok_p50_ms']:.2f} ms, p99 {live['after_ok_p99_ms']:.2f} ms | goal p50 <= "
            f"{LIVE_GOAL_MS:.0f} ms: {_goal(live['p50_ms'] <= LIVE_GOAL_MS)} from the EVENT, "
            f"{_goal(live['after_ok_p50_ms'] <= LIVE_GOAL_MS)} after the OK",
        ]
        if "throughput" in row:
            thr = row["throughput"]
            lines.append(
                f"    EVENT throughput, {CLIENTS} clients x {PER_CLIENT}: direct {thr['direct_events_per_s']:.0f}/s | "
                f"gateway {thr['gateway_events_per_s']:.0f}/s | ratio "
                f"x{thr['gateway_events_per_s'] / thr['direct_events_per_s']:.2f} (gateway / direct)"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(run()))
