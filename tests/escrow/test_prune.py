"""Idempotency-record pruning (the hourly escrow Celery task): records past 48 h go, newer ones and every
deposit stay, and a pruned record's deposit cannot be replayed into a second deposit."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from escrow import audit, services, tasks
from escrow.models import Deposit, IdempotencyRecord
from hypertuna.exceptions import ApiError
from tests.escrow.conftest import WorkerSim

pytestmark = pytest.mark.django_db


def test_task_deletes_only_records_past_48_hours(clock):
    workers = [WorkerSim(clock) for _ in range(4)]
    for worker in workers:
        status, _ = worker.deposit()
        assert status == 201
    records = list(IdempotencyRecord.objects.order_by("pk"))
    assert len(records) == 4
    now = timezone.now()
    ages = [timedelta(hours=49), timedelta(days=30), timedelta(hours=47, minutes=55), timedelta(0)]
    for record, age in zip(records, ages, strict=True):
        IdempotencyRecord.objects.filter(pk=record.pk).update(created_at=now - age)

    result = tasks.prune_idempotency.apply()
    assert result.successful() and result.get() == 2

    assert set(IdempotencyRecord.objects.values_list("pk", flat=True)) == {records[2].pk, records[3].pk}
    assert Deposit.objects.filter(state="active").count() == 4
    assert audit.verify(record=False).ok
    assert tasks.prune_idempotency.apply().get() == 0


def test_pruned_deposit_retry_is_refused_not_redone(clock, worker):
    body = worker.deposit_body()
    status, first = worker.deposit(body)
    assert status == 201
    # Past the signature window the record still answers a retry with the first response...
    clock.advance(3600)
    status, again = worker.deposit(body)
    assert status == 201 and again["replayed"] and again["depositId"] == first["depositId"]
    # ...and once it is pruned, the same body is stale: refused, never stored a second time.
    clock.advance(48 * 3600)
    assert services.prune_idempotency(now=clock.now) == 1
    with pytest.raises(ApiError) as refused:
        worker.deposit(body)
    assert refused.value.code == "signature-expired"
    assert [str(i) for i in Deposit.objects.values_list("id", flat=True)] == [first["depositId"]]
    assert not IdempotencyRecord.objects.exists()
