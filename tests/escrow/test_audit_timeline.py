"""``escrow_audit verify --relay KEY`` lists each step of one relay's escrow life, in chain order."""

from __future__ import annotations

import pytest
from django.core.management import call_command

from escrow import leases
from hypertuna.exceptions import ApiError
from tests.escrow.conftest import WorkerSim, unlock

pytestmark = pytest.mark.django_db


def test_verify_lists_each_step_of_one_relay(worker, clock, capsys):
    other = WorkerSim(clock)
    other.deposit()
    worker.deposit()
    with pytest.raises(ApiError):  # the worker signed a moment ago: refused
        unlock(clock, worker.relay_key)
    clock.advance(91)
    grant, _ = unlock(clock, worker.relay_key)
    clock.advance(5)
    leases.renew(lease_id=grant["leaseId"], requester="gateway:test-gateway", now=clock.now)
    clock.advance(1)
    worker.heartbeat()  # the worker is back: the lease ends, a new writer is due
    worker.rotate_writer()
    worker.deposit()

    call_command("escrow_audit", "verify", "--relay", worker.relay_key.upper())
    out = capsys.readouterr().out
    assert "OK:" in out
    steps = [line.split()[2:4] for line in out.splitlines() if line.startswith("  #")]
    assert steps == [
        ["deposit", "[first-deposit]"],
        ["unlock-refused", "[worker-heartbeat-recent]"],
        ["unlock-granted", "[policy-satisfied]"],
        ["renew", "[renew]"],
        ["rotation", "[worker-reconnected]"],
        ["deposit", "[re-deposit]"],
    ]
    assert f"Relay {worker.relay_key}: 6 entries" in out
    assert other.relay_key not in out
    renew_line = next(line for line in out.splitlines() if " renew " in line)
    assert f"lease={grant['leaseId']}" in renew_line and "renewals=1" in renew_line
    assert "rotationCompleted=True" in out.splitlines()[-2]
