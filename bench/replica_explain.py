"""Query plans of the replica benchmark's shapes on the cached data set: ``EXPLAIN (ANALYZE, BUFFERS)`` of
the statements ``replicas.queries.query_events`` runs for the first filter of each shape (the newest-events
probe, then the per-range plan when the probe falls short). Postgres only; reuses the cache of
:mod:`bench.replica_data` (generating it if needed). ``python -m bench.replica_explain [--events N] [SHAPE…]``.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from bench.replica_data import SHAPES, cached_replica, load_dataset, query_mix, setup_django


def explain(events: int, shapes: list[str], seed: int = 1) -> str:
    setup_django()
    from django.conf import settings
    from django.db import connection

    from hypertuna.nostr import Filter
    from replicas import queries

    if connection.vendor != "postgresql":
        raise SystemExit("query plans are shown for Postgres only: set DATABASE_URL")
    data, _, _ = load_dataset(events, seed, Path(settings.VAR_DIR))
    mix = query_mix(data, seed, 1)
    out: list[str] = []
    log = lambda line: print(line, file=sys.stderr)  # noqa: E731
    with cached_replica(data, seed, Path(settings.VAR_DIR), log) as cached, connection.cursor() as cursor:
        for shape in shapes:
            raw = mix[shape][0]
            f = Filter.from_json(raw)
            limit = min(f.limit or settings.HYPERTUNA_REPLICA_MAX_LIMIT, settings.HYPERTUNA_REPLICA_MAX_LIMIT)
            statements = []
            probe = queries._probe_sql(cached.relay_key, f, limit, postgres=True)
            if probe is not None:
                statements.append(("probe", queries._with_json(cached.relay_key, *probe)))
            statements.append(("per-range plan", queries._filter_sql(cached.relay_key, f, limit, postgres=True)))
            for label, (sql, params) in statements:
                queries.query_events(cached.relay_key, [f])  # warm caches as a serving node would be
                cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {sql}", params)
                plan = _LONG_ARRAY.sub(_abbreviated, "\n".join(row[0] for row in cursor.fetchall()))
                out.append(f"--- {shape} ({label}); filter shape {_shape_of(raw)}\n{plan}\n")
    return "\n".join(out)


# A literal array of many hex keys (an ANY(...) list) makes a plan line unreadable: its length is kept.
_LONG_ARRAY = re.compile(r"'\{(\"?\\\\x[0-9a-f]+\"?,?){4,}\}'")


def _abbreviated(match: re.Match[str]) -> str:
    return f"'{{... {match.group(0).count(',') + 1} keys ...}}'"


def _shape_of(raw: dict[str, object]) -> str:
    return ", ".join(f"{k}: {len(v)} values" if isinstance(v, list) else f"{k}: {v}" for k, v in raw.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("shapes", nargs="*", default=list(SHAPES))
    args = parser.parse_args(argv)
    print(explain(args.events, args.shapes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
