"""Chaos around mirrors and replicas on one gateway node (bridge with its blind peer, uvicorn, event consumer) and
reference workers that mirror their relays to it: corrupted mirror metadata and view reads, a sync and a
worker killed in the middle, the bridge killed and restarted. The node is the suite's shared mirror stack
(``conftest.mirror_stack``), which the GC cases use too."""

from __future__ import annotations

import json
import re
import secrets
import signal
import sys
import time

import pytest

from tests.chaos.helpers import (
    OPERATOR,
    make_events,
    post_json,
    probe,
    publish,
    replica_ids,
    replica_row,
    signed_body,
    sync_until_caught_up,
    wait_readable,
)
from tests.e2e.harness import ROOT, spawn


@pytest.fixture(scope="module")
def stack(mirror_stack):
    return mirror_stack


def _mirrored_relay(stack, name: str, events: int, tmp_path):
    worker = stack.start_worker(name, "--blind-peer", "gateway", storage=tmp_path / name)
    relay_key = worker.markers["HYPERTUNA_WORKER_READY"]["relayKey"]
    url = f"{stack.ws_url}/{relay_key}"
    published = make_events(events, name, created_at=1_700_000_000)
    publish(url, published, window=50)
    return worker, relay_key, url, published


def _mirror_rows(stack) -> int:
    return probe(stack, "from replicas.models import MirrorCore\nresult = MirrorCore.objects.count()")


# A replica sync run whose source corrupts what the bridge returns for one relay (the read of a damaged view
# block or record); every other relay is read as it is. Runs the real ``replicas_sync`` command code.
CORRUPT_SYNC = """
import asyncio, sys
from replicas import blindpeer
from replicas.management.commands.replicas_sync import Command
from replicas.sources import BridgeReplicaSource, parse_batch

victim, mode, keys = sys.argv[1], sys.argv[2], sys.argv[3:]

class Corrupting(BridgeReplicaSource):
    async def read_view(self, relay_key, view_core_key, start_seq, limit):
        if relay_key != victim:
            return await super().read_view(relay_key, view_core_key, start_seq, limit)
        raw = await self.client.call(self.METHOD, {"relayKey": relay_key, "viewCoreKey": view_core_key or None,
                                                    "startSeq": start_seq, "limit": limit})
        events = [e for e in raw["entries"] if e["value"]]
        if mode == "record":  # one event record cut in half
            events[0]["value"] = events[0]["value"][: len(events[0]["value"]) // 2]
        else:  # a block whose entries come back out of order and past the read window
            raw["entries"] = list(reversed(raw["entries"])) + [{"seq": raw["length"] + 5, "key": "00", "value": None}]
        return parse_batch(raw, start_seq=start_seq)

async def run():
    async with blindpeer.bridge_client() as client:
        return await Command().sync_all(keys, Corrupting(client), full=False, max_batches=None)

print("FAILURES", asyncio.run(run()))
"""


def _corrupt_sync(stack, victim: str, mode: str, *keys: str):
    return probe_script(stack, CORRUPT_SYNC, victim, mode, *keys)


