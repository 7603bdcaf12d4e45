"""Replica benchmark: REQ latency from the materialized replica, sync/upsert throughput, and the same REQ mix
against the PyPI ``nostr-relay`` package on the same events, in the same run.

``run(events=100_000) -> dict``; ``python -m bench.replica_bench [--events N] [--seconds S] [--no-compare]``.

Method (performance-anchors §6):

- **Data**: ``events`` events from a fixed seed, shaped like anchors §3.2 (2,000 authors with cubic skew;
  kinds 1 ≈ 50 %, 7 ≈ 25 %, 6, 0, 3; an ``e`` tag into earlier events with quadratic skew, a ``p`` tag from
  the author skew, a ``t`` tag from 1,000 hashtags with quadratic skew; 120 B of content). Every event is
  really signed (BIP-340 via coincurve) so both relays verify the same signatures. Cached in
  ``$HYPERTUNA_VAR_DIR/bench/`` per (seed, count).
- **Database**: a throw-away database (``hypertuna_bench`` on Postgres when ``DATABASE_URL`` is Postgres,
  else a SQLite file under the var dir), created and destroyed by the run.
- **Sync/upsert throughput**: the events are fed through ``services.ingest_view_batch`` (the code path of
  the replica sync) in batches of ``HYPERTUNA_REPLICA_BATCH_SIZE`` view blocks, with signature
  verification on (``verified_events_per_s``) and, on a second replica, off (``upsert_events_per_s``).
- **REQ latency** per shape, three ways: ``in_process`` (``query_events`` call: SQL + row decoding),
  ``replica_ws`` (a subprocess serving the replica over a loopback WebSocket — REQ in, EVENT… EOSE out —
  like the gateway's replica path) and ``nostr_relay_ws`` (``nostr-relay`` served by uvicorn on loopback,
  loaded with the same events through its own ``load`` command, i.e. its storage API with its
  signature validator on). The same client drives both WebSockets: one connection, sequential REQs, time
  from sending REQ to receiving EOSE, frames counted. Shapes and parameters are identical for both.
  ``nostr-relay`` runs on its default SQLite storage (its Postgres path needs asyncpg); compare it with
  this project on SQLite for a like-for-like storage engine.
- **Ratios** are nostr-relay ÷ replica (above 1 means the replica is faster), computed within the run.

Everything listens on 127.0.0.1 only; each phase has a time budget and the run stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

BASE_TIME = 1_760_000_000
SHAPES = (
    "kinds_limit50",
    "ids_20",
    "authors50_kinds_limit100",
    "tag_e_selective",
    "tag_p_hot_kinds_limit100",
    "tag_t_popular_limit50",
    "author_limit20",
    "time_window_limit100",
    "eose_only",
)


# --- data ----------------------------------------------------------------------------------------------


def _skewed(rng: random.Random, n: int, power: int) -> int:
    return int(n * rng.random() ** power)


def generate_events(count: int, seed: int = 1) -> list[dict[str, Any]]:
    """Signed events (dicts in NIP-01 field order), deterministic for (count, seed)."""
    import hashlib

    import coincurve

    from hypertuna.nostr import compute_id

    rng = random.Random(seed)
    n_authors = 2000
    keys = [
        coincurve.PrivateKey(hashlib.sha256(f"bench-author-{seed}-{i}".encode()).digest()) for i in range(n_authors)
    ]
    pubkeys = [k.public_key_xonly.format().hex() for k in keys]
    hashtags = [f"tag{i}" for i in range(1000)]
    out: list[dict[str, Any]] = []
    for i in range(count):
        author = _skewed(rng, n_authors, 3)
        roll = rng.random()
        kind = 1 if roll < 0.5 else 7 if roll < 0.75 else 6 if roll < 0.9 else 0 if roll < 0.95 else 3
        tags: list[list[str]] = []
        if out:
            tags.append(["e", out[len(out) - 1 - _skewed(rng, len(out), 2)]["id"]])
        tags.append(["p", pubkeys[_skewed(rng, n_authors, 3)]])
        tags.append(["t", hashtags[_skewed(rng, 1000, 2)]])
        created_at = BASE_TIME + i * 3 + rng.randrange(3)
        content = f"{i:08d} " + "x" * 111
        event_id = compute_id(pubkeys[author], created_at, kind, tags, content)
        sig = keys[author].sign_schnorr(bytes.fromhex(event_id), bytes(32)).hex()
        out.append(
            {
                "id": event_id,
                "pubkey": pubkeys[author],
                "created_at": created_at,
                "kind": kind,
                "tags": tags,
                "content": content,
                "sig": sig,
            }
        )
    return out


def load_dataset(count: int, seed: int, var_dir: Path) -> tuple[list[dict[str, Any]], Path, float]:
    """The dataset and its JSON-lines file (cached); returns the generation time (0 when cached)."""
    folder = var_dir / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"replica-events-{seed}-{count}.jsonl"
    started = time.perf_counter()
    if path.exists():
        events = [json.loads(line) for line in path.read_text().splitlines() if line]
        if len(events) == count:
            return events, path, 0.0
    events = generate_events(count, seed)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(json.dumps(e, separators=(",", ":")) for e in events) + "\n")
    tmp.replace(path)
    return events, path, time.perf_counter() - started


def query_mix(events: list[dict[str, Any]], seed: int, per_shape: int) -> dict[str, list[dict[str, Any]]]:
    """``per_shape`` concrete filters per shape, drawn from the data (hot values come from the skew)."""
    rng = random.Random(seed + 7)
    by_author: dict[str, int] = {}
    p_count: dict[str, int] = {}
    t_count: dict[str, int] = {}
    for e in events:
        by_author[e["pubkey"]] = by_author.get(e["pubkey"], 0) + 1
        for name, value in ((t[0], t[1]) for t in e["tags"]):
            if name == "p":
                p_count[value] = p_count.get(value, 0) + 1
            elif name == "t":
                t_count[value] = t_count.get(value, 0) + 1
    authors = sorted(by_author, key=by_author.get, reverse=True)  # type: ignore[arg-type]
    hot_p = sorted(p_count, key=p_count.get, reverse=True)[:20]  # type: ignore[arg-type]
    hot_t = sorted(t_count, key=t_count.get, reverse=True)[:50]  # type: ignore[arg-type]
    span = events[-1]["created_at"] - events[0]["created_at"]
    mix: dict[str, list[dict[str, Any]]] = {shape: [] for shape in SHAPES}
    for _ in range(per_shape):
        mix["kinds_limit50"].append({"kinds": [rng.choice([1, 7, 6])], "limit": 50})
        mix["ids_20"].append({"ids": [rng.choice(events)["id"] for _ in range(20)]})
        mix["authors50_kinds_limit100"].append(
            {"authors": rng.sample(authors[:400], 50), "kinds": [1, 6], "limit": 100}
        )
        mix["tag_e_selective"].append({"#e": [rng.choice(events)["id"]], "kinds": [1, 7], "limit": 500})
        mix["tag_p_hot_kinds_limit100"].append({"#p": [rng.choice(hot_p)], "kinds": [1, 7], "limit": 100})
        mix["tag_t_popular_limit50"].append({"#t": [rng.choice(hot_t)], "limit": 50})
        mix["author_limit20"].append({"authors": [rng.choice(authors[:1000])], "limit": 20})
        start = events[0]["created_at"] + rng.randrange(max(1, span))
        mix["time_window_limit100"].append({"since": start, "until": start + 600, "limit": 100})
        mix["eose_only"].append({"ids": [os.urandom(32).hex()]})
    return mix


def percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {"n": 0}
    ordered = sorted(samples)
    p99_index = min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))
    return {
        "n": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 3),
        "p99_ms": round(ordered[p99_index] * 1000, 3),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 3),
    }


# --- database -------------------------------------------------------------------------------------------


def _setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hypertuna.settings")
    import django

    django.setup()


@contextmanager
def bench_database(var_dir: Path) -> Iterator[str]:
    """A fresh database for the run (destroyed after); yields a DATABASE_URL for child processes."""
    from django.conf import settings
    from django.db import connection

    vendor = connection.vendor
    test_settings = settings.DATABASES["default"].setdefault("TEST", {})
    if vendor == "sqlite":
        path = var_dir / "bench" / "replica-bench.sqlite3"
        path.unlink(missing_ok=True)
        test_settings["NAME"] = str(path)
    else:
        test_settings["NAME"] = "hypertuna_bench"
    name = connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    try:
        if vendor == "sqlite":
            yield f"sqlite:///{name}"
        else:
            s = connection.settings_dict
            auth = s["USER"] + (f":{s['PASSWORD']}" if s.get("PASSWORD") else "")
            yield f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{name}"
    finally:
        connection.creation.destroy_test_db(name, verbosity=0)


# --- replica side -------------------------------------------------------------------------------------


def ingest_events(relay_key: str, events: list[dict[str, Any]], *, verify: bool) -> float:
    """Feed events through the sync's batch service; returns events per second."""
    from django.conf import settings

    from replicas import services
    from replicas.sources import ViewBatch, ViewEntry

    settings.HYPERTUNA_REPLICA_VERIFY_SIGNATURES = verify
    services.begin_sync(relay_key=relay_key)
    size = settings.HYPERTUNA_REPLICA_BATCH_SIZE
    length = len(events) + 1
    checkpoint = 0
    started = time.perf_counter()
    # Block 0 is the Hyperbee header; event i lives in block i + 1 (index records are skipped by the bridge).
    while checkpoint < length:
        end = min(length, checkpoint + size)
        entries = [
            ViewEntry(seq=seq, key=events[seq - 1]["id"], value=json.dumps(events[seq - 1], separators=(",", ":")))
            for seq in range(max(1, checkpoint), end)
        ]
        result = services.ingest_view_batch(
            relay_key=relay_key, start_seq=checkpoint, batch=ViewBatch(entries=entries, length=length, next_seq=end)
        )
        checkpoint = result.checkpoint
    elapsed = time.perf_counter() - started
    settings.HYPERTUNA_REPLICA_VERIFY_SIGNATURES = True
    return len(events) / elapsed


