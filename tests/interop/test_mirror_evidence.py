"""Escrow mirror evidence with the published worker runtime: while the worker is connected to the gateway's
blind peer its view core is announced (the time follows the worker, the length is what it announced and
the mirror holds); once it stops, the announcement stops advancing."""

from __future__ import annotations

import time
from datetime import datetime

import pytest
from coincurve import PrivateKey

from tests.interop.conftest import ANNOUNCE_MS, OPERATOR


def _row(stack, relay_key: str) -> dict | None:
    rows = stack.operator_get("/api/blind-peer/replicas?cores=true", OPERATOR)["replicas"]
    return next((r for r in rows if r["relayKey"] == relay_key), None)


def _announced_at(row: dict) -> float:
    return datetime.fromisoformat(row["mirrorEvidence"]["announcedAt"]).timestamp()


def _wait(stack, relay_key: str, check, what: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    row = None
    while time.monotonic() < deadline:
        row = _row(stack, relay_key)
        if row and row.get("mirrorEvidence") and check(row):
            return row
        time.sleep(0.25)
    pytest.fail(f"{what}: {row}\n{stack.log_tail()}")


def test_the_worker_is_announced_while_connected_and_not_after_it_stops(stack, workers):
    worker = workers("gamma", owner_secret=PrivateKey().secret.hex(), register_as="hex", mirror=True)
    relay_key = worker.start()["relayKey"]

    def view(row: dict) -> dict:
        return next(c for c in row["cores"] if c["coreKey"] == row["viewCoreKey"])

    def announced_and_complete(row: dict) -> bool:
        evidence = row["mirrorEvidence"]
        return (
            row["viewCoreKey"] is not None
            and abs(time.time() - _announced_at(row)) < 5
            and evidence["announcedLength"] > 0
            and evidence["announcedLength"] == evidence["mirroredLength"] == view(row)["remoteLength"]
        )

    row = _wait(stack, relay_key, announced_and_complete, "the view core was never announced and mirrored")
    assert view(row)["announcedLength"] == row["mirrorEvidence"]["announcedLength"]
    # Connected and unchanged: the announcement still follows the worker.
    first = _announced_at(row)
    _wait(stack, relay_key, lambda r: _announced_at(r) >= first + 1, "the announcement stopped while connected")

    worker.stop()
    stopped_at = time.time()
    # The last live report can still arrive just after the stop; after that the time must not move.
    time.sleep(3 * ANNOUNCE_MS / 1000 + 1)
    settled = _announced_at(_row(stack, relay_key))
    assert settled <= stopped_at + 1
    time.sleep(3 * ANNOUNCE_MS / 1000 + 1)
    assert _announced_at(_row(stack, relay_key)) == settled
