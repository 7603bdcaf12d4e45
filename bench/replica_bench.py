"""Replica benchmark: REQ latency from the materialized replica, sync/upsert throughput, and the same REQ mix
against the PyPI ``nostr-relay`` package on the same events, in the same run.

``run(events=100_000) -> dict``;
``python -m bench.replica_bench [--events N] [--seconds S] [--no-compare] [--profile FILE]``.

Method (performance-anchors §6):

- **Data**: ``events`` events from a fixed seed, shaped like anchors §3.2 (2,000 authors with cubic skew;
  kinds 1 ≈ 50 %, 7 ≈ 25 %, 6, 0, 3; an ``e`` tag into earlier events with quadratic skew, a ``p`` tag from
  the author skew, a ``t`` tag from 1,000 hashtags with quadratic skew; 120 B of content). Every event is
  really signed (BIP-340 via coincurve) so both relays verify the same signatures. Generated once per
  (seed, count) into ``$HYPERTUNA_VAR_DIR/bench-cache/``.
- **Database**: the whole data set is materialized once per (seed, count) into a dedicated database
  (``<DATABASE_URL's name>_cache_<seed>_<count>`` on Postgres, a SQLite file under ``bench-cache/``) and
  reused by later runs, with pending migrations applied each run; nostr-relay's loaded store is kept
  under ``bench-cache/`` the same way. Delete ``bench-cache/`` (and drop the database) to regenerate.
- **Sync/upsert throughput**: the events are fed through ``services.ingest_view_batch`` (the code path of
  the replica sync) in batches of ``HYPERTUNA_REPLICA_BATCH_SIZE`` view blocks, with signature
  verification on (``verified_events_per_s``, measured when the cache is generated) and, each run on a
  throw-away ``<name>_run`` database, off for a 20k sample (``upsert_events_per_s``).
- **REQ latency** per shape, four ways: ``in_process`` (``query_events`` call: SQL + row decoding);
  ``bare_ws`` (a subprocess serving the replica over a loopback WebSocket with nothing but the query and the
  frames — REQ in, EVENT… EOSE out: what the SQL plus a minimal server cost); ``gateway_ws``, the figure the
  goal rows report: the real gateway (uvicorn → ``RelayAuthMiddleware`` → ``RelayConsumer`` →
  ``GatewaySession`` with no usable worker → ``ReplicaFallback`` → ``read_replica``, frames back through the
  session and the consumer; set up by :mod:`bench.replica_gateway`: no bridge, in-memory channel layer and
  cache, no rate limit reached) at ``ws://…/<relayKey>``, so ``gateway_ws`` minus ``bare_ws`` is the gateway's
  own cost per shape; and ``nostr_relay_ws`` (``nostr-relay`` served by uvicorn on loopback, loaded with the
  same events through its own ``load`` command, i.e. its storage API with its signature validator on). The
  same client drives every WebSocket: one connection, sequential REQs, time from sending REQ to receiving
  EOSE, frames counted. It is the lean client of :mod:`bench.wsclient` (frames split from the byte stream
  as they arrive), so that the figure is the server's: the ``websockets`` client spends about 5 µs on every
  frame it receives, 0.5 ms of a 100-event answer. Shapes and parameters are identical for all.
  ``nostr-relay`` runs on its default SQLite storage (its Postgres path needs asyncpg); compare it with this
  project on SQLite for a like-for-like storage engine.
- **Agreement**: the first three REQs of every shape are sent to each server and the ids compared. The
  gateway must answer exactly what the bare server answers (same ids, same order) — a fast gateway that
  answers something else is not a result (the goal rows then carry no figure); against nostr-relay the
  counts are reported, not enforced.
- **Profile** (``--profile FILE``, py-spy installed): the gateway's mix is driven once more while py-spy
  samples the web process; the hottest functions are printed (those timings are not kept).
- **Ratios** are nostr-relay ÷ gateway (above 1 means the gateway is faster), computed within the run.

Everything listens on 127.0.0.1 only; each phase has a time budget and the run stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.nostr_relay_server import free_port, start_nostr_relay, stop_process, wait_port
from bench.replica_data import (
    SHAPES,
    bench_database,
    cache_dir,
    cached_replica,
    ingest_events,
    load_dataset,
    percentiles,
    query_mix,
    setup_django,
)
from bench.replica_gateway import ensure_offline_relay, gateway_server, hot_spots, profiled, py_spy
from bench.wsclient import LeanWebSocket


def time_in_process(relay_key: str, mix: dict[str, list[dict[str, Any]]], budget_s: float) -> dict[str, Any]:
    from hypertuna.nostr import Filter
    from replicas.queries import query_events

    out: dict[str, Any] = {}
    per_shape = budget_s / len(mix)
    for shape, filters in mix.items():
        parsed = [Filter.from_json(f) for f in filters]
        query_events(relay_key, parsed[:1], max_limit=500)  # warm the plan and cache
        samples: list[float] = []
        counts: list[int] = []
        deadline = time.perf_counter() + per_shape
        i = 0
        while time.perf_counter() < deadline and i < 20 * len(parsed):
            f = parsed[i % len(parsed)]
            started = time.perf_counter()
            rows = query_events(relay_key, [f], max_limit=500)
            samples.append(time.perf_counter() - started)
            counts.append(len(rows))
            i += 1
        out[shape] = {**percentiles(samples), "mean_events": round(statistics.fmean(counts), 1) if counts else 0}
    return out


def serve_replica(port: int, relay_key: str) -> None:
    """Child process: the replica over a loopback WebSocket (REQ → EVENT… EOSE), like the gateway's
    replica path, so it can be driven by the same client as nostr-relay."""
    setup_django()
    import websockets

    from hypertuna.nostr import ReqMessage, eose_frame, event_frame_from_json, parse_client_message
    from replicas.queries import aquery_events

    async def handler(ws: Any) -> None:
        async for raw in ws:
            message = parse_client_message(raw)
            if isinstance(message, ReqMessage):
                rows = await aquery_events(relay_key, message.filters, max_limit=500)
                for row in rows:
                    await ws.send(event_frame_from_json(message.subscription_id, row.json))
                await ws.send(eose_frame(message.subscription_id))

    async def main() -> None:
        async with websockets.serve(handler, "127.0.0.1", port, compression=None, max_size=2**22):
            print("READY", flush=True)
            await asyncio.Future()

    asyncio.run(main())


@contextmanager
def bare_server(database_url: str, relay_key: str) -> Iterator[str]:
    """:func:`serve_replica` in a child process on a free loopback port; yields its URL."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.replica_bench", "--serve", str(port), "--relay", relay_key],
        env={**os.environ, "DATABASE_URL": database_url, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        line = server.stdout.readline() if server.stdout else b""
        if b"READY" not in line:
            raise RuntimeError("replica WebSocket server did not start")
        yield f"ws://127.0.0.1:{port}"
    finally:
        stop_process(server)


# --- WebSocket client -----------------------------------------------------------------------------------


# The type and subscription of a relay frame, whatever its spacing: ["EVENT", "s1", {...}].
_FRAME_HEAD = re.compile(r'\[\s*"([A-Z]+)"\s*,\s*"([^"]*)"')


async def _time_ws(url: str, mix: dict[str, list[dict[str, Any]]], budget_s: float) -> dict[str, Any]:
    """Sequential REQ → EOSE timings on one connection; the same code (and the lean client) drives every server."""
    out: dict[str, Any] = {}
    per_shape = budget_s / len(mix)
    async with LeanWebSocket.connect(url) as ws:
        n = 0

        async def req(f: dict[str, Any]) -> tuple[float, int]:
            nonlocal n
            n += 1
            sub = f"s{n}"
            started = time.perf_counter()
            await ws.send(json.dumps(["REQ", sub, f]))
            count = 0
            # One deadline per REQ and frames told apart by their head, not parsed whole: the client's own
            # cost per frame stays small beside any server's (the answers are checked by _first_answers).
            async with asyncio.timeout(30):
                while True:
                    head = _FRAME_HEAD.match(await ws.recv())
                    if head is None or head[2] != sub:
                        continue
                    if head[1] == "EVENT":
                        count += 1
                    elif head[1] == "EOSE":
                        break
            elapsed = time.perf_counter() - started
            await ws.send(json.dumps(["CLOSE", sub]))
            return elapsed, count

        for shape, filters in mix.items():
            await req(filters[0])  # warm-up
            samples: list[float] = []
            counts: list[int] = []
            deadline = time.perf_counter() + per_shape
            i = 0
            while time.perf_counter() < deadline and i < 10 * len(filters):
                elapsed, count = await req(filters[i % len(filters)])
                samples.append(elapsed)
                counts.append(count)
                i += 1
            out[shape] = {**percentiles(samples), "mean_events": round(statistics.fmean(counts), 1) if counts else 0}
    return out


async def _first_answers(url: str, mix: dict[str, list[dict[str, Any]]]) -> dict[str, list[list[str]]]:
    """The ids each server returns for the first three filters of every shape (agreement check)."""
    import websockets

    answers: dict[str, list[list[str]]] = {}
    async with websockets.connect(url, compression=None, max_size=2**24, open_timeout=30) as ws:
        for shape, filters in mix.items():
            answers[shape] = []
            for i, f in enumerate(filters[:3]):
                sub = f"a-{shape}-{i}"
                await ws.send(json.dumps(["REQ", sub, f]))
                ids: list[str] = []
                while True:
                    frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
                    if frame[0] == "EVENT" and frame[1] == sub:
                        ids.append(frame[2]["id"])
                    elif frame[0] == "EOSE" and frame[1] == sub:
                        break
                await ws.send(json.dumps(["CLOSE", sub]))
                answers[shape].append(ids)
    return answers


# --- the run ----------------------------------------------------------------------------------------------


def _ratio(a: dict[str, Any], b: dict[str, Any], key: str) -> float | None:
    if key not in a or key not in b or not b[key]:
        return None
    return round(a[key] / b[key], 2)


def _agreement(ours: list[list[str]], theirs: list[list[str]]) -> dict[str, int]:
    """How many of the check REQs two servers answered with the same ids in the same order, and as a set."""
    pairs = list(zip(ours, theirs, strict=True))
    return {
        "same_order": sum(a == b for a, b in pairs),
        "same_set": sum(set(a) == set(b) for a, b in pairs),
        "of": len(pairs),
    }


def run(
    events: int = 100_000,
    *,
    seconds: float = 20.0,
    compare: bool = True,
    seed: int = 1,
    per_shape: int = 40,
    profile: Path | None = None,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> dict[str, Any]:
    """Run the benchmark (see the module docstring) and return the results.

    ``seconds`` is the time budget of each latency phase (split over the shapes); loading nostr-relay is
    capped at 30 minutes. The data set, the materialized replica and nostr-relay's loaded store are
    generated once under ``bench-cache/`` and reused (see :mod:`bench.replica_data`). With ``profile``, the
    gateway's mix is driven once more while py-spy samples the gateway into that file (those timings are not
    kept). Returns ``{"config", "ingest", "in_process", "bare_ws", "gateway_ws", "nostr_relay_ws", "ratios",
    "agreement"}`` (and ``"gateway_profile"`` with ``profile``).
    """
    if events < 1000:
        raise ValueError("events must be at least 1000")
    setup_django()
    from django.conf import settings
    from django.db import connection

    var_dir = Path(settings.VAR_DIR)
    log(f"dataset: {events} signed events (seed {seed})")
    data, events_file, generated_s = load_dataset(events, seed, var_dir)
    mix = query_mix(data, seed, per_shape)
    result: dict[str, Any] = {
        "config": {
            "events": events,
            "seed": seed,
            "database": connection.vendor,
            "seconds_per_phase": seconds,
            "batch_size": settings.HYPERTUNA_REPLICA_BATCH_SIZE,
            "shapes": list(SHAPES),
            "dataset_generation_s": round(generated_s, 1),
        },
    }
    with bench_database(var_dir):
        # Upsert throughput on a fresh database each run: a 20k sample, then the same sample read twice.
        sample = data[: min(len(data), 20_000)]
        log("ingest: unverified upserts, then a re-read (idempotent upserts), of a 20k sample")
        upsert_rate = ingest_events(os.urandom(32).hex(), sample, verify=False)
        reread_rate = ingest_events(os.urandom(32).hex(), sample + sample, verify=False)
    with cached_replica(data, seed, var_dir, log) as cached:
        relay_key = cached.relay_key
        result["config"]["replica_cache_generation_s"] = cached.generated_s
        result["ingest"] = {
            "verified_events_per_s": cached.verified_events_per_s,
            "upsert_events_per_s": upsert_rate and round(upsert_rate),
            "upsert_with_duplicates_events_per_s": reread_rate and round(reread_rate),
            "materialized_events": cached.materialized_events,
        }
        log("REQ latency: in process")
        result["in_process"] = time_in_process(relay_key, mix, seconds)

        log("REQ latency: bare replica server over WebSocket")
        with bare_server(cached.database_url, relay_key) as url:
            result["bare_ws"] = asyncio.run(_time_ws(url, mix, seconds))
            bare_answers = asyncio.run(_first_answers(url, mix))

        # The relay row the gateway needs to serve the relay from its replica, in the cached database.
        ensure_offline_relay(relay_key)
        log("REQ latency: the gateway (uvicorn, consumer, session, replica fallback) over WebSocket")
        with gateway_server(cached.database_url) as gateway:
            url = gateway.relay_url(relay_key)
            result["gateway_ws"] = asyncio.run(_time_ws(url, mix, seconds))
            gateway_answers = asyncio.run(_first_answers(url, mix))
            if profile is not None:
                log(f"profile: the same mix again while py-spy samples the gateway (into {profile})")
                with profiled(gateway.pid, profile):
                    asyncio.run(_time_ws(url, mix, seconds))
                result["gateway_profile"] = {"file": str(profile), **hot_spots(profile)}
    result["agreement"] = {
        shape: {"gateway_bare": _agreement(gateway_answers[shape], bare_answers[shape])} for shape in SHAPES
    }

    result["nostr_relay_ws"] = None
    result["ratios"] = {}
    if compare:
        try:
            import nostr_relay  # noqa: F401
        except ImportError:
            result["nostr_relay_ws"] = {
                "skipped": "nostr-relay is not installed (pip install -r requirements-bench.txt)"
            }
            return result
        folder = cache_dir(var_dir) / f"nostr-relay-{seed}-{events}"
        port = free_port()
        proc: subprocess.Popen[bytes] | None = None
        try:
            log("nostr-relay: the same events loaded with its load command (once; reused by later runs)")
            proc, load_rate = start_nostr_relay(folder, events_file, events, port, timeout_s=1800)
            wait_port(port, 60)
            result["ingest"]["nostr_relay_load_events_per_s"] = round(load_rate)
            log("REQ latency: nostr-relay over WebSocket")
            result["nostr_relay_ws"] = asyncio.run(_time_ws(f"ws://127.0.0.1:{port}/", mix, seconds))
            nostr_answers = asyncio.run(_first_answers(f"ws://127.0.0.1:{port}/", mix))
        finally:
            if proc is not None:
                stop_process(proc)
        ours, theirs = result["gateway_ws"], result["nostr_relay_ws"]
        for shape in SHAPES:
            result["ratios"][shape] = {
                "p50": _ratio(theirs[shape], ours[shape], "p50_ms"),
                "p99": _ratio(theirs[shape], ours[shape], "p99_ms"),
            }
            result["agreement"][shape]["nostr_relay"] = _agreement(gateway_answers[shape], nostr_answers[shape])
        if result["ingest"]["verified_events_per_s"]:
            result["ratios"]["ingest"] = round(
                result["ingest"]["verified_events_per_s"] / result["ingest"]["nostr_relay_load_events_per_s"], 2
            )
    return result


def _cell(d: dict[str, Any]) -> str:
    return f"{d.get('p50_ms', '-')}/{d.get('p99_ms', '-')}"


def _agree_text(agree: dict[str, int] | None) -> str:
    return f"{agree['same_order']}/{agree['same_set']} of {agree['of']}" if agree else "-"


def print_report(result: dict[str, Any]) -> None:
    print(json.dumps(result["config"]))
    print("ingest:", json.dumps(result["ingest"]))
    print(
        f"{'shape':26} {'in-proc p50/p99 ms':>19} {'bare ws p50/p99':>16} {'gateway p50/p99':>16} "
        f"{'nostr-relay p50/p99':>20} {'ratio p50/p99':>14} {'events':>6} {'gw=bare':>11} {'gw~nostr-relay':>14}"
    )
    theirs = result.get("nostr_relay_ws") or {}
    for shape in SHAPES:
        c = theirs.get(shape, {}) if isinstance(theirs, dict) else {}
        r = result["ratios"].get(shape, {})
        agree = result["agreement"].get(shape, {})
        print(
            f"{shape:26} {_cell(result['in_process'][shape]):>19} {_cell(result['bare_ws'][shape]):>16} "
            f"{_cell(result['gateway_ws'][shape]):>16} {_cell(c):>20} "
            f"{str(r.get('p50', '-')) + '/' + str(r.get('p99', '-')):>14} "
            f"{result['gateway_ws'][shape].get('mean_events', 0):>6} "
            f"{_agree_text(agree.get('gateway_bare')):>11} {_agree_text(agree.get('nostr_relay')):>14}"
        )
    print("ratio: nostr-relay ÷ gateway; events: mean per gateway answer; gw=bare, gw~nostr-relay: check REQs")
    print("answered with the same ids in the same order / as the same set")
    if "ingest" in result["ratios"]:
        print(f"ingest ratio (replica verified ÷ nostr-relay load): {result['ratios']['ingest']}")
    if isinstance(theirs, dict) and "skipped" in theirs:
        print(f"nostr-relay comparison skipped: {theirs['skipped']}")
    profile = result.get("gateway_profile")
    if profile:
        print(
            f"gateway profile ({profile['file']}): {profile['samples']} samples, {profile['idle']} % idle; "
            "share of the busy samples in %:"
        )
        for label in ("self", "project"):
            print(f"  {label}:")
            for frame, share in profile[label]:
                print(f"    {share:5.1f}  {frame}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=20.0, help="time budget per latency phase")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-compare", action="store_true", help="skip nostr-relay")
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument(
        "--profile", type=Path, help="also sample the gateway with py-spy into this file (raw collapsed stacks)"
    )
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--relay", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve_replica(args.serve, args.relay)
        return 0
    if args.profile and py_spy() is None:
        parser.error("--profile needs py-spy (pip install py-spy)")  # before minutes of work, not after
    result = run(args.events, seconds=args.seconds, compare=not args.no_compare, seed=args.seed, profile=args.profile)
    print_report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