def _analyze() -> None:
    """Fresh statistics (and, on Postgres, the visibility map that makes the scans index-only), as
    autovacuum would provide on a long-running node."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE" if connection.vendor == "postgresql" else "ANALYZE")


def time_in_process(relay_key: str, mix: dict[str, list[dict[str, Any]]], budget_s: float) -> dict[str, Any]:
    from hypertuna.nostr import Filter
    from replicas.selectors import query_events

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
    _setup_django()
    import websockets

    from hypertuna.nostr import ReqMessage, eose_frame, event_frame_from_json, parse_client_message
    from replicas.selectors import aquery_events

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


# --- nostr-relay side ------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _nostr_relay_config(folder: Path, port: int) -> Path:
    import yaml

    config = {
        "DEBUG": False,
        "relay_name": "bench",
        "storage": {
            "sqlalchemy.url": f"sqlite+aiosqlite:///{folder / 'nostr.sqlite3'}",
            "num_concurrent_reqs": 10,
            "num_concurrent_adds": 2,
            # Same checks as the replica: structure and signature (not the clock window).
            "validators": ["nostr_relay.validators.is_not_too_large", "nostr_relay.validators.is_signed"],
        },
        "verification": {"nip05_verification": "disabled", "expiration": 86400 * 30, "update_frequency": 3600},
        "gunicorn": {"bind": f"127.0.0.1:{port}", "workers": 1, "loglevel": "warning", "reload": False},
        "authentication": {"enabled": False, "valid_urls": [], "actions": {"save": "a", "query": "a"}},
        "message_timeout": 1800,
        "subscription_limit": 64,
        "max_limit": 6000,
        "hellthread_limit": 100,
        "logging": {"version": 1, "disable_existing_loggers": False, "loggers": {"nostr_relay": {"level": "WARNING"}}},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


_NR_PREPARE = """
import sys, os
from nostr_relay.config import Config
Config.load(sys.argv[1])
from alembic import config
import nostr_relay
config.main([f"-c{os.path.join(os.path.dirname(nostr_relay.__file__), 'alembic.ini')}", "upgrade", "head"])
"""


def start_nostr_relay(
    folder: Path, events_file: Path, port: int, timeout_s: float
) -> tuple[subprocess.Popen[bytes], float]:
    """Create nostr-relay's schema, load the events with its ``load`` command (timed), start its server."""
    config = _nostr_relay_config(folder, port)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # Only this interpreter with arguments built here (no outside input) is executed.
    subprocess.run(
        [sys.executable, "-c", _NR_PREPARE, str(config)],
        check=True,
        env=env,
        cwd=folder,
        capture_output=True,
        timeout=120,
    )
    started = time.perf_counter()
    with events_file.open("rb") as stdin:
        # nostr_relay.cli has no __main__ guard: call its click group the way its console script does.
        subprocess.run(
            [sys.executable, "-c", "from nostr_relay.cli import main; main()", "-c", str(config), "load"],
            stdin=stdin,
            check=True,
            env=env,
            cwd=folder,
            capture_output=True,
            timeout=timeout_s,
        )
    load_s = time.perf_counter() - started
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from nostr_relay.config import Config; Config.load({str(config)!r}); "
            "from nostr_relay.web import run_with_uvicorn; run_with_uvicorn()",
        ],
        env=env,
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    return proc, load_s


