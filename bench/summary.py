"""The issue's goal table, filled from one ``make bench`` run: each row's figure beside its goal and the
ratio figure ÷ goal, and the dated JSON report (``bench/results/<UTC date-time>.json``, format in
``bench/results/README.md``)."""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class Row:
    """One measured figure against its goal. ``at_most``: the goal is an upper bound (else a lower one)."""

    row: str
    section: str
    figure: float | None
    unit: str
    goal: float
    at_most: bool = True
    note: str = ""

    @property
    def ratio(self) -> float | None:
        return None if self.figure is None else round(self.figure / self.goal, 3)

    @property
    def met(self) -> bool:
        if self.figure is None:
            return False
        return self.figure <= self.goal if self.at_most else self.figure >= self.goal

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio, "met": self.met}


def _routing_rows(result: dict[str, Any]) -> list[Row]:
    from bench.routing_bench import LIVE_GOAL_MS, REQ_GOAL_P50_MARGIN_MS, REQ_GOAL_P99_MARGIN_MS

    rows = []
    for label, row in result["workers"].items():
        req = row["req"]
        rows += [
            Row("EOSE-only REQ, gateway over direct, p50", "routing", round(req["gateway_p50_ms"] - req["worker_p50_ms"], 3), "ms", REQ_GOAL_P50_MARGIN_MS, note=label),
            Row("EOSE-only REQ, gateway over direct, p99", "routing", round(req["gateway_p99_ms"] - req["worker_p99_ms"], 3), "ms", REQ_GOAL_P99_MARGIN_MS, note=label),
            Row("live delivery p50", "routing", round(row["live"]["p50_ms"], 3), "ms", LIVE_GOAL_MS, note=label),
        ]  # fmt: skip
    return rows


def _idle_rows(result: dict[str, Any]) -> list[Row]:
    from bench.idle_bench import CPU_GOAL_PERCENT, GOAL_SOCKETS, RSS_GOAL_KIB

    note = f"{result['sockets']} sockets (goal stated at {GOAL_SOCKETS})"
    return [
        Row("idle socket memory, web process", "idle", result["web_kib_per_socket"], "KiB", RSS_GOAL_KIB, note=note),
        Row("idle sockets CPU, web process", "idle", result["cpu_percent_of_a_core"]["web"], "% of a core",
            CPU_GOAL_PERCENT, note=note),
    ]  # fmt: skip


def _failover_rows(result: dict[str, Any]) -> list[Row]:
    from bench.fallback_bench import FIRST_ANSWER_GOAL_MS

    rows = []
    for how, row in result["failover"].items():
        ms = None if row["open_s"] is None else round(row["open_s"] * 1000, 1)
        rows.append(Row("held socket: first replica answer after the worker's end", "fallback", ms, "ms",
                        FIRST_ANSWER_GOAL_MS, note=how))  # fmt: skip
    return rows


def _replica_rows(result: dict[str, Any]) -> list[Row]:
    """Measured through the real gateway (``gateway_ws``; the note names it and gives the bare server's p50).
    A shape whose gateway answers differ from the bare replica server's gets no figure: a fast wrong answer is
    not a result."""
    from bench.replica_data import SHAPES

    events = result["config"]["events"]
    rows = []
    for shape in SHAPES:
        gateway, bare = result["gateway_ws"][shape], result["bare_ws"][shape]
        agree = result["agreement"][shape]["gateway_bare"]
        same = agree["same_order"] == agree["of"]
        note = (
            f"{shape}, {events} events, {result['config']['database']}, through the gateway "
            f"(bare server p50 {bare['p50_ms']} ms)"
        )
        if not same:
            note += f"; gateway answers differ from the bare server's ({agree['same_order']} of {agree['of']} same)"
        rows += [
            Row("replica REQ over WebSocket p50", "replicas", gateway["p50_ms"] if same else None, "ms", 2.0,
                note=note),
            Row("replica REQ over WebSocket p99", "replicas", gateway["p99_ms"] if same else None, "ms", 10.0,
                note=note),
        ]  # fmt: skip
        ratio = result["ratios"].get(shape, {}).get("p50")
        if ratio is not None:
            rows.append(Row("nostr-relay p50 / replica p50", "replicas", ratio if same else None, "x", 10.0,
                            at_most=False, note=note))  # fmt: skip
    return rows


def _capacity_rows(result: dict[str, Any]) -> list[Row]:
    from bench.capacity_bench import GOAL_PER_S, WORKER_KINDS

    note = f"{result['workers']} {WORKER_KINDS[result.get('store', 'autobase')]}, {result['clients']} clients"
    return [Row("EVENT->OK through one node", "capacity", result["events_per_s"], "/s", GOAL_PER_S, False, note)]


_ROWS = {
    "routing": _routing_rows,
    "idle": _idle_rows,
    "fallback": _failover_rows,
    "replicas": _replica_rows,
    "capacity": _capacity_rows,
}


def goal_rows(sections: dict[str, Any]) -> list[Row]:
    """The goal rows of every section that ran (sections without a goal row add none)."""
    return [row for name, result in sections.items() if name in _ROWS for row in _ROWS[name](result)]


def table(rows: list[Row]) -> str:
    lines = ["Goals (figure | goal | figure / goal):"]
    for r in rows:
        figure = "none" if r.figure is None else f"{r.figure:g} {r.unit}"
        bound = "<=" if r.at_most else ">="
        ratio = "-" if r.ratio is None else f"x{r.ratio:g}"
        lines.append(
            f"  {'met   ' if r.met else 'MISSED'} {r.row}: {figure} | {bound} {r.goal:g} {r.unit} | {ratio}"
            + (f"  [{r.note}]" if r.note else "")
        )
    return "\n".join(lines)


def write_report(
    sections: dict[str, Any],
    argv: list[str],
    started: datetime,
    host_speed: dict[str, Any] | None = None,
    folder: Path = RESULTS_DIR,
) -> Path:
    """``<folder>/<UTC start, YYYYmmddTHHMMSSZ>.json`` with every section's figures, the goal rows and the host's
    speed (:mod:`bench.hostspeed`, measured before and after the sections)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    report = {
        "started": started.isoformat(),
        "finished": datetime.now(UTC).isoformat(),
        "argv": argv,
        "host": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": _cpus(),
            "speed": host_speed,
        },
        "sections": sections,
        "goals": [row.as_dict() for row in goal_rows(sections)],
    }
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return path


def _cpus() -> int | None:
    import os

    return os.cpu_count()
