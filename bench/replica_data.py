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
from collections.abc import Iterator
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


def analyze() -> None:
    """Fresh statistics (and, on Postgres, the visibility map that makes the scans index-only), as
    autovacuum would provide on a long-running node."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE" if connection.vendor == "postgresql" else "ANALYZE")