def probe_script(stack, script: str, *argv: str):
    import subprocess

    return subprocess.run(
        [sys.executable, "-c", "import django\ndjango.setup()\n" + script, *argv],
        cwd=ROOT,
        env={**stack.env, "DJANGO_SETTINGS_MODULE": "hypertuna.settings"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_corrupted_mirror_metadata_and_view_reads(stack, tmp_path):
    """Fault (1): a worker's mirror metadata push arrives truncated, as garbage bytes, or signed correctly but
    with the wrong shape (cores not a list, a core key that is no key, an unknown core type, a bad priority,
    too many cores, a relay key that is no key).

    Degraded: each is answered JSON 4xx with an ``error`` code, never a 500; nothing is stored.

    Fault (2): the replica sync reads a damaged view for one of two mirrored relays: once a block batch that
    breaks the read contract (entries out of order, past the window), once an event record cut in half.

    Degraded: for the broken block the sync records a failure on that relay (``consecutiveFailures`` and
    ``lastError`` in ``/api/blind-peer/replicas``), keeps its checkpoint, exits non-zero naming it, and the
    other relay in the same run is synced completely; the cut record is counted as rejected and not stored.

    Recovery / nothing lost: a clean ``replicas_sync --full`` run materializes every event of the damaged
    relay exactly once and clears its failure count."""
    rows_before = _mirror_rows(stack)
    issued = int(time.time() * 1000)
    relay_key = secrets.token_hex(32)
    good_core = {"coreKey": secrets.token_hex(32), "type": "autobase-view"}
    payload = {"relayKey": relay_key, "ownerPeerKey": secrets.token_hex(32), "issuedAt": issued, "cores": [good_core]}
    whole = json.dumps(signed_body(stack, payload)).encode()
    bad_bodies = [whole[: len(whole) // 2], b"\x00\xffgarbage{", b""]
    wrong_shapes = [
        {**payload, "cores": "all of them"},
        {**payload, "cores": [{"coreKey": "not-a-key", "type": "autobase-view"}]},
        {**payload, "cores": [{**good_core, "type": "mystery"}]},
        {**payload, "cores": [{**good_core, "priority": "high"}]},
        {**payload, "cores": [good_core] * 65},
        {**payload, "cores": []},
        {**payload, "relayKey": ["x"]},
        {**payload, "ownerPeerKey": 7},
        {**payload, "issuedAt": "yesterday"},
        {**payload, "cores": [{**good_core, "announce": "yes"}]},
    ]
    answers = [post_json(stack, "/api/blind-peer/metadata", None, raw=raw) for raw in bad_bodies]
    answers += [post_json(stack, "/api/blind-peer/metadata", signed_body(stack, shape)) for shape in wrong_shapes]
    for status, headers, body in answers:
        assert 400 <= status < 500, (status, body)
        assert headers.get("Content-Type", "").startswith("application/json") and body.get("error"), body
    assert _mirror_rows(stack) == rows_before, "a refused metadata push stored something"

    damaged, damaged_key, damaged_url, damaged_events = _mirrored_relay(stack, "damaged", 20, tmp_path)
    healthy, healthy_key, _, healthy_events = _mirrored_relay(stack, "healthy", 20, tmp_path)
    # Both fully mirrored and known to the replica tables; then their replicas start over from block 0.
    sync_until_caught_up(stack, healthy_key, expected=len(healthy_events))
    sync_until_caught_up(stack, damaged_key, expected=len(damaged_events))
    assert (
        probe(
            stack,
            "from replicas.models import Replica, ReplicaEvent\n"
            f"Replica.objects.filter(relay_key__in={[damaged_key, healthy_key]!r}).update(checkpoint_seq=0)\n"
            f"ReplicaEvent.objects.filter(replica__relay_key__in={[damaged_key, healthy_key]!r}).delete()\n"
            "result = 0",
        )
        == 0
    )
    checkpoint = replica_row(stack, damaged_key)["materializedLength"]

    broken = _corrupt_sync(stack, damaged_key, "block", damaged_key, healthy_key)
    assert broken.returncode == 0 and "FAILURES 1" in broken.stdout, broken.stdout + broken.stderr
    assert f"{damaged_key}: SourceError" in broken.stderr, broken.stderr
    row = replica_row(stack, damaged_key)
    assert row["consecutiveFailures"] >= 1 and "SourceError" in (row["lastError"] or ""), row
    assert row["materializedLength"] == checkpoint, row
    assert sorted(replica_ids(stack, healthy_key)) == sorted(e.id for e in healthy_events)

    cut = _corrupt_sync(stack, damaged_key, "record", damaged_key)
    assert cut.returncode == 0 and "FAILURES 0" in cut.stdout and "1 rejected" in cut.stdout, cut.stdout + cut.stderr
    assert len(replica_ids(stack, damaged_key)) == len(damaged_events) - 1
    assert all(proc.process.poll() is None for proc in stack.procs), stack.log_tail()

    clean = stack.manage("replicas_sync", "--full", "--relay", damaged_key)
    assert clean.returncode == 0, clean.stderr
    assert sorted(replica_ids(stack, damaged_key)) == sorted(e.id for e in damaged_events)
    assert replica_row(stack, damaged_key)["consecutiveFailures"] == 0
    damaged.stop()
    healthy.stop()
    wait_readable(damaged_url, damaged_events, timeout=30)  # from the replica now


BULK = 600  # enough view blocks for a sync of many batches, few enough to publish in seconds
PROGRESS = re.compile(r"\[[#-]+\] (\d+)/(\d+) blocks")


def test_worker_killed_mid_sync(stack, tmp_path):
    """Fault: a relay with 600 events is being synced (batches of 40 view blocks) when the process running
    the sync is SIGKILLed, and the relay's worker is SIGKILLed with it.

    Degraded: the replica holds a consistent prefix: its checkpoint is where the last committed batch ended,
    and it holds exactly the events of the view blocks below that checkpoint, none twice.

    Recovery: the worker restarts on the same storage and a new sync run resumes from the checkpoint (it does
    not start over) until caught up.

    Nothing lost: the final replica holds every event the worker OK'd, exactly once."""
    worker, relay_key, url, published = _mirrored_relay(stack, "bulk", BULK, tmp_path)
    sync_until_caught_up(stack, relay_key, expected=len(published))  # fully mirrored; then start over
    probe(
        stack,
        "from replicas.models import Replica, ReplicaEvent\n"
        f"Replica.objects.filter(relay_key={relay_key!r}).update(checkpoint_seq=0)\n"
        f"ReplicaEvent.objects.filter(replica__relay_key={relay_key!r}).delete()\n"
        "result = 0",
    )
    sync = spawn(
        "sync-killed",
        [sys.executable, "manage.py", "replicas_sync", "--relay", relay_key],
        cwd=ROOT,
        env={**stack.env, "HYPERTUNA_REPLICA_BATCH_SIZE": "40"},
        log_dir=stack.tmp,
    )
    deadline = time.monotonic() + 60
    while True:
        text = sync.log_path.read_text(errors="replace") if sync.log_path.exists() else ""
        done = [PROGRESS.search(line) for line in text.splitlines()]
        done = [m for m in done if m]
        if done and 0 < int(done[-1][1]) < int(done[-1][2]) // 2:
            break
        assert sync.process.poll() is None and time.monotonic() < deadline, text[-2000:]
        time.sleep(0.02)
    sync.process.send_signal(signal.SIGKILL)
    worker.process.send_signal(signal.SIGKILL)
    sync.process.wait(timeout=10)
    worker.process.wait(timeout=10)
    sync.stop()
    worker.stop()

    row = replica_row(stack, relay_key)
    checkpoint = row["materializedLength"]
    assert 0 < checkpoint < row["remoteLength"], row
    prefix = probe(
        stack,
        "from replicas.models import ReplicaEvent\n"
        f"rows = ReplicaEvent.objects.filter(replica__relay_key={relay_key!r}).values_list('eid', 'seq')\n"
        "result = [[bytes(eid).hex(), seq] for eid, seq in rows]",
    )
    assert prefix and all(seq < checkpoint for _, seq in prefix), (checkpoint, prefix[-3:])
    assert len({eid for eid, _ in prefix}) == len(prefix)

    stack.start_worker("bulk", "--blind-peer", "gateway", storage=tmp_path / "bulk")
    resumed = stack.manage("replicas_sync", "--relay", relay_key)
    assert resumed.returncode == 0, resumed.stderr
    # It went on from the checkpoint: it added exactly the events the killed run had not committed.
    assert f"+{len(published) - len(prefix)} events" in resumed.stdout, (len(prefix), resumed.stdout)
    sync_until_caught_up(stack, relay_key, expected=len(published))
    final = probe(
        stack,
        "from replicas.models import ReplicaEvent\n"
        f"rows = ReplicaEvent.objects.filter(replica__relay_key={relay_key!r}).values_list('eid', 'seq')\n"
        "result = [[bytes(eid).hex(), seq] for eid, seq in rows]",
    )
    assert sorted(eid for eid, _ in final) == sorted(e.id for e in published)
    # The prefix was a true prefix: the resumed run added only events of blocks at or past the checkpoint.
    assert {eid for eid, seq in final if seq < checkpoint} == {eid for eid, _ in prefix}
    wait_readable(url, published, timeout=60)


def test_bridge_killed_and_restarted(stack, tmp_path):
    """Fault: the bridge (peer pool, blind peer, replica reads) is SIGKILLed and started again on the same
    socket, storage and keys, while a worker is mirroring to it.

    Degraded: while it is gone the web and event processes keep running and REQs are answered from the
    replica in Postgres.

    Recovery: the restarted bridge prints its ready marker; within 60 s writes reach the worker again through
    it (the gateway's bridge clients reconnect, the worker is redialled) and the mirror and replica catch up
    with what the worker wrote after the restart.

    Nothing lost: every event OK'd before the kill and after the restart is readable through the gateway and
    in the replica exactly once."""
    worker, relay_key, url, before = _mirrored_relay(stack, "bridged", 10, tmp_path)
    sync_until_caught_up(stack, relay_key, expected=len(before))
    stack.kill_bridge()
    assert all(proc.process.poll() is None for proc in stack.procs if proc.name != "bridge"), stack.log_tail()
    wait_readable(url, before, timeout=30)  # answered while the bridge is away (from the replica)

    stack.start_bridge()
    after = make_events(10, "after bridge restart", created_at=1_700_100_000)
    deadline = time.monotonic() + 60
    while True:  # the gateway redials the worker through the new bridge; until then writes are refused
        try:
            publish(url, after[:1])
            break
        except AssertionError:
            assert time.monotonic() < deadline, stack.log_tail()
            time.sleep(1)
    publish(url, after[1:])
    row = sync_until_caught_up(stack, relay_key, expected=len(before) + len(after), timeout=90)
    assert sorted(row["eventIds"]) == sorted(e.id for e in before + after)
    worker.stop()
    wait_readable(url, before + after, timeout=30)
    assert stack.operator_get("/api/blind-peer", OPERATOR)["mirrors"]
