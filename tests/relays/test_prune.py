"""Registration history pruning (the hourly Celery task): old rows go, everything else stays, and a pruned
nonce cannot be replayed because the freshness window closed long before the retention ran out."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.utils import timezone

from hypertuna.celery import app
from hypertuna.exceptions import ApiError
from relays import services, tasks
from relays.models import Peer, Registration, Relay
from tests.conftest import hex_key, make_registration, signed

pytestmark = pytest.mark.django_db


def register(registration, now):
    body = signed(registration)
    return services.register_relay(registration=body["registration"], signature=body["signature"], now=now)


def test_task_deletes_only_history_past_retention(settings):
    now = timezone.now()
    retention = timedelta(days=settings.HYPERTUNA_REGISTRATION_HISTORY_DAYS)
    key = hex_key()
    relay = register(make_registration(key), now)
    for _ in range(3):
        register(make_registration(key), now)
    other = register(make_registration(hex_key()), now)
    rows = list(Registration.objects.filter(relay=relay).order_by("pk"))
    # Two past retention, one just inside it, one new; the other relay's only row is old too.
    Registration.objects.filter(pk__in=[rows[0].pk, rows[1].pk]).update(
        received_at=now - retention - timedelta(hours=1)
    )
    Registration.objects.filter(pk=rows[2].pk).update(received_at=now - retention + timedelta(minutes=5))
    Registration.objects.filter(relay=other).update(received_at=now - retention - timedelta(days=30))

    result = tasks.prune_registration_history.apply()
    assert result.successful() and result.get() == 3

    assert set(Registration.objects.values_list("pk", flat=True)) == {rows[2].pk, rows[3].pk}
    # History only: the relays, their peers and their live state are untouched.
    assert set(Relay.objects.values_list("relay_key", flat=True)) == {key, other.relay_key}
    assert Peer.objects.filter(relay=relay).exists() and Peer.objects.filter(relay=other).exists()
    assert tasks.prune_registration_history.apply().get() == 0


def test_pruned_nonce_cannot_be_replayed(settings):
    """The nonce guard is the history row: once it is pruned, the registration's issuedAt is days outside
    the freshness window, so the same signed body is still refused."""
    assert settings.HYPERTUNA_REGISTRATION_HISTORY_DAYS * 86400 > settings.HYPERTUNA_REGISTRATION_WINDOW
    start = timezone.now()
    registration = make_registration(hex_key())
    register(registration, start)
    with pytest.raises(ApiError) as replay:
        register(registration, start + timedelta(seconds=1))
    assert replay.value.code == "registration-replayed"

    later = start + timedelta(days=settings.HYPERTUNA_REGISTRATION_HISTORY_DAYS, seconds=1)
    assert services.prune_registration_history(now=later) == 1
    assert not Registration.objects.exists()
    with pytest.raises(ApiError) as stale:
        register(registration, later)
    assert stale.value.code == "registration-stale"
    assert not Registration.objects.exists()


def test_every_scheduled_task_is_registered():
    """A beat entry naming a task the worker does not know fails only in production: check the names."""
    from hypertuna import settings as project_settings

    schedules = [django_settings.CELERY_BEAT_SCHEDULE, getattr(project_settings, "ESCROW_BEAT_SCHEDULE", {})]
    names = {entry["task"] for schedule in schedules for entry in schedule.values()}
    assert "relays.tasks.prune_registration_history" in names
    app.loader.import_default_modules()
    missing = sorted(name for name in names if name not in app.tasks)
    assert not missing, missing
