"""``make bench``: every benchmark of the repository, one run, ratios printed.

Sections: routing (gateway hop vs direct bridge call) and replicas (replica REQ latency and sync
throughput beside a Python relay from PyPI on the same data), burst (2,000 simultaneous WebSocket connects over a
Redis channel layer: errors and stale group members), fallback (a relay whose worker goes away: first replica
answer, EVENT→OK under a lease, under refusal and with the escrow down). ``python -m bench routing`` runs one.
"""

from __future__ import annotations

import sys
import time


def main(argv: list[str]) -> int:
    wanted = set(argv) or {"routing", "replicas", "burst", "fallback"}
    if "routing" in wanted:
        from bench import routing_bench

        started = time.monotonic()
        print(routing_bench.report(routing_bench.run()))
        print(f"  (routing section took {time.monotonic() - started:.0f} s)\n", flush=True)
    if "replicas" in wanted:
        from bench import replica_bench

        started = time.monotonic()
        replica_bench.main([]) if hasattr(replica_bench, "main") else print(replica_bench.run())
        print(f"  (replicas section took {time.monotonic() - started:.0f} s)", flush=True)
    if "burst" in wanted:
        from bench import burst_bench

        started = time.monotonic()
        print(burst_bench.report(burst_bench.run()))
        print(f"  (burst section took {time.monotonic() - started:.0f} s)", flush=True)
    if "fallback" in wanted:
        from bench import fallback_bench

        started = time.monotonic()
        print(fallback_bench.report(fallback_bench.run()))
        print(f"  (fallback section took {time.monotonic() - started:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
