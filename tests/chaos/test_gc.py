"""Chaos: the blind peer garbage-collects a mirrored relay. The bridge (the shared mirror stack,
``conftest.mirror_stack``) runs with the smallest byte budget it accepts (1 MB) and no stale grace, so an
operator GC evicts every core it may consider stale, and a relay larger than the budget makes its byte
budget clear cores while the relay is being mirrored."""

from __future__ import annotations

import time

import pytest

from tests.chaos.conftest import MIRROR_STACK_ENV
from tests.chaos.helpers import (
    make_events,
    probe,
    publish,
    replica_row,
    sync_until_caught_up,
    wait_readable,
)

BUDGET = int(MIRROR_STACK_ENV["HYPERTUNA_BRIDGE_BLIND_PEER_MAX_BYTES"])

RUN_GC = """
import time
from replicas import actions
from replicas.models import MirrorAction, MirrorCore
from replicas.tasks import perform_mirror_action

action = actions.request_gc(reason="chaos")
outcome = perform_mirror_action(action.pk)
action = MirrorAction.objects.get(pk=action.pk)
# The evicted cores are marked removed when the event consumer applies the bridge's mirror.removed events.
deadline = time.monotonic() + 15
while True:
    cores = dict(MirrorCore.objects.filter(relay_key=RELAY).values_list("core_key", "state"))
    evicted = set(action.result.get("evicted") or ()) & set(cores)
    if all(cores[key] == "removed" for key in evicted) or time.monotonic() > deadline:
        break
    time.sleep(0.2)
result = {"outcome": outcome, "status": action.status, "result": action.result, "cores": cores}
"""


@pytest.fixture(scope="module")
def stack(mirror_stack):
    return mirror_stack


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
    row = sync_until_caught_up(stack, relay_key, expected=len(before) + len(after))
    assert sorted(row["eventIds"]) == sorted(e.id for e in before + after)
    wait_readable(url, before + after, timeout=30)


CORES = """
from replicas.models import MirrorCore
rows = MirrorCore.objects.filter(relay_key=RELAY).values("core_key", "core_type", "state", "removal_reason")
result = {r["core_key"]: r for r in rows}
"""

BUDGET_STATE = """
import asyncio
from replicas import blindpeer

async def status():
    async with blindpeer.bridge_client() as client:
        return await client.call("blindPeer.status", timeout_s=10)

result = {"cores": result, "budget": asyncio.run(status())["gc"]["budget"]}
"""


def test_byte_budget_gc_while_mirroring(stack, tmp_path):
    """Fault: a relay whose events (~1.3 MB in its writer and view cores) and drive (a 300 kB file) exceed the
    blind peer's byte budget (1 MB) is mirrored; the budget GC runs on every blind-peer flush meanwhile.

    Degraded: the budget clears only the relay's priority-0 cores (its drive); the gateway is told within
    30 s: their mirror rows are ``removed`` with reason ``gc-bytes``. The view core (priority 1) stays
    ``active`` and whole, and the blind peer reports it is over budget.

    Recovery / nothing lost: within 60 s the replica is ``ready`` with no lag, every event materialized
    exactly once (``materializedLength`` = ``remoteLength``, no ``lastError``), readable with the worker gone."""
    files = tmp_path / "drive"
    files.mkdir()
    (files / "big.bin").write_bytes(b"\x5a" * 300_000)
    worker = stack.start_worker(
        "budget", "--blind-peer", "gateway", "--drive-import", str(files), storage=tmp_path / "w"
    )
    relay_key = worker.markers["HYPERTUNA_WORKER_READY"]["relayKey"]
    url = f"{stack.ws_url}/{relay_key}"
    filler = "x" * 10_000
    published = make_events(130, f"budget {filler}", created_at=1_700_200_000)
    publish(url, published, window=26)

    deadline = time.monotonic() + 30
    while True:
        cores = probe(stack, f"RELAY = {relay_key!r}\n{CORES}")
        drive = [c for c in cores.values() if c["core_type"] in ("hyperdrive-metadata", "hyperdrive-blobs")]
        blobs = [c for c in drive if c["core_type"] == "hyperdrive-blobs"]
        if blobs and all(c["state"] == "removed" and c["removal_reason"] == "gc-bytes" for c in blobs):
            break
        assert time.monotonic() < deadline, (cores, stack.log_tail())
        time.sleep(1)
    row = sync_until_caught_up(stack, relay_key, expected=len(published), timeout=60)
    assert sorted(row["eventIds"]) == sorted(e.id for e in published)
    assert row["materializedLength"] == row["remoteLength"] and row["lastError"] is None, row
    after = probe(stack, f"RELAY = {relay_key!r}\n{CORES}\n{BUDGET_STATE}")
    view = after["cores"][row["viewCoreKey"]]
    assert view["state"] == "active" and view["core_type"] == "autobase-view", view
    assert after["budget"]["overBudget"] is True and after["budget"]["maxBytes"] == BUDGET, after["budget"]
    worker.stop()
    wait_readable(url, published, timeout=30)