def _wait_port(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port}")


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


# --- WebSocket client -----------------------------------------------------------------------------------


async def _time_ws(url: str, mix: dict[str, list[dict[str, Any]]], budget_s: float) -> dict[str, Any]:
    """Sequential REQ → EOSE timings on one connection; the same code drives both servers."""
    import websockets

    out: dict[str, Any] = {}
    per_shape = budget_s / len(mix)
    async with websockets.connect(url, compression=None, max_size=2**24, open_timeout=30) as ws:
        n = 0

        async def req(f: dict[str, Any]) -> tuple[float, int]:
            nonlocal n
            n += 1
            sub = f"s{n}"
            started = time.perf_counter()
            await ws.send(json.dumps(["REQ", sub, f]))
            count = 0
            while True:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
                if frame[0] == "EVENT" and frame[1] == sub:
                    count += 1
                elif frame[0] == "EOSE" and frame[1] == sub:
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


def run(
    events: int = 100_000,
    *,
    seconds: float = 20.0,
    compare: bool = True,
    seed: int = 1,
    per_shape: int = 40,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> dict[str, Any]:
    """Run the benchmark (see the module docstring) and return the results.

    ``seconds`` is the time budget of each latency phase (split over the shapes); loading nostr-relay is
    capped at 15 minutes. Returns ``{"config", "ingest", "in_process", "replica_ws", "nostr_relay_ws",
    "ratios", "agreement"}``.
    """
    if events < 1000:
        raise ValueError("events must be at least 1000")
    _setup_django()
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
    with bench_database(var_dir) as database_url:
        relay_key = os.urandom(32).hex()
        log("ingest: verified upserts through the sync batch service")
        verified_rate = ingest_events(relay_key, data, verify=True)
        sample = data[: min(len(data), 20_000)]
        upsert_rate = ingest_events(os.urandom(32).hex(), sample, verify=False)
        log("ingest: re-read of the first 20k (idempotent upserts)")
        reread_rate = ingest_events(os.urandom(32).hex(), sample + sample, verify=False)
        _analyze()
        from replicas.models import Replica

        result["ingest"] = {
            "verified_events_per_s": round(verified_rate),
            "upsert_events_per_s": round(upsert_rate),
            "upsert_with_duplicates_events_per_s": round(reread_rate),
            "materialized_events": Replica.objects.get(relay_key=relay_key).event_count,
        }
        log("REQ latency: in process")
        result["in_process"] = time_in_process(relay_key, mix, seconds)

        port = _free_port()
        child_env = {**os.environ, "DATABASE_URL": database_url, "PYTHONUNBUFFERED": "1"}
        server = subprocess.Popen(
            [sys.executable, "-m", "bench.replica_bench", "--serve", str(port), "--relay", relay_key],
            env=child_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        try:
            line = server.stdout.readline() if server.stdout else b""
            if b"READY" not in line:
                raise RuntimeError("replica WebSocket server did not start")
            log("REQ latency: replica over WebSocket")
            result["replica_ws"] = asyncio.run(_time_ws(f"ws://127.0.0.1:{port}", mix, seconds))
            replica_answers = asyncio.run(_first_answers(f"ws://127.0.0.1:{port}", mix))
        finally:
            _stop(server)

    result["nostr_relay_ws"] = None
    result["ratios"] = {}
    result["agreement"] = {}
    if compare:
        try:
            import nostr_relay  # noqa: F401
        except ImportError:
            result["nostr_relay_ws"] = {
                "skipped": "nostr-relay is not installed (pip install -r requirements-bench.txt)"
            }
            return result
        folder = Path(tempfile.mkdtemp(prefix="nostr-relay-bench-", dir=var_dir / "bench"))
        port = _free_port()
        proc: subprocess.Popen[bytes] | None = None
        try:
            log("nostr-relay: loading the same events with its load command")
            proc, load_s = start_nostr_relay(folder, events_file, port, timeout_s=900)
            _wait_port(port, 60)
            result["ingest"]["nostr_relay_load_events_per_s"] = round(len(data) / load_s)
            log("REQ latency: nostr-relay over WebSocket")
            result["nostr_relay_ws"] = asyncio.run(_time_ws(f"ws://127.0.0.1:{port}/", mix, seconds))
            nostr_answers = asyncio.run(_first_answers(f"ws://127.0.0.1:{port}/", mix))
        finally:
            if proc is not None:
                _stop(proc)
            shutil.rmtree(folder, ignore_errors=True)
        ours, theirs = result["replica_ws"], result["nostr_relay_ws"]
        for shape in SHAPES:
            result["ratios"][shape] = {
                "p50": _ratio(theirs[shape], ours[shape], "p50_ms"),
                "p99": _ratio(theirs[shape], ours[shape], "p99_ms"),
            }
            pairs = list(zip(replica_answers[shape], nostr_answers[shape], strict=True))
            result["agreement"][shape] = {
                "same_order": sum(a == b for a, b in pairs),
                "same_set": sum(set(a) == set(b) for a, b in pairs),
                "of": len(pairs),
            }
        result["ratios"]["ingest"] = round(
            result["ingest"]["verified_events_per_s"] / result["ingest"]["nostr_relay_load_events_per_s"], 2
        )
    return result


def _print_report(result: dict[str, Any]) -> None:
    print(json.dumps(result["config"]))
    print("ingest:", json.dumps(result["ingest"]))
    header = (
        f"{'shape':26} {'in-proc p50/p99 ms':>20} {'replica ws p50/p99':>20} {'nostr-relay p50/p99':>20} "
        f"{'ratio p50/p99':>14} {'events ours/theirs':>18} {'same order/set':>14}"
    )
    print(header)
    theirs = result.get("nostr_relay_ws") or {}
    for shape in SHAPES:
        a, b = result["in_process"][shape], result["replica_ws"][shape]
        c = theirs.get(shape, {}) if isinstance(theirs, dict) else {}
        r = result["ratios"].get(shape, {})
        cell = lambda d: f"{d.get('p50_ms', '-')}/{d.get('p99_ms', '-')}"  # noqa: E731
        agree = result["agreement"].get(shape)
        agree_text = f"{agree['same_order']}/{agree['same_set']} of {agree['of']}" if agree else "-"
        print(
            f"{shape:26} {cell(a):>20} {cell(b):>20} {cell(c):>20} "
            f"{str(r.get('p50', '-')) + '/' + str(r.get('p99', '-')):>14} "
            f"{str(b.get('mean_events', 0)) + '/' + str(c.get('mean_events', '-')):>18} {agree_text:>14}"
        )
    if "ingest" in result["ratios"]:
        print(f"ingest ratio (replica verified ÷ nostr-relay load): {result['ratios']['ingest']}")
    if isinstance(theirs, dict) and "skipped" in theirs:
        print(f"nostr-relay comparison skipped: {theirs['skipped']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=20.0, help="time budget per latency phase")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-compare", action="store_true", help="skip nostr-relay")
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--relay", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve_replica(args.serve, args.relay)
        return 0
    result = run(args.events, seconds=args.seconds, compare=not args.no_compare, seed=args.seed)
    _print_report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
