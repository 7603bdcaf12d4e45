"""The host's speed that every bench report carries (``bench/hostspeed.py``): real round trips over loopback
and to the Postgres server, the gateway's own EVENT check, and the figures written into the JSON report."""

from __future__ import annotations

import json
import math
import os
import threading
from datetime import UTC, datetime

import pytest

from bench import hostspeed, summary

POSTGRES = os.environ.get("DATABASE_URL") or "postgres://postgres@127.0.0.1:5432/postgres"


def _finite_positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def test_the_loopback_round_trip_is_measured_and_its_echo_thread_ends() -> None:
    rtt = hostspeed.loopback_rtt(round_trips=200)
    assert _finite_positive(rtt["p50"]) and rtt["p50"] <= rtt["p99"]
    assert not [t for t in threading.enumerate() if t.name == "hostspeed-echo"]


def test_the_event_check_verifies_with_the_gateways_code(monkeypatch: pytest.MonkeyPatch) -> None:
    check = hostspeed.event_check(checks=40)
    assert _finite_positive(check["p10"]) and check["p10"] <= check["p50"]
    # It is the real verification: a verifier that rejects makes the measurement fail, not pass quietly.
    from hypertuna.nostr import InvalidEvent

    def reject(event: object) -> None:
        raise InvalidEvent("signature verification failed")

    monkeypatch.setattr(hostspeed, "verify_event", reject)
    with pytest.raises(InvalidEvent):
        hostspeed.event_check(checks=10)


def test_postgres_is_timed_on_its_server_even_when_the_named_database_does_not_exist() -> None:
    if not POSTGRES.startswith(("postgres://", "postgresql://")):
        pytest.fail("these tests run against Postgres (DATABASE_URL)")
    assert _finite_positive(hostspeed.postgres_select1(POSTGRES, selects=20) or 0.0)
    missing = POSTGRES.rsplit("/", 1)[0] + "/hypertuna_no_such_database"
    assert _finite_positive(hostspeed.postgres_select1(missing, selects=20) or 0.0)


@pytest.mark.parametrize("url", ["", "sqlite:///var/db.sqlite3"])
def test_without_postgres_there_is_no_database_figure(url: str) -> None:
    assert hostspeed.postgres_select1(url) is None


def test_the_report_carries_the_hosts_speed(tmp_path) -> None:
    speed = hostspeed.measure(database_url="")
    assert speed["postgres_select1_ms"] is None
    line = hostspeed.report(speed)
    assert f"p50 {speed['loopback_rtt_ms']['p50']} ms" in line and "no Postgres" in line
    path = summary.write_report({}, ["routing"], datetime.now(UTC), {"start": speed}, folder=tmp_path)
    written = json.loads(path.read_text())
    assert written["host"]["speed"] == {"start": speed}
    assert written["host"]["cpus"] == os.cpu_count()
