"""Dashboard history and live state: node snapshots in the cache, minute samples from counter growth, hourly
rollups, retention, the dashboard page and the relays list's health columns."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from django.urls import reverse
from django.utils import timezone

from relays import dashboard, services, stats, tasks
from relays.models import Peer, Relay, StatSample
from relays.runtime import Runtime
from relays.session_config import SessionStats
from replicas.models import Replica
from tests.conftest import hex_key, make_registration, signed

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _own_stats_store(settings, tmp_path):
    """Without Redis the snapshots live in a file cache under the var folder: one per test."""
    settings.VAR_DIR = tmp_path


MINUTE, HOUR = StatSample.Resolution.MINUTE, StatSample.Resolution.HOUR


def session(relay: str, token: int, address: str, *, frames_in: int = 0, frames_out: int = 0) -> stats.LiveSession:
    return {
        "relay": relay,
        "token": token,
        "address": address,
        "since": 1.0,
        "framesIn": frames_in,
        "framesOut": frames_out,
        "node": "n",
    }


def publish(node: str, sessions: list[stats.LiveSession], **totals: int) -> None:
    stats.publish_node(node, sessions=sessions, totals={name: totals.get(name, 0) for name in stats.COUNTERS})


def register(relay_key: str) -> Relay:
    body = signed(make_registration(relay_key, peers=[hex_key()]))
    return services.register_relay(registration=body["registration"], signature=body["signature"])


def test_live_sessions_join_every_node_and_count_per_relay():
    publish("a", [session("r1", 1, "10.0.0.1"), session("r2", 2, "10.0.0.2")])
    publish("b", [session("r1", 3, "10.0.0.3")])
    live = stats.live_sessions()
    assert sorted(s["token"] for s in live) == [1, 2, 3]
    assert stats.sessions_by_relay(live) == {"r1": 2, "r2": 1}


def test_a_node_that_stops_publishing_drops_out(monkeypatch):
    publish("a", [session("r1", 1, "10.0.0.1")])
    now = stats.time.time()
    monkeypatch.setattr(stats.time, "time", lambda: now + 10 * stats.PUBLISH_INTERVAL)
    publish("b", [])
    assert stats.live_sessions() == []


def test_samples_count_counter_growth_per_node_and_survive_a_restart():
    t0 = timezone.now()
    publish("a", [], frames=100, fallback_reads=5)
    first = stats.collect(t0)
    assert (first.frames, first.fallback_reads) == (0, 0)  # history before the first sight is not counted
    publish("a", [session("r", 1, "x")], frames=130, fallback_reads=7)
    publish("b", [], frames=10)
    second = stats.collect(t0 + timedelta(seconds=60))
    assert (second.frames, second.fallback_reads, second.sessions, second.seconds) == (30, 2, 1, 60.0)
    publish("a", [], frames=4)  # node a restarted: its counters began again at zero
    publish("b", [], frames=25, fallback_writes=3)
    third = stats.collect(t0 + timedelta(seconds=120))
    assert (third.frames, third.fallback_writes) == (4 + 15, 3)


def test_sample_records_the_worst_replica_lag():
    now = timezone.now()
    Replica.objects.create(relay_key="a", remote_length=10, checkpoint_seq=4, behind_since=now - timedelta(seconds=9))
    Replica.objects.create(relay_key="b", remote_length=10, checkpoint_seq=9, behind_since=now - timedelta(seconds=3))
    sample = stats.collect(now)
    assert sample.max_lag_ms == 9000
    assert [key for key, _ in stats.worst_lag_ms(now)] == ["a", "b"]


def test_complete_hours_roll_up_once_and_the_current_hour_waits():
    base = datetime(2030, 1, 1, 10, 0, tzinfo=UTC)
    for minute, (sessions, frames, lag) in enumerate([(2, 60, 100), (5, 120, 50), (3, 30, 700)]):
        StatSample.objects.create(
            resolution=MINUTE, at=base + timedelta(minutes=minute), seconds=60, sessions=sessions, frames=frames
        )
        StatSample.objects.filter(at=base + timedelta(minutes=minute)).update(max_lag_ms=lag)
    StatSample.objects.create(resolution=MINUTE, at=base + timedelta(hours=1, minutes=1), seconds=60, frames=7)

    assert stats.rollup(base + timedelta(hours=1, minutes=2)) == 1
    hour = StatSample.objects.get(resolution=HOUR)
    assert (hour.at, hour.seconds, hour.sessions, hour.frames, hour.max_lag_ms, hour.samples) == (
        base,
        180,
        5,
        210,
        700,
        3,
    )
    assert stats.rollup(base + timedelta(hours=1, minutes=3)) == 0  # already rolled up; 11:00 is not complete
    assert stats.rollup(base + timedelta(hours=2)) == 1
    assert StatSample.objects.filter(resolution=HOUR).count() == 2


def test_prune_keeps_minutes_a_day_and_hours_thirty_days():
    now = timezone.now()
    for resolution, age in [
        (MINUTE, timedelta(hours=23)),
        (MINUTE, timedelta(hours=25)),
        (HOUR, timedelta(days=29)),
        (HOUR, timedelta(days=31)),
    ]:
        StatSample.objects.create(resolution=resolution, at=now - age)
    assert tasks.prune_stats.apply().get() == 2
    kept = sorted((s.resolution, round((now - s.at).total_seconds() / 3600)) for s in StatSample.objects.all())
    assert kept == [(HOUR, 29 * 24), (MINUTE, 23)]


def test_collect_task_writes_a_sample():
    publish("a", [session("r", 1, "x")])
    pk = tasks.collect_stats.apply().get()
    assert StatSample.objects.get(pk=pk).sessions == 1


def test_runtime_publishes_its_sessions_with_token_address_and_frames():
    runtime = Runtime()
    sess = SimpleNamespace(relay_key="rk", connection_key="c1", stats=SessionStats(frames_in=3, frames_out=5))
    runtime.add(sess, connection=lambda: (42, "192.0.2.7"))  # type: ignore[arg-type]
    runtime.publish_stats()
    (row,) = stats.live_sessions()
    assert (row["relay"], row["token"], row["address"], row["framesIn"], row["framesOut"]) == (
        "rk",
        42,
        "192.0.2.7",
        3,
        5,
    )
    assert row["node"] == runtime.node


def test_an_unchanged_node_keeps_its_snapshot_alive_without_rewriting_it(monkeypatch):
    runtime = Runtime()
    sess = SimpleNamespace(relay_key="rk", connection_key="c1", stats=SessionStats(frames_in=1, frames_out=1))
    runtime.add(sess, connection=lambda: (7, "192.0.2.8"))  # type: ignore[arg-type]
    written = []
    real_publish = stats.publish_node
    monkeypatch.setattr(stats, "publish_node", lambda *a, **k: written.append(1) or real_publish(*a, **k))
    runtime.publish_stats()
    runtime.publish_stats()  # idle: nothing changed, only kept alive
    assert len(written) == 1 and len(stats.live_sessions()) == 1
    sess.stats.frames_out += 1  # the socket got a frame: the snapshot is rewritten
    runtime.publish_stats()
    assert len(written) == 2 and stats.live_sessions()[0]["framesOut"] == 2
    stats._store().delete(stats._node_key(runtime.node))  # expired or evicted meanwhile: published whole
    runtime.publish_stats()
    assert len(written) == 3 and len(stats.live_sessions()) == 1
    runtime.remove(sess)  # type: ignore[arg-type]
    runtime.publish_stats()
    assert len(written) == 4 and stats.live_sessions() == []


def test_a_node_that_stopped_renewing_its_index_entry_is_not_shown(monkeypatch):
    runtime = Runtime()
    sess = SimpleNamespace(relay_key="rk", connection_key="c9", stats=SessionStats())
    runtime.add(sess, connection=lambda: (None, "192.0.2.9"))  # type: ignore[arg-type]
    runtime.publish_stats()
    assert len(stats.live_sessions()) == 1
    later = time.time() + stats._ttl() + 1  # the node died: its snapshot outlives it, its index entry does not
    monkeypatch.setattr(stats.time, "time", lambda: later)
    assert stats.live_sessions() == []


def test_dashboard_numbers_match_the_database(admin_client):
    online, offline, replicated = (hex_key() for _ in range(3))
    for key in (online, offline, replicated):
        register(key)
    Relay.objects.filter(relay_key__in=[offline, replicated]).update(expires_at=timezone.now() - timedelta(seconds=1))
    Replica.objects.create(relay_key=replicated)
    Peer.objects.filter(relay__relay_key=offline).update(unreachable_since=timezone.now())
    publish("a", [session(online, 1, "x"), session(online, 2, "y")], frames=0)
    stats.collect(timezone.now() - timedelta(seconds=30))
    publish("a", [session(online, 1, "x"), session(online, 2, "y")], frames=300)
    stats.collect()

    page = admin_client.get(reverse("admin:index")).content.decode()

    def metric(name: str) -> str:
        found = re.search(rf'data-metric="{name}"[^>]*>([^<]*)<', page)
        assert found, name
        return found.group(1).strip()

    assert metric("relays-total") == "3"
    assert metric("relays-online") == "1"
    assert metric("relays-offline") == "2"
    assert metric("relays-replica") == "1"
    assert metric("relays-lease") == "0"
    assert metric("sessions-total") == "2"
    assert metric("peers-healthy") == "2" and metric("peers-unreachable") == "1"
    assert float(metric("frames-per-s")) == pytest.approx(10.0, rel=0.05)
    assert metric("reach-database") == "up"
    assert page.count("<polyline") >= 5  # the hour charts have data
    assert "Relays" in page and "app-relays" in page  # the app list is still below


@pytest.mark.parametrize(("health", "expected"), [("online", 1), ("offline", 1), ("replica", 1), ("lease", 0)])
def test_relay_list_health_filter_and_columns(admin_client, health, expected):
    online, offline = hex_key(), hex_key()
    register(online)
    register(offline)
    Relay.objects.filter(relay_key=offline).update(expires_at=timezone.now() - timedelta(seconds=1))
    Replica.objects.create(relay_key=offline, state=Replica.State.READY)
    page = admin_client.get(reverse("admin:relays_relay_changelist"), {"health": health}).content.decode()
    assert page.count('class="action-select"') == expected
    everything = admin_client.get(reverse("admin:relays_relay_changelist")).content.decode()
    assert "offline since" in everything and ">ready<" in everything


def test_relay_page_shows_who_is_connected_now(admin_client):
    relay = register(hex_key())
    publish("a", [session(relay.relay_key, 7, "198.51.100.4", frames_in=11, frames_out=13)])
    page = admin_client.get(reverse("admin:relays_relay_change", args=[relay.pk])).content.decode()
    assert "198.51.100.4" in page and ">11<" in page and ">13<" in page
    assert reverse("admin:relays_relaytoken_change", args=[7]) in page


def test_sparkline_scales_to_its_maximum():
    svg = str(dashboard.sparkline([0, 5, 10], width=100, height=22))
    assert 'points="0.0,20.0 50.0,11.0 100.0,2.0"' in svg
    assert "no data" in str(dashboard.sparkline([]))


def test_runtime_publish_loop_survives_a_cache_failure(monkeypatch):
    runtime = Runtime()
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        raise ConnectionError("cache down")

    monkeypatch.setattr(stats, "publish_node", failing)
    monkeypatch.setattr(stats, "PUBLISH_INTERVAL", 0.01)

    async def run() -> None:
        task = asyncio.create_task(runtime._publish_stats())
        await asyncio.sleep(0.1)
        task.cancel()

    asyncio.run(run())
    assert len(calls) >= 2
