"""The replica benchmark's gateway phase: the relay row it creates makes the middleware serve the relay from
its replica, the goal rows carry no figure when the gateway answers differently from the bare server, and the
profile summary ranks busy samples only."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.cache import cache

from bench import FRAME_BUDGET_PER_MINUTE
from bench.replica_data import SHAPES
from bench.replica_gateway import ensure_offline_relay, gateway_env, hot_spots
from bench.summary import goal_rows
from relays.middleware import find_relay
from relays.models import Relay
from replicas.models import Replica

RELAY = "cd" * 32


@pytest.mark.django_db
def test_offline_relay_row_is_served_from_its_replica_and_written_once() -> None:
    Replica.objects.create(relay_key=RELAY, state=Replica.State.READY)
    ensure_offline_relay(RELAY)
    ensure_offline_relay(RELAY)
    cache.delete(f"relay:replica:{RELAY}")

    lookup = find_relay(f"/{RELAY}")

    assert Relay.objects.filter(relay_key=RELAY).count() == 1
    assert lookup.replica is True
    assert lookup.relay is not None and lookup.relay.peers == () and lookup.relay.requires_auth is False


def test_gateway_env_has_no_redis_no_bridge_and_no_reachable_rate_limits(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/3")
    env = gateway_env("postgres://u@127.0.0.1:5432/db", tmp_path)
    assert "REDIS_URL" not in env
    assert not Path(env["HYPERTUNA_BRIDGE_SOCKET"]).exists()
    assert env["HYPERTUNA_RATELIMIT_IP_PER_MINUTE"] == "0"
    assert env["HYPERTUNA_RATELIMIT_TOKEN_PER_MINUTE"] == FRAME_BUDGET_PER_MINUTE  # on, never reached
    assert env["DATABASE_URL"] == "postgres://u@127.0.0.1:5432/db"


def _result(same_order: int) -> dict:
    timing = {"p50_ms": 1.5, "p99_ms": 4.0, "mean_events": 10}
    agreement = {"gateway_bare": {"same_order": same_order, "same_set": 3, "of": 3}}
    return {
        "config": {"events": 1000, "database": "postgresql"},
        "bare_ws": {shape: timing for shape in SHAPES},
        "gateway_ws": {shape: timing for shape in SHAPES},
        "ratios": {shape: {"p50": 12.0, "p99": 3.0} for shape in SHAPES},
        "agreement": {shape: agreement for shape in SHAPES},
    }


def test_goal_rows_report_the_gateway_when_it_answers_like_the_bare_server() -> None:
    rows = goal_rows({"replicas": _result(same_order=3)})
    assert len(rows) == 3 * len(SHAPES)
    assert all(row.figure is not None for row in rows)
    assert {row.row for row in rows} == {
        "replica REQ over WebSocket p50",
        "replica REQ over WebSocket p99",
        "nostr-relay p50 / replica p50",
    }


def test_goal_rows_carry_no_figure_when_the_gateway_answers_differently() -> None:
    rows = goal_rows({"replicas": _result(same_order=2)})
    assert all(row.figure is None and not row.met for row in rows)
    assert "through the gateway" in rows[0].note and "differ from the bare server" in rows[0].note


def test_hot_spots_rank_busy_samples_and_count_idle_ones(tmp_path: Path) -> None:
    profile = tmp_path / "profile.txt"
    loop = "main (uvicorn/main.py:3);BaseEventLoop._run_once (asyncio/base_events.py:1922)"
    profile.write_text(
        f"{loop};EpollSelector.select (selectors.py:468) 30\n"
        # uvloop waiting: no Python frame below the one that entered the loop
        "main (uvicorn/main.py:3);Runner.run (asyncio/runners.py:118) 20\n"
        f"{loop};GatewaySession._handle (relays/session.py:10);query_events (replicas/queries.py:5) 30\n"
        f"{loop};GatewaySession._handle (relays/session.py:12);dumps (json/__init__.py:231) 20\n"
    )

    spots = hot_spots(profile)

    assert spots["samples"] == 100 and spots["idle"] == 50.0
    assert spots["self"] == [("query_events (replicas/queries.py)", 60.0), ("dumps (json/__init__.py)", 40.0)]
    assert spots["project"][0] == ("GatewaySession._handle (relays/session.py)", 100.0)


@pytest.mark.django_db(transaction=True)
def test_a_long_materialization_tells_its_progress(monkeypatch) -> None:
    from bench import replica_data

    monkeypatch.setattr(replica_data, "PROGRESS_SECONDS", 0.0)
    monkeypatch.setattr("django.conf.settings.HYPERTUNA_REPLICA_BATCH_SIZE", 10)
    lines: list[str] = []
    events = replica_data.generate_events(40, seed=3)
    rate = replica_data.ingest_events("ef" * 32, events, verify=False, log=lines.append)
    assert rate is not None and Replica.objects.get(relay_key="ef" * 32).event_count > 0
    assert lines and all(" of 40 events (" in line and "min left)" in line for line in lines)
