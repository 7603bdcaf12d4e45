"""Replica state refresh (the per-minute Celery task): stale is a function of time, so stored states are
re-derived; only the state column is rewritten, and only where it changed."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.forms.models import model_to_dict
from django.utils import timezone

from replicas import readiness, tasks
from replicas.models import Replica

pytestmark = pytest.mark.django_db

S = Replica.State


def make(name, *, state, synced=True, behind_for=None, caught_up=False, failures=0):
    now = timezone.now()
    return Replica.objects.create(
        relay_key=name * 64 if len(name) == 1 else name,
        state=state,
        checkpoint_seq=10,
        remote_length=10 if caught_up else 25,
        behind_since=None if behind_for is None else now - timedelta(seconds=behind_for),
        last_synced_at=now - timedelta(seconds=5) if synced else None,
        consecutive_failures=failures,
        event_count=7,
    )


def snapshot():
    return {r.pk: {k: v for k, v in model_to_dict(r).items() if k != "state"} for r in Replica.objects.all()}


def test_task_rewrites_only_states_that_changed(settings):
    assert settings.HYPERTUNA_REPLICA_STALE_AFTER == 600 and settings.HYPERTUNA_REPLICA_FAIL_AFTER == 3
    replicas = {
        "behind-too-long": make("a", state=S.SYNCING, behind_for=700),
        "behind-briefly": make("b", state=S.SYNCING, behind_for=100),
        "caught-up": make("c", state=S.STALE, caught_up=True),
        "failing": make("d", state=S.SYNCING, behind_for=100, failures=3),
        "never-synced": make("e", state=S.PENDING, synced=False),
        "ready-but-behind": make("f", state=S.READY, behind_for=700),
    }
    before = snapshot()

    result = tasks.refresh_replica_states.apply()
    assert result.successful() and result.get() == 4

    states = {name: Replica.objects.get(pk=r.pk).state for name, r in replicas.items()}
    assert states == {
        "behind-too-long": S.STALE,
        "behind-briefly": S.SYNCING,
        "caught-up": S.READY,
        "failing": S.FAILED,
        "never-synced": S.PENDING,
        "ready-but-behind": S.STALE,
    }
    assert snapshot() == before, "only the state column may change"
    assert tasks.refresh_replica_states.apply().get() == 0


def test_time_passing_makes_a_syncing_replica_stale():
    replica = make("b", state=S.SYNCING, behind_for=100)
    now = timezone.now()
    assert readiness.refresh_states(now=now + timedelta(seconds=400)) == 0
    assert Replica.objects.get(pk=replica.pk).state == S.SYNCING
    assert readiness.refresh_states(now=now + timedelta(seconds=520)) == 1
    assert Replica.objects.get(pk=replica.pk).state == S.STALE
