"""How fast the host is, measured at the start of every ``make bench`` run, so that figures taken on different
machines can be compared (the goals are absolute times and rates; the same code measures twice as slow on a
host twice as slow).

Three floors the gateway's figures stand on:

- ``loopback_rtt_ms``: a TCP round trip over 127.0.0.1 between two threads (one small message each way), the
  floor of every hop a frame takes between the benches' processes (client, web, bridge, worker, Postgres);
- ``event_check_us``: one client EVENT frame parsed and its event verified (JSON, NIP-01 id hash, BIP-340
  signature) with the gateway's own code: the fixed CPU cost of each EVENT in the web process. Its p10 is the
  host's speed when nothing else competes for the core, its p50 the speed the benches got (on a shared host
  the same check was seen to take 70 µs and 130 µs within one second);
- ``postgres_select1_ms``: ``SELECT 1`` over a connection to ``DATABASE_URL`` (Postgres only): the floor of a
  replica answer.

Each is a percentile over a fixed number of repetitions; the whole takes about a second. ``python -m bench.hostspeed``.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import threading
import time
from typing import Any

from hypertuna.nostr import EventMessage, parse_client_message, sign_event, verify_event

ROUND_TRIPS = 2000
EVENT_CHECKS = 2000
SELECTS = 500
MESSAGE = b"x" * 100


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("peer closed")
        data += chunk
    return data


def loopback_rtt(round_trips: int = ROUND_TRIPS) -> dict[str, float]:
    """p50 and p99 of a TCP round trip over loopback (an echoing thread; Nagle off on both ends)."""
    with socket.create_server(("127.0.0.1", 0)) as server:

        def echo() -> None:
            conn, _ = server.accept()
            with conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                while data := conn.recv(len(MESSAGE)):
                    conn.sendall(data)

        echoer = threading.Thread(target=echo, name="hostspeed-echo", daemon=True)
        echoer.start()
        samples: list[float] = []
        with socket.create_connection(server.getsockname()) as client:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for _ in range(round_trips + 50):  # the first 50 warm up
                started = time.perf_counter()
                client.sendall(MESSAGE)
                _recv_exactly(client, len(MESSAGE))
                samples.append((time.perf_counter() - started) * 1000)
        echoer.join(timeout=5)
    del samples[:50]
    return {"p50": round(statistics.median(samples), 4), "p99": round(_percentile(samples, 0.99), 4)}


def event_check(checks: int = EVENT_CHECKS) -> dict[str, float]:
    """p10 and p50 µs to parse one EVENT frame and verify its event, over ``checks`` distinct events by a few
    keys (a client signs many events with one key, which the gateway's key cache relies on)."""
    keys = [os.urandom(32) for _ in range(4)]
    events = [
        sign_event(keys[i % len(keys)], kind=1, content=f"host speed {i}", tags=[["t", "b"]]) for i in range(checks)
    ]
    frames = [json.dumps(["EVENT", event.to_dict()]) for event in events]
    samples: list[float] = []
    for frame in frames:
        started = time.perf_counter()
        message = parse_client_message(frame)
        assert isinstance(message, EventMessage)
        verify_event(message.event)
        samples.append((time.perf_counter() - started) * 1e6)
    del samples[: len(keys)]  # each key's first use parses it
    return {"p10": round(_percentile(samples, 0.10), 2), "p50": round(statistics.median(samples), 2)}


def postgres_select1(database_url: str | None, selects: int = SELECTS) -> float | None:
    """Median ms of ``SELECT 1`` on one connection to ``database_url``; None when it is not Postgres."""
    if not database_url or not database_url.startswith(("postgres://", "postgresql://")):
        return None
    import psycopg
    from psycopg.conninfo import make_conninfo

    try:
        conn = psycopg.connect(database_url, autocommit=True)
    except psycopg.OperationalError:
        # The benches create their databases beside DATABASE_URL's, which need not exist: the server's
        # round trip is the same from its maintenance database.
        conn = psycopg.connect(make_conninfo(database_url, dbname="postgres"), autocommit=True)
    samples: list[float] = []
    with conn, conn.cursor() as cursor:
        for _ in range(selects + 20):
            started = time.perf_counter()
            cursor.execute("SELECT 1")
            cursor.fetchall()
            samples.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(samples[20:]), 4)


def measure(database_url: str | None = None) -> dict[str, Any]:
    """The host's figures (see the module docstring); ``database_url`` defaults to ``DATABASE_URL``."""
    url = os.environ.get("DATABASE_URL") if database_url is None else database_url
    return {
        "cpus": os.cpu_count(),
        "loopback_rtt_ms": loopback_rtt(),
        "event_check_us": event_check(),
        "postgres_select1_ms": postgres_select1(url),
    }


def report(speed: dict[str, Any], label: str = "host") -> str:
    rtt = speed["loopback_rtt_ms"]
    select = speed["postgres_select1_ms"]
    check = speed["event_check_us"]
    return (
        f"{label}: {speed['cpus']} cores; loopback TCP round trip p50 {rtt['p50']} ms, p99 {rtt['p99']} ms; "
        f"one EVENT frame parsed and verified p10 {check['p10']} µs, p50 {check['p50']} µs; "
        + ("Postgres SELECT 1 " + f"{select} ms" if select is not None else "no Postgres (DATABASE_URL)")
    )


if __name__ == "__main__":
    print(report(measure()))
