"""``make bench``: every benchmark of the repository, one run, ratios printed.

Sections: routing (gateway hop vs direct bridge call) and replicas (replica REQ latency and sync
throughput beside a Python relay from PyPI on the same data), burst (2,000 simultaneous WebSocket connects over a
Redis channel layer: errors and stale group members), fallback (a relay whose worker goes away: first replica
answer, EVENT→OK under a lease, under refusal and with the escrow down; ``failover`` names its first figure,
the held socket's first answer after a SIGKILL), idle (N idle WebSockets: memory per socket and CPU per
process), capacity (EVENT→OK/s through one node over several workers). ``python -m bench routing`` runs one;
``--events N`` sizes the replica data set (cached under var/bench-cache/), ``--sockets N`` the idle section,
``--workers N`` and ``--store memory|autobase`` the capacity section's workers.

The run measures the host before and after the sections (:mod:`bench.hostspeed`: loopback round trip, one
EVENT's parse and verification, Postgres ``SELECT 1``), so figures from different machines, or from one
shared machine at different times, compare. Every section prints its
figures beside their goals; the run ends with the goal table (figure, goal, ratio) and writes every figure to
``bench/results/<UTC date-time>.json`` (format: bench/results/README.md).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from datetime import UTC, datetime
from typing import Any

SECTIONS = ("routing", "replicas", "burst", "fallback", "idle", "capacity")
MODULES = {name: f"{'replica' if name == 'replicas' else name}_bench" for name in SECTIONS}


def _run(name: str, module: Any, args: argparse.Namespace) -> Any:
    """One section's figures, with the options that section takes."""
    if name == "replicas":
        return module.run(args.events, seconds=args.seconds, compare=not args.no_compare)
    if name == "idle":
        return module.run(args.sockets)
    if name == "capacity":
        return module.run(args.workers, args.store)
    return module.run()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("sections", nargs="*", metavar="SECTION", help=f"any of {', '.join(SECTIONS)}, failover")
    parser.add_argument("--events", type=int, default=100_000, help="replica data set size (default 100000)")
    parser.add_argument("--seconds", type=float, default=20.0, help="replica latency budget per phase")
    parser.add_argument("--no-compare", action="store_true", help="replicas: skip nostr-relay")
    parser.add_argument("--sockets", type=int, default=1000, help="idle sockets to hold (default 1000)")
    parser.add_argument("--workers", type=int, default=3, help="capacity: reference workers (default 3)")
    parser.add_argument(
        "--store",
        choices=("memory", "autobase"),
        default="memory",
        help="capacity: the workers keep events in memory (default, measures the gateway) or in their Autobase",
    )
    args = parser.parse_args(argv)
    unknown = set(args.sections) - {*SECTIONS, "failover"}
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    wanted = set(args.sections) or set(SECTIONS)
    if "failover" in wanted:
        wanted.add("fallback")
    began = datetime.now(UTC)
    from bench import hostspeed, summary

    # The host's speed before and after the sections: on a shared host it changes within minutes.
    host_speed = {"start": hostspeed.measure()}
    print(hostspeed.report(host_speed["start"]), flush=True)
    sections: dict[str, Any] = {}
    for name in SECTIONS:  # in this order, whatever order they were named in
        if name not in wanted:
            continue
        module = importlib.import_module(f"bench.{MODULES[name]}")
        started = time.monotonic()
        sections[name] = _run(name, module, args)
        if name == "replicas":
            module.print_report(sections[name])
        else:
            print(module.report(sections[name]))
        print(f"  ({name} section took {time.monotonic() - started:.0f} s)", flush=True)
    host_speed["end"] = hostspeed.measure()
    print(hostspeed.report(host_speed["end"], "host, after the sections"))
    print()
    print(summary.table(summary.goal_rows(sections)))
    print(f"report: {summary.write_report(sections, argv, began, host_speed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
