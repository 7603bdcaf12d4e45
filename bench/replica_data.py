"""Replica benchmark data: the signed data set (generated once, cached as JSON lines), the query mix drawn from
it, the materialized replica database (generated once per (seed, count) into a dedicated database and reused
by later runs, see :func:`cached_replica`), and the ingest path that fills it.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# How often a long materialization tells its progress.
PROGRESS_SECONDS = 30.0
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


def cache_dir(var_dir: Path) -> Path:
    """``$HYPERTUNA_VAR_DIR/bench-cache/``: data sets and materialized databases kept between runs."""
    folder = var_dir / "bench-cache"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def load_dataset(count: int, seed: int, var_dir: Path) -> tuple[list[dict[str, Any]], Path, float]:
    """The dataset and its JSON-lines file (cached); returns the generation time (0 when cached)."""
    path = cache_dir(var_dir) / f"replica-events-{seed}-{count}.jsonl"
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


def setup_django() -> None:
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
        path = cache_dir(var_dir) / "replica-bench.sqlite3"
        path.unlink(missing_ok=True)
        test_settings["NAME"] = str(path)
    else:
        # Named after the configured database, so benches pointed at different databases never collide.
        test_settings["NAME"] = f"{connection.settings_dict['NAME']}_run"
    original = connection.settings_dict["NAME"]
    name = connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    try:
        yield database_url(name)
    finally:
        # Destroys the test database and points the connection back at the configured one.
        connection.creation.destroy_test_db(original, verbosity=0)


def database_url(name: str) -> str:
    """A DATABASE_URL for child processes: the configured server, database ``name``."""
    from django.db import connection

    if connection.vendor == "sqlite":
        return f"sqlite:///{name}"
    s = connection.settings_dict
    auth = s["USER"] + (f":{s['PASSWORD']}" if s.get("PASSWORD") else "")
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{name}"


@dataclass
class CachedReplica:
    """A materialized replica of the whole data set, kept between runs (see :func:`cached_replica`)."""

    database_url: str
    relay_key: str
    verified_events_per_s: float | None  # measured when the cache was generated (None: nothing left to feed)
    generated_s: float  # 0 when reused
    materialized_events: int


def _use_database(name: str) -> None:
    from django.conf import settings
    from django.db import connection

    connection.close()
    connection.settings_dict["NAME"] = name
    settings.DATABASES["default"]["NAME"] = name


def _recreate_database(name: str) -> None:
    from django.db import connection

    if connection.vendor == "sqlite":
        Path(name).unlink(missing_ok=True)
        return
    with connection._nodb_cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}"')
        cursor.execute(f'CREATE DATABASE "{name}"')


def _database_exists(name: str) -> bool:
    from django.db import connection

    if connection.vendor == "sqlite":
        return Path(name).exists()
    with connection._nodb_cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
        return cursor.fetchone() is not None


@contextmanager
def cached_replica(
    events: list[dict[str, Any]], seed: int, var_dir: Path, log: Callable[[str], None]
) -> Iterator[CachedReplica]:
    """The data set materialized through the sync's batch service (signatures verified) into a dedicated
    database — ``<DATABASE NAME>_cache_<seed>_<count>`` on Postgres, a file under ``bench-cache/`` on
    SQLite — generated once and reused by later runs (a marker file under ``bench-cache/`` is written only
    after a complete load). Each run applies pending migrations to it, so new indexes are measured.
    The default connection points at it while the context is open. Read-only for the measurements."""
    from django.core.management import call_command
    from django.db import connection

    from replicas.models import Replica

    count = len(events)
    folder = cache_dir(var_dir)
    marker = folder / f"replica-db-{seed}-{count}.json"
    progress = folder / f"replica-db-{seed}-{count}.partial.json"
    # The connection's name, not settings': creating and destroying a test database leaves settings changed.
    original = connection.settings_dict["NAME"]
    if connection.vendor == "sqlite":
        name = str(folder / f"replica-{seed}-{count}.sqlite3")
    else:
        name = f"{original}_cache_{seed}_{count}"
    info = json.loads(marker.read_text()) if marker.exists() else None
    if info is not None and (info.get("database") != name or not _database_exists(name)):
        info = None
    try:
        if info is None:
            # A generation cut short (the run was stopped) resumes from the replica's checkpoint.
            partial = json.loads(progress.read_text()) if progress.exists() else None
            resume = partial is not None and partial.get("database") == name and _database_exists(name)
            log(f"replica cache: {'resuming' if resume else 'materializing'} {count} events into {name} (once)")
            started = time.perf_counter()
            if resume:
                assert partial is not None
                relay_key = partial["relay_key"]
            else:
                relay_key = os.urandom(32).hex()
                _recreate_database(name)
                progress.write_text(json.dumps({"database": name, "relay_key": relay_key}))
            _use_database(name)
            call_command("migrate", verbosity=0, interactive=False)
            rate = ingest_events(relay_key, events, verify=True, log=log)
            analyze()
            info = {"database": name, "relay_key": relay_key, "verified_events_per_s": rate and round(rate)}
            marker.write_text(json.dumps(info))
            progress.unlink(missing_ok=True)
            generated_s = time.perf_counter() - started
        else:
            log(f"replica cache: reusing {name}")
            _use_database(name)
            call_command("migrate", verbosity=0, interactive=False)
            analyze()
            generated_s = 0.0
        yield CachedReplica(
            database_url=database_url(name),
            relay_key=info["relay_key"],
            verified_events_per_s=info["verified_events_per_s"],
            generated_s=round(generated_s, 1),
            materialized_events=Replica.objects.get(relay_key=info["relay_key"]).event_count,
        )
    finally:
        _use_database(original)


# --- replica side -------------------------------------------------------------------------------------


def ingest_events(
    relay_key: str,
    events: list[dict[str, Any]],
    *,
    verify: bool,
    log: Callable[[str], None] | None = None,
) -> float | None:
    """Feed events through the sync's batch service from the replica's checkpoint (0 for a new replica);
    returns events per second over what was fed (None if nothing was left to feed). With ``log``, the
    progress is told every ``PROGRESS_SECONDS``."""
    from django.conf import settings

    from replicas import services
    from replicas.sources import ViewBatch, ViewEntry

    settings.HYPERTUNA_REPLICA_VERIFY_SIGNATURES = verify
    checkpoint = services.begin_sync(relay_key=relay_key).checkpoint
    first = checkpoint
    size = settings.HYPERTUNA_REPLICA_BATCH_SIZE
    length = len(events) + 1
    started = told = time.perf_counter()
    # Block 0 is the Hyperbee header; event i lives in block i + 1 (index records are skipped by the bridge).
    while checkpoint < length:
        if log is not None and time.perf_counter() - told >= PROGRESS_SECONDS and checkpoint > first:
            told = time.perf_counter()
            rate = (checkpoint - first) / (told - started)
            left_min = (length - checkpoint) / rate / 60
            log(f"  {checkpoint - 1:,} of {length - 1:,} events ({rate:,.0f}/s, ~{left_min:.0f} min left)")
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
    fed = length - max(1, first)
    return fed / elapsed if fed > 0 else None


def analyze() -> None:
    """Fresh statistics (and, on Postgres, the visibility map that makes the scans index-only), as
    autovacuum would provide on a long-running node."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE" if connection.vendor == "postgresql" else "ANALYZE")
