"""Chaos: the blind peer garbage-collects a mirrored relay. The bridge runs with the smallest byte budget it
accepts (1 MB) and no stale grace, so an operator GC evicts every core it may consider stale."""

from __future__ import annotations

import pytest

from tests.chaos.conftest import start_stack
from tests.chaos.helpers import (
    make_events,
    probe,
    publish,
    replica_ids,
    replica_row,
    sync_until_caught_up,
    wait_readable,
)

BUDGET = 1_000_000

RUN_GC = """
from replicas import actions
from replicas.models import MirrorAction, MirrorCore
from replicas.tasks import perform_mirror_action

action = actions.request_gc(reason="chaos")
outcome = perform_mirror_action(action.pk)
action = MirrorAction.objects.get(pk=action.pk)
cores = dict(MirrorCore.objects.filter(relay_key=RELAY).values_list("core_key", "state"))
result = {"outcome": outcome, "status": action.status, "result": action.result, "cores": cores}
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    env = {"HYPERTUNA_BRIDGE_BLIND_PEER_MAX_BYTES": str(BUDGET), "HYPERTUNA_BRIDGE_BLIND_PEER_STALE_MS": "0"}
    stack = start_stack(tmp_path_factory.mktemp("gc"), env=env)
    try:
        yield stack
    finally:
        stack.stop()


def _gc(stack, relay_key: str) -> dict:
    return probe(stack, f"RELAY = {relay_key!r}\n{RUN_GC}")


def test_operator_gc_keeps_a_mirrored_relay(stack, tmp_path):
    """Fault: an operator GC (``POST /api/blind-peer/gc`` → ``perform_mirror_action`` → ``blindPeer.gc``) with
    no stale grace runs while the relay's worker is offline.

    Expected: the run succeeds; it evicts the relay's priority-0 cores (its drive), which Python marks
    removed (bridge event ``mirror.removed``), and keeps the view core (priority 1), whose row stays active;
    the replica stays readable from Postgres. When the worker comes back on the same storage
    it mirrors again and a sync adds its new events; every event is in the replica exactly once."""
    worker = stack.start_worker("kept", "--blind-peer", "gateway", storage=tmp_path / "kept")
    relay_key = worker.markers["HYPERTUNA_WORKER_READY"]["relayKey"]
    url = f"{stack.ws_url}/{relay_key}"
    before = make_events(10, "before gc", created_at=1_700_000_000)
    publish(url, before)
    sync_until_caught_up(stack, relay_key, expected=len(before))
    worker.stop()

    gc = _gc(stack, relay_key)
    assert gc["outcome"] == "done" and gc["status"] == "done" and gc["result"]["status"] == "ok", gc
    view_core = replica_row(stack, relay_key)["viewCoreKey"]
    assert gc["cores"][view_core] == "active" and view_core not in gc["result"]["evicted"], gc
    for core_key in set(gc["result"]["evicted"]) & set(gc["cores"]):  # priority-0 cores (the relay's drive)
        assert gc["cores"][core_key] == "removed", gc
    wait_readable(url, before, timeout=30)

    stack.start_worker("kept", "--blind-peer", "gateway", storage=tmp_path / "kept")
    after = make_events(5, "after gc", created_at=1_700_000_100)
    publish(url, after)
    sync_until_caught_up(stack, relay_key, expected=len(before) + len(after))
    assert sorted(replica_ids(stack, relay_key)) == sorted(e.id for e in before + after)
    wait_readable(url, before + after, timeout=30)
